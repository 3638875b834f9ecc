"""What resumes changed in a run, and which pools wait, in words (pure): for ``status``,
``report`` and the timeline.

* A resume's overrides (``--max-unavailable``, ``--concurrency``, ...) are kept in the run's
  options: ``overrides_phrase`` says which are in force, with each pool's limit when
  ``max_unavailable`` is one of them.
* Its events (``override``, ``plan_changed``) and a blocked pool's (``pool_blocked``,
  ``pool_unblocked``, a resumable ``pool_stopped``) become timeline lines (``event_text``).
* ``blocked_now``: the pools a running run has waiting for room right now, from the events.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from fleet_reimage.engine.resumeopts import OPTIONS, shown
from fleet_reimage.journal.model import RunEvent, RunRecord
from fleet_reimage.units import count
from fleet_reimage.views.runview import clock, span
from fleet_reimage.views.words import plain

EVENT_KINDS = frozenset({"pool_blocked", "pool_unblocked", "override", "plan_changed"})
_ORDER = {key: index for index, key in enumerate(OPTIONS)}  # as ``resume --help`` lists them


def overrides_phrase(run: RunRecord) -> str | None:
    """The overrides in force, as "max_unavailable 30% (demo/etl 3, demo/sim 2), ..."."""
    overrides: Mapping[str, object] = run.options.get("overrides") or {}
    parts = []
    for key, value in sorted(overrides.items(), key=lambda item: _ORDER.get(item[0], 99)):
        text = f"{key} {shown(key, value)}"
        limits = run.options.get("pool_limits") or {}
        if key == "max_unavailable" and limits:
            text += " (" + ", ".join(f"{pool} {limit[0]}" for pool, limit in limits.items()) + ")"
        parts.append(text)
    return ", ".join(parts) or None


def event_text(event: RunEvent) -> str:
    """One of ``EVENT_KINDS`` (or a resumable ``pool_stopped``) as a timeline line."""
    data = event.data
    if event.kind == "pool_blocked":
        text = f"pool blocked: {plain(data.get('reason'))}; waiting for nodes to come back"
        stops = data.get("stops_at")
        if isinstance(stops, int | float):
            pending = data.get("pending")
            kept = f", {count(pending, 'node')} kept pending" if isinstance(pending, int) else ""
            text += f" until {clock(stops, event.at)}, then it stops (resumable{kept})"
        return text
    if event.kind == "pool_unblocked":
        after = data.get("after_s")
        waited = span(after) if isinstance(after, int | float) else "a while"
        return f"pool moving again (it was blocked for {waited})"
    if event.kind == "pool_stopped":
        return f"pool stopped, resumable (its nodes stay pending): {plain(data.get('reason'))}"
    if event.kind == "override":
        return _override_text(data)
    return _plan_changed_text(data)


def _override_text(data: Mapping[str, object]) -> str:
    key = str(data.get("setting"))
    option = OPTIONS.get(key, (f"--{key}", ""))[0]
    text = f"override on resume: {option} {shown(key, data.get('value'))}"
    if "was" in data:
        text += f" (was {shown(key, data.get('was'))})"
    per_pool = data.get("per_pool")
    if isinstance(per_pool, Mapping) and per_pool:
        was = data.get("was_per_pool")
        before = was if isinstance(was, Mapping) else {}
        pools = [
            f"{pool} {before[pool]} -> {limit}" if pool in before else f"{pool} {limit}"
            for pool, limit in per_pool.items()
        ]
        text += "; max_unavailable per pool: " + ", ".join(pools)
    return text


def _plan_changed_text(data: Mapping[str, object]) -> str:
    changes = data.get("changes")
    items = [c for c in changes if isinstance(c, Mapping)] if isinstance(changes, list) else []
    said = [
        f"{c.get('setting')} {c.get('was')} -> {c.get('now')} "
        + ("(takes effect)" if c.get("applies") else f"(does not take effect: {c.get('why')})")
        for c in items
    ]
    text = f"plan changed on resume (--force-plan), {count(len(items), 'setting')}: "
    text += "; ".join(said)
    per_pool = data.get("max_unavailable_per_pool")
    if isinstance(per_pool, Mapping) and per_pool:
        text += "; max_unavailable per pool now " + ", ".join(
            f"{pool} {limit}" for pool, limit in per_pool.items()
        )
    return text


@dataclass(frozen=True, slots=True)
class Waiting:
    pool: str  # account/pool
    since: float
    text: str


def blocked_now(events: Iterable[RunEvent]) -> list[Waiting]:
    """Pools whose latest blocking is still on (no unblock, stop or end after it)."""
    open_blocks = open_by_pool(events, "pool_blocked", ("pool_unblocked", "pool_stopped"))
    return [Waiting(pool, e.at, event_text(e)) for pool, e in open_blocks.items()]


def open_by_pool(
    events: Iterable[RunEvent], start: str, ends: Collection[str]
) -> dict[str, RunEvent]:
    """Each pool's (account/pool) latest ``start`` event that no ``ends`` event of the pool,
    nor the run stopping or being resumed, came after."""
    still_open: dict[str, RunEvent] = {}
    for event in events:
        where = f"{event.account}/{event.pool}"
        if event.kind == start:
            still_open[where] = event
        elif event.kind in ends:
            still_open.pop(where, None)
        elif event.kind in ("run_stopping", "run_resumed"):
            still_open.clear()
    return still_open
