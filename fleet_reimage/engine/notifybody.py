"""What a run's webhook notifications say (pure): which events are sent, and their bodies.

A body is a JSON object with a human ``text`` line (what Slack and Teams incoming webhooks
show) and the structured fields: ``source``, ``event``, ``run``, ``plan``, ``time`` and the
event's own fields. ``run_stopping`` carries its ``kind`` (``budget``, ``gate``,
``checkpoint``, ``deadline``, ``interrupted``, ...): any stop, whoever asked for it, is told.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SOURCE = "fleet-reimage"
NOTIFIED = frozenset(
    {
        "run_started",
        "wave_started",
        "wave_completed",
        "pool_stopped",
        "checkpoint",
        "run_stopping",
        "run_finished",
        "run_stopped",
    }
)
_COUNT_ORDER = ("healthy", "done_unverified", "failed", "gone", "skipped", "pending")


def notification(
    kind: str, fields: Mapping[str, Any], *, run_id: str | None, plan: str, at: float
) -> dict[str, Any] | None:
    """The body for the event ``kind``, or None when that event is not notified."""
    if kind not in NOTIFIED:
        return None
    run = run_id or fields.get("run_id") or fields.get("run")
    return {
        "text": notification_text(kind, fields, run=run, plan=plan),
        "source": SOURCE,
        "event": kind,
        "run": run,
        "plan": plan,
        "time": round(at, 3),
        **{k: v for k, v in fields.items() if k not in ("run", "run_id")},
    }


def notification_text(kind: str, fields: Mapping[str, Any], *, run: object, plan: str) -> str:
    """One line for people."""
    who = f"fleet-reimage {plan} (run {run})"
    pool = f"{fields.get('account')}/{fields.get('pool')}"
    if kind == "run_started":
        return f"{who}: started, {fields.get('selected')} nodes selected"
    if kind == "wave_started":
        return f"{who}: {pool} wave {fields.get('wave')} of {fields.get('of')} started"
    if kind == "wave_completed":
        held = " (held for the checkpoint)" if fields.get("held") else ""
        return f"{who}: {pool} wave {fields.get('wave')} completed{held}"
    if kind == "pool_stopped":
        return f"{who}: {pool} stopped: {fields.get('reason')}"
    if kind == "checkpoint":
        return f"{who}: wave {fields.get('wave')} is complete in every pool: checkpoint"
    if kind == "run_stopping":
        return f"{who}: stopping ({fields.get('kind')}): {fields.get('reason')}"
    verb = "finished" if kind == "run_finished" else "stopped"
    return f"{who}: {verb}, exit {fields.get('exit_code')}: {counts_text(fields)}"


def counts_text(fields: Mapping[str, Any]) -> str:
    """ "12 healthy, 1 failed" from a run's end fields (states with none left out)."""
    parts = [
        f"{fields[state]} {state.replace('_', ' ')}"
        for state in _COUNT_ORDER
        if isinstance(fields.get(state), int) and fields[state]
    ]
    return ", ".join(parts) or "no node"
