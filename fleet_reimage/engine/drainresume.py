"""What a resumed run does about the drains of the run before it (derived from the journal).

A target whose latest attempt is a ``disablescheduling`` that may have landed, and that no
stopping run enabled again since (``drain_ended`` with ``undone``, ``scheduling_enabled``),
was drained by a run that died before its action: its node's scheduling is enabled again
and the target is pending, so the resumed run drains it afresh if it still runs tasks (it
may have drained meanwhile). A target drained and then acted on, not finished yet, is handed
to the executor (``drained_before``) so that its node is enabled once it is back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import anyio
import structlog

from fleet_reimage.batch.client import BatchClient
from fleet_reimage.engine.drain import enable_scheduling
from fleet_reimage.journal.model import (
    Journal,
    RunEvent,
    RunRecord,
    TargetChange,
    TargetRecord,
    TargetState,
)
from fleet_reimage.rollout.drain import ever_drained, left_drains

log = structlog.get_logger("fleet_reimage.drain")

RESUME_CONCURRENCY = 16


def undone_times(events: Sequence[RunEvent]) -> dict[int, float]:
    """When each target's node was last enabled again by us (from the run's events)."""
    undone: dict[int, float] = {}
    for event in events:
        target = event.data.get("target")
        if event.kind == "scheduling_enabled" and isinstance(target, int):
            undone[target] = max(undone.get(target, 0.0), event.at)
    return undone


async def settle_left_drains(
    run: RunRecord,
    journal: Journal,
    clients: Mapping[str, BatchClient],
    records: Sequence[TargetRecord],
) -> list[int]:
    """Enable the nodes a dead run left drained; returns the targets drained and acted on
    that are not finished (to enable once they are back)."""
    events = await journal.events(run.run_id)
    if not any(event.kind == "drain_started" for event in events):
        return []
    attempts = await journal.attempts(run.run_id)
    by_id = {r.target_id: r for r in records}
    left = left_drains(attempts, undone_times(events))
    acted = sorted(
        t for t in ever_drained(attempts) - left if t in by_id and not by_id[t].state.terminal
    )
    limit = anyio.CapacityLimiter(RESUME_CONCURRENCY)
    async with anyio.create_task_group() as group:
        for target_id in sorted(left):
            record = by_id.get(target_id)
            if record is not None and not record.state.terminal:
                group.start_soon(_undo, run, journal, clients, record, limit)
    return acted


async def _undo(
    run: RunRecord,
    journal: Journal,
    clients: Mapping[str, BatchClient],
    record: TargetRecord,
    limit: anyio.CapacityLimiter,
) -> None:
    async with limit:
        client = clients[record.account]
        crid, error = await enable_scheduling(client, record.pool, record.node_id)
    if error is not None:  # the resumed run still acts on it (the warning says so)
        return
    now = time.time()
    data = {"node": record.node_id, "target": record.target_id, "client_request_id": crid}
    ended = {**data, "undone": True, "timed_out": False, "by": "resume"}
    for kind, fields in (("drain_ended", ended), ("scheduling_enabled", {**data, "why": "resume"})):
        await journal.record_event(
            RunEvent(run.run_id, now, kind, record.account, record.pool, fields)
        )
    if record.state is not TargetState.PENDING:  # in flight when the run died: not applied
        reason = "drained by a run that stopped before its action"
        await journal.target_changed(
            TargetChange(run.run_id, record.target_id, TargetState.PENDING, now, reason)
        )
        record.state, record.reason = TargetState.PENDING, reason
