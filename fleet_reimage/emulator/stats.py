"""What the emulator has seen and done, for tests, benchmarks and the demo.

The same dictionary is served at ``GET /_emulator/stats`` and returned by
``RunningEmulator.stats()``::

    {"pools": {POOL: {
        "peak_unavailable": N, "current_unavailable": N, "nodes": N, "states": {STATE: N},
        "allocation_state": "steady", "reimage": "accepted",
        "target_dedicated": N, "target_low_priority": N,
        "current_dedicated": N, "current_low_priority": N,
        "nodes_added": N, "added_states": {STATE: N}, "nodes_removed": N, "ready": N,
        "min_ready": N,
        "tasks": {"running": N, "completed": N, "requeued": N, "terminated": N},
        "resize_errors": [CODE, ...], "auto_scale_evaluations": N}},
     "nodes": [{"pool": P, "id": ID, "state": S, "scheduling_state": "enabled",
                "running_tasks": N, "reimages": N, "reboots": N, "deallocations": N,
                "starts": N, "scheduling_disables": N, "scheduling_enables": N,
                "removals": N, "removed": false, "added": false, "dedicated": true}, ...],
     "requests": {"total": N, "by_operation": {OP: N}, "by_status": {"202": N},
                  "by_api_version": {VERSION: N}, "faults": {KIND: N},
                  "rate_limited": N, "mutating": N}}

``ready`` counts nodes that could take a new task now (idle or running, scheduling
enabled, no operation waiting for their tasks); ``min_ready`` is the fewest there were at
any instant since the emulator started. Removed nodes stay in ``nodes`` (``removed: true``);
``added`` marks the nodes a resize (or auto-scale) allocated, ``dedicated`` their kind.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .resources import BatchOperationError, Node, Pool
from .spec import OPERATIONS
from .state import EmulatorState

MUTATING_OPERATIONS = frozenset(OPERATIONS) - {"list_pools", "get_pool", "list_nodes", "get_node"}


class RequestCounters:
    """Counts of requests by operation, answered status, api-version and injected fault.

    ``mutating`` counts requests that change something, received (whatever became of
    them); requests reset by a fault have no status and are counted under ``faults`` only.
    """

    def __init__(self) -> None:
        self.total = 0
        self.mutating = 0
        self.rate_limited = 0
        self.by_operation: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.by_api_version: dict[str, int] = {}
        self.faults: dict[str, int] = {}

    def received(self, operation: str) -> None:
        self.total += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1
        if operation in MUTATING_OPERATIONS:
            self.mutating += 1

    def version(self, api_version: str) -> None:
        self.by_api_version[api_version] = self.by_api_version.get(api_version, 0) + 1

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
            "by_api_version": dict(self.by_api_version),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "mutating": self.mutating,
        }


def pool_stats(pool: Pool) -> dict[str, Any]:
    dedicated, low_priority = pool.counts()
    return {
        "peak_unavailable": pool.peak_unavailable,
        "current_unavailable": pool.current_unavailable,
        "nodes": len(pool.nodes),
        "states": {state: n for state, n in pool.state_counts.items() if n},
        "allocation_state": pool.allocation_state,
        "reimage": pool.spec.reimage,
        "target_dedicated": pool.target_dedicated,
        "target_low_priority": pool.target_low_priority,
        "current_dedicated": dedicated,
        "current_low_priority": low_priority,
        "nodes_added": pool.nodes_added,
        "added_states": _added_states(pool),
        "nodes_removed": len(pool.removed),
        "ready": pool.ready_count,
        "min_ready": pool.min_ready,
        "tasks": {
            "running": sum(node.running_tasks for node in pool.nodes),
            "completed": pool.tasks_completed,
            "requeued": pool.tasks_requeued,
            "terminated": pool.tasks_terminated,
        },
        "resize_errors": [code for code, _, _ in pool.resize_errors],
        "auto_scale_evaluations": pool.auto_scale_evaluations,
    }


def _added_states(pool: Pool) -> dict[str, int]:
    """The states of the nodes a resize (or auto-scale) added that are still in the pool."""
    return dict(Counter(node.state for node in pool.nodes if node.added))


def node_stats(node: Node) -> dict[str, Any]:
    return {
        "pool": node.pool.id,
        "id": node.id,
        "state": node.state,
        "scheduling_state": node.scheduling_state,
        "running_tasks": node.running_tasks,
        "reimages": node.reimages,
        "reboots": node.reboots,
        "deallocations": node.deallocations,
        "starts": node.starts,
        "scheduling_disables": node.scheduling_disables,
        "scheduling_enables": node.scheduling_enables,
        "removals": node.removals,
        "removed": node.removed,
        "added": node.added,
        "dedicated": node.is_dedicated,
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
    document: dict[str, Any] = {"pools": {item.id: pool_stats(item) for item in pools}}
    if include_nodes:
        document["nodes"] = [
            node_stats(node) for item in pools for node in (*item.nodes, *item.removed)
        ]
    document["requests"] = counters.as_dict()
    return document
