"""What the emulator has seen and done, for tests, benchmarks and the demo.

The same dictionary is served at ``GET /_emulator/stats`` and returned by
``RunningEmulator.stats()``::

    {"pools": {POOL: {"peak_unavailable": N, "current_unavailable": N, "nodes": N,
                      "states": {STATE: COUNT}}},
     "nodes": [{"pool": P, "id": ID, "state": S, "reimages": N, "reboots": N}, ...],
     "requests": {"total": N, "by_operation": {OP: N}, "by_status": {"202": N},
                  "faults": {KIND: N}, "rate_limited": N, "mutating": N}}
"""

from __future__ import annotations

from typing import Any

from .state import BatchOperationError, EmulatorState

MUTATING_OPERATIONS = frozenset({"reimage", "reboot"})


class RequestCounters:
    """Counts of requests by operation, answered status and injected fault.

    ``mutating`` counts reimage/reboot requests received (whatever became of them);
    requests reset by a fault have no status and are counted under ``faults`` only.
    """

    def __init__(self) -> None:
        self.total = 0
        self.mutating = 0
        self.rate_limited = 0
        self.by_operation: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.faults: dict[str, int] = {}

    def received(self, operation: str) -> None:
        self.total += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1
        if operation in MUTATING_OPERATIONS:
            self.mutating += 1

    def answered(self, status: int) -> None:
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_operation": dict(self.by_operation),
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "mutating": self.mutating,
        }


def build_stats(
    state: EmulatorState,
    counters: RequestCounters,
    *,
    pool: str | None = None,
    include_nodes: bool = True,
) -> dict[str, Any]:
    """The stats document; ``pool`` limits pools and nodes to one pool (404 if unknown)."""
    state.advance()
    if pool is not None and pool not in state.pools:
        raise BatchOperationError(404, "PoolNotFound", "The specified pool does not exist.")
    pools = [state.pools[pool]] if pool is not None else list(state.pools.values())
    summary: dict[str, Any] = {}
    for item in pools:
        brief = state.summary(item.id)
        summary[item.id] = {
            "peak_unavailable": brief.peak_unavailable,
            "current_unavailable": brief.current_unavailable,
            "nodes": brief.nodes,
            "states": brief.states,
        }
    document: dict[str, Any] = {"pools": summary}
    if include_nodes:
        document["nodes"] = [
            {
                "pool": item.id,
                "id": node.id,
                "state": node.state,
                "reimages": node.reimages,
                "reboots": node.reboots,
            }
            for item in pools
            for node in item.nodes
        ]
    document["requests"] = counters.as_dict()
    return document
