"""Drains and notifications in words: the run summary's lines, and ``status``/``report``'s.

The run's result counts them (``engine/drain.py``, ``engine/notify.py``); a past run's
drains are read back from its events (``drain_started``, ``drain_ended``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fleet_reimage.engine.executor import RunResult
from fleet_reimage.journal.model import RunEvent
from fleet_reimage.units import count
from fleet_reimage.views.runview import span

# One per drained node: summed up in one line (``drain_lines``), not each in the timeline.
PER_NODE_KINDS = frozenset({"drain_started", "drain_ended", "scheduling_enabled"})


def extra_lines(result: RunResult) -> list[str]:
    """The summary's lines about drains and notifications (none when there were none)."""
    lines = []
    if result.drains and result.drains.get("started"):
        lines.append(drains_text(result.drains))
    notes = result.notifications
    if notes:
        lost = notes["failed"] + notes["dropped"]
        line = f"notifications: {notes['sent']} sent"
        if lost:
            line += f", {notes['failed']} failed, {notes['dropped']} not sent (see the log)"
        lines.append(line)
    return lines


def drains_text(counts: Mapping[str, int]) -> str:
    """ "3 drains: 2 drained in time, 1 timed out" (and how many were undone)"""
    parts = [
        f"{counts.get('drained', 0)} drained in time",
        f"{counts.get('timed_out', 0)} timed out",
    ]
    if counts.get("undone"):
        parts.append(f"{counts['undone']} undone (stopped before the action)")
    return f"{count(counts.get('started', 0), 'drain')}: {', '.join(parts)}"


def drain_counts(events: Iterable[RunEvent]) -> dict[str, Any]:
    """A run's drains from its events: counts, the longest, and the nodes draining now."""
    counts = {"started": 0, "drained": 0, "timed_out": 0, "undone": 0}
    longest = 0.0
    open_now: dict[str, str] = {}  # target -> node
    for event in events:
        data = event.data
        key = str(data.get("target", data.get("node")))
        if event.kind == "drain_started":
            counts["started"] += 1
            open_now[key] = str(data.get("node"))
        elif event.kind == "drain_ended":
            open_now.pop(key, None)
            if data.get("undone"):
                counts["undone"] += 1
                continue
            counts["timed_out" if data.get("timed_out") else "drained"] += 1
            duration = data.get("duration_s")
            if isinstance(duration, int | float):
                longest = max(longest, float(duration))
    return {**counts, "longest_s": round(longest, 3), "draining": sorted(open_now.values())}


def drain_lines(events: Iterable[RunEvent]) -> list[str]:
    """``status``/``report`` lines about the run's drains (none when it drained nothing)."""
    found = drain_counts(events)
    if not found["started"]:
        return []
    line = f"{drains_text(found)}; longest {span(found['longest_s'])}"
    if found["draining"]:
        line += f"; draining now (or left by a stopped run): {', '.join(found['draining'])}"
    return [line]
