"""Gates and soaks in words (pure): timeline lines, the pools soaking now, and the last gate
that failed with what it printed, for ``status`` and the report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet_reimage.journal.model import RunEvent
from fleet_reimage.units import count
from fleet_reimage.views.runchanges import open_by_pool
from fleet_reimage.views.runview import span
from fleet_reimage.views.words import plain

WAIT_KINDS = frozenset({"gate_passed", "gate_failed", "soak_started", "soak_ended"})


def wait_event_text(event: RunEvent) -> str:
    """One of ``WAIT_KINDS`` as a timeline line."""
    data = event.data
    if event.kind == "soak_started":
        took = _span(data, "seconds")
        nodes = count(_int(data, "nodes"), "node")
        return f"soak of wave {plain(data.get('wave'))} started: {nodes} for {took}"
    if event.kind == "soak_ended":
        failed = _int(data, "failed")
        how = f"{count(failed, 'node')} degraded (failed)" if failed else "every node stayed up"
        return f"soak of wave {plain(data.get('wave'))} ended: {how}"
    return f"gate {gate_phrase(data)}"


def gate_phrase(data: Mapping[str, object]) -> str:
    """ "'slo' before wave 2 passed (0.4s)" / "'slo' before wave 2 failed (exit 4)"."""
    wave = data.get("wave")
    where = "after the run" if wave is None else f"before wave {plain(wave)}"
    name = f"'{plain(data.get('gate'))}'"
    if "why" in data:
        return f"{name} {where} failed ({plain(data.get('why'))})"
    return f"{name} {where} passed ({_span(data, 'seconds')})"


@dataclass(frozen=True, slots=True)
class GateFailure:
    pool: str | None  # account/pool, None for a step or after_run gate
    text: str
    output: tuple[str, ...]


def last_gate_failure(events: Iterable[RunEvent]) -> GateFailure | None:
    """The last gate that failed, unless a gate passed after it (a resume asked it again)."""
    last: GateFailure | None = None
    for event in events:
        if event.kind == "gate_failed":
            output = event.data.get("output")
            lines = tuple(str(x) for x in output) if isinstance(output, list) else ()
            pool = f"{event.account}/{event.pool}" if event.pool else None
            last = GateFailure(pool, gate_phrase(event.data), lines)
        elif event.kind == "gate_passed" and last is not None and event.data.get("gate"):
            last = None
    return last


def soaking_now(events: Iterable[RunEvent]) -> dict[str, RunEvent]:
    """The pools (account/pool) whose latest soak is still on (no end, stop or resume after)."""
    return open_by_pool(events, "soak_started", ("soak_ended", "pool_stopped"))


def _int(data: Mapping[str, object], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) else 0


def _span(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return span(value) if isinstance(value, int | float) else "?"
