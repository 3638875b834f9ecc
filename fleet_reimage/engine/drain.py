"""Drain with a deadline: disable a busy node's scheduling, wait for its tasks, then act.

The decisions are ``rollout/drain.py``'s; this does the calls and keeps the run's drains.
What a node runs comes from the pool's health polls (``health.py`` asks, when a drain is
planned, for every node that is not idle, with ``runningTasksCount`` and
``schedulingState``): never one GET per node. A pool's next node is taken only once such a
poll has been seen (``ready``), so that a busy node is never acted on blind.

A drain is a job of its own kind (``JobKind.DRAIN``): ``disablescheduling`` with
``taskcompletion`` journaled as an attempt (with its client-request-id) before it is sent,
leaving the target pending in the journal. The target then holds its place in the pool's
``max_unavailable`` (it was taken from the rollout) until the polls see its tasks ended, or
the drain's timeout passes; then its action is scheduled, with the plan's option or the
drain's ``then``.

Scheduling is never left disabled by us: a node whose scheduling we disabled is enabled again
when it comes back from its action still disabled (``enable_settled``, before its target
counts as done), and when the run ends (``finish``: stopped before the action, or the action
refused). Each enable is an event (``scheduling_enabled``), not an attempt: it is no action
on the node, and it must not make the target look in flight to a resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import structlog

from fleet_reimage.batch.client import Accepted as HttpAccepted
from fleet_reimage.batch.client import BatchClient, new_client_request_id
from fleet_reimage.batch.errors import (
    BatchError,
    BatchHTTPError,
    Conflict,
    NotFound,
    RequestInDoubt,
    UnexpectedResponse,
)
from fleet_reimage.batch.models import NodeInfo
from fleet_reimage.batch.retry import is_retryable
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.node_work import journal_attempt
from fleet_reimage.engine.runstate import JobKind, Phase, PoolKey, PoolRun, RunTarget
from fleet_reimage.engine.slots import SendSlots
from fleet_reimage.journal.model import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    TargetState,
)
from fleet_reimage.plan.drain import DrainSpec
from fleet_reimage.rollout.drain import DISABLE, DRAIN_OPTION, drain_end, needs_drain

log = structlog.get_logger("fleet_reimage.drain")

DRAIN_SELECT = "id,state,lastBootTime,runningTasksCount,schedulingState"
MAX_DRAIN_TRIES = 5


@dataclass(slots=True)
class Drain:
    started: float  # monotonic
    running_tasks: int  # as the latest poll saw them
    ended: bool = False  # its action is scheduled


class Drains:
    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        slots: SendSlots,
        spec: DrainSpec,
        *,
        plan_option: str,
        poll_interval: float,
        runner_id: str | None = None,
        drained_before: Iterable[int] = (),
    ) -> None:
        """``drained_before``: targets a previous run drained and acted on (a resume's), whose
        scheduling is enabled again once they are back."""
        self.ledger = ledger
        self.control = control
        self.slots = slots
        self.spec = spec
        self.plan_option = plan_option
        self.poll_interval = poll_interval
        self.runner_id = runner_id
        self.running: dict[PoolKey, dict[str, int]] = {}  # node id -> running tasks
        self.listed_at: dict[PoolKey, float] = {}  # monotonic, of the latest poll
        self.draining: dict[int, Drain] = {}
        self.ours: set[int] = set(drained_before)  # scheduling disabled by us, not enabled
        self.tries: dict[int, int] = {}
        self.taken: set[int] = set()  # taken over, maybe drained by a dead runner
        self._finishing = False
        self.counts = {"started": 0, "drained": 0, "timed_out": 0, "undone": 0, "enabled": 0}

    # --- what the dispatcher and the health polls ask ---

    def ready(self, pool: PoolRun) -> bool:
        """May the pool's next node be taken? Only while a recent poll (two intervals and a
        second) told what its nodes run: never on what they ran before a long pause."""
        listed = self.listed_at.get(pool.key)
        fresh = 2 * self.poll_interval + 1.0
        return listed is not None and time.monotonic() - listed <= fresh

    def first_step(self, pool: PoolRun, target: RunTarget) -> JobKind:
        running = self.running.get(pool.key, {}).get(target.record.node_id)
        return JobKind.DRAIN if needs_drain(running) else JobKind.ACTION

    def wants_poll(self, pool: PoolRun) -> bool:
        """Poll a pool with nodes still to take (before its first take, and to keep what
        its nodes run fresh, pauses between waves included) or being drained."""
        if any(self.draining_in(pool)):
            return True
        return not pool.rollout.done

    def draining_in(self, pool: PoolRun) -> Iterable[int]:
        targets = self.ledger.targets
        return (t for t, d in self.draining.items() if targets[t].pool is pool and not d.ended)

    def after_poll(self, pool: PoolRun, nodes: Mapping[str, NodeInfo]) -> None:
        """A poll's answer (every node of the pool not idle): what runs where; drains over."""
        self.running[pool.key] = {n.id: n.running_tasks for n in nodes.values()}
        self.listed_at[pool.key] = time.monotonic()
        for target_id in list(self.draining_in(pool)):
            node = nodes.get(self.ledger.targets[target_id].record.node_id)
            self.draining[target_id].running_tasks = 0 if node is None else node.running_tasks
        self.check(time.monotonic())

    def check(self, now: float) -> None:
        """End every drain whose tasks are done or whose timeout passed (a stopping run's
        drains are undone when it finishes; a stopped pool's at once)."""
        if self.control.stopping:
            return
        for target_id, drain in list(self.draining.items()):
            if drain.ended:
                continue
            if self.ledger.targets[target_id].pool.rollout.stopped is not None:
                self._undo(self.ledger.targets[target_id], drain, "its pool stopped")
                continue
            end = drain_end(drain.running_tasks, now - drain.started, self.spec.timeout,
                            plan_option=self.plan_option, then=self.spec.then)  # fmt: skip
            if end is None:
                continue
            target = self.ledger.targets[target_id]
            drain.ended = True
            target.action_option = None if end.option == self.plan_option else end.option
            self.counts["timed_out" if end.timed_out else "drained"] += 1
            self.ledger.pool_event("drain_ended", target.pool, {
                "node": target.record.node_id, "target": target_id,
                "duration_s": round(end.duration, 3), "timed_out": end.timed_out,
                "running_tasks": drain.running_tasks, "option": end.option,
            })  # fmt: skip
            self.ledger.schedule(target.pool, target, JobKind.ACTION, 0.0)
            self.control.wake()

    def _undo(self, target: RunTarget, drain: Drain, why: str) -> None:
        """No action follows: the node gets its scheduling back, the target is pending."""
        del self.draining[target.id]
        data = {**self._undone(target, drain), "why": why}
        self.ledger.pool_event("drain_ended", target.pool, data)
        self.ledger.requeue(target)
        self.control.start_background(self._enable, target.pool, target, why)

    def _undone(self, target: RunTarget, drain: Drain) -> dict[str, object]:
        """A drain ended with no action after it (counted): its ``drain_ended`` data."""
        self.counts["undone"] += 1
        return {
            "node": target.record.node_id, "target": target.id,
            "duration_s": round(time.monotonic() - drain.started, 3),
            "timed_out": False, "undone": True,
        }  # fmt: skip

    def taken_over(self, target: RunTarget) -> None:
        """A shared run's target taken over from a runner that died: if it was attempted, that
        runner may have drained it, so its node is enabled once back from the action if it
        is still disabled. (Its action is sent as the take-over decides, without a drain.)"""
        if target.record.attempts > 0:
            self.taken.add(target.id)

    def launched(self, target: RunTarget) -> None:
        """The target's action left the dispatcher: it is no longer draining."""
        self.draining.pop(target.id, None)

    # --- the drain job ---

    async def job(self, pool: PoolRun, target: RunTarget) -> None:
        """Disable the node's scheduling (``taskcompletion``), journaled as an attempt."""
        ledger, record = self.ledger, target.record
        crid = new_client_request_id()
        structlog.contextvars.bind_contextvars(run=ledger.run_id, account=pool.account.name,
            pool=pool.pool_id, node=record.node_id, client_request_id=crid,
            attempt=record.attempts + 1)  # fmt: skip
        start = AttemptStart(ledger.run_id, target.id, record.attempts + 1, DISABLE, crid,
                             time.time(), self.runner_id)  # fmt: skip
        if not await journal_attempt(ledger, self.slots, pool, target, start):
            return
        if not await self.slots.acquire(pool.account, time.monotonic()):
            await self._finished(target, crid, AttemptOutcome.NOT_SENT, None)
            ledger.requeue(target)
            return
        answer = await self._send(pool, target, crid)
        outcome = _outcome(answer)
        await self._finished(target, crid, outcome, answer)
        self._after(pool, target, crid, outcome, answer)

    async def _send(self, pool: PoolRun, target: RunTarget, crid: str) -> HttpAccepted | BatchError:
        client = pool.account.client
        try:
            return await client.disable_node_scheduling(
                pool.pool_id, target.record.node_id, option=DRAIN_OPTION, client_request_id=crid
            )
        except BatchError as error:
            return error
        finally:
            self.slots.release(pool.account, time.monotonic())

    async def _finished(
        self,
        target: RunTarget,
        crid: str,
        outcome: AttemptOutcome,
        answer: HttpAccepted | BatchError | None,
    ) -> None:
        """The disable's row: the target stays pending (its action is not sent yet)."""
        status = answer.status if isinstance(answer, HttpAccepted | BatchHTTPError) else None
        code = answer.code if isinstance(answer, BatchHTTPError) else None
        message = str(answer) if isinstance(answer, BatchError) else None
        reason = "the run stopped before it was sent" if answer is None else None
        await self.ledger.journal.attempt_finished(
            AttemptEnd(self.ledger.run_id, target.id, crid, time.time(), outcome,
                       TargetState.PENDING, status, None, code, message, None, reason)
        )  # fmt: skip
        self.ledger.set_state(target, TargetState.PENDING)

    def _after(
        self,
        pool: PoolRun,
        target: RunTarget,
        crid: str,
        outcome: AttemptOutcome,
        answer: HttpAccepted | BatchError,
    ) -> None:
        if outcome in (AttemptOutcome.ACCEPTED, AttemptOutcome.IN_DOUBT):
            self._started(pool, target, crid)
            return
        if _already_disabled(answer) and target.record.attempts > 1:
            # Attempted before in this run: a runner of it that died (a shared run) or its
            # in-doubt disable left it drained. Ours, then: finish that drain.
            self._started(pool, target, crid)
            return
        tries = self.tries[target.id] = self.tries.get(target.id, 0) + 1
        retryable = isinstance(answer, BatchError) and is_retryable(answer)
        if retryable and tries < MAX_DRAIN_TRIES and not self.control.stopping:
            target.phase = Phase.DRAINING
            self.ledger.schedule(pool, target, JobKind.DRAIN, min(2.0**tries * 0.5, 30.0))
            return
        # Refused (already disabled by someone else, a node changing state, gone): no drain;
        # the action decides the rest as it would have without one.
        log.info("drain skipped", error=str(answer))
        target.phase = Phase.BACKOFF
        self.ledger.schedule(pool, target, JobKind.ACTION, 0.0)

    def _started(self, pool: PoolRun, target: RunTarget, crid: str) -> None:
        running = self.running.get(pool.key, {}).get(target.record.node_id, 0)
        self.draining[target.id] = Drain(time.monotonic(), running)
        self.ours.add(target.id)
        self.counts["started"] += 1
        target.phase = Phase.DRAINING
        target.last_client_request_id = crid
        self.ledger.pool_event("drain_started", pool, {
            "node": target.record.node_id, "target": target.id, "running_tasks": running,
            "timeout": self.spec.timeout, "client_request_id": crid,
        })  # fmt: skip

    # --- scheduling is never left disabled by us ---

    async def enable_settled(
        self, pool: PoolRun, seen: Sequence[tuple[RunTarget, NodeInfo]]
    ) -> None:
        """Targets back from their action: enable the ones we drained that are still
        disabled (before they count as done, so the run cannot end first)."""
        todo = [(t, n) for t, n in seen if t.id in self.ours or t.id in self.taken]
        async with anyio.create_task_group() as group:
            for target, node in todo:
                self.taken.discard(target.id)
                if node.scheduling_state == "enabled":
                    self.ours.discard(target.id)
                else:
                    group.start_soon(self._enable, pool, target, "back from the action")

    async def finish(self) -> None:
        """The run ends: undo the drains not acted on, enable every node of ours still
        disabled (at most ``concurrency`` calls at a time)."""
        self._finishing = True  # the run's task group is gone: events are written here
        for target_id, drain in list(self.draining.items()):
            target = self.ledger.targets[target_id]
            if not drain.ended:
                await self._note("drain_ended", target.pool, self._undone(target, drain))
            if target.phase is Phase.DRAINING:
                self.ledger.requeue(target)
        self.draining.clear()
        limit = anyio.CapacityLimiter(max(1, self.slots.concurrency))
        async with anyio.create_task_group() as group:
            for target_id in sorted(self.ours):
                target = self.ledger.targets[target_id]
                why = "the run stopped before the action" if target.record.state is \
                    TargetState.PENDING else "the run ended"  # fmt: skip
                group.start_soon(self._limited, limit, target, why)

    async def _limited(self, limit: anyio.CapacityLimiter, target: RunTarget, why: str) -> None:
        async with limit:
            await self._enable(target.pool, target, why)

    async def _enable(self, pool: PoolRun, target: RunTarget, why: str) -> None:
        node_id = target.record.node_id
        crid, error = await enable_scheduling(pool.account.client, pool.pool_id, node_id)
        if error is not None:
            await self._note("scheduling_enable_failed", pool,
                                   {"node": node_id, "client_request_id": crid,
                                    "error": str(error)})  # fmt: skip
            return
        self.ours.discard(target.id)
        self.counts["enabled"] += 1
        await self._note("scheduling_enabled", pool,
                               {"node": node_id, "target": target.id, "why": why,
                                "client_request_id": crid})  # fmt: skip

    async def _note(self, kind: str, pool: PoolRun, data: dict[str, object]) -> None:
        """An event for ``--events`` and the journal; written before returning once the run
        is finishing (nothing runs beside it any more)."""
        if self._finishing:
            await self.ledger.pool_event_written(kind, pool, data)
        else:
            self.ledger.pool_event(kind, pool, data)


async def enable_scheduling(
    client: BatchClient, pool_id: str, node_id: str
) -> tuple[str, BatchError | None]:
    """Enable a node's scheduling again: its client-request-id, and the error if it failed
    (a node gone, already enabled or changing state has nothing to do: no error)."""
    crid = new_client_request_id()
    try:
        await client.enable_node_scheduling(pool_id, node_id, client_request_id=crid)
    except (NotFound, Conflict) as error:
        log.info("enable scheduling: nothing to do", node=node_id, error=str(error))
    except BatchError as error:
        log.warning("could not enable scheduling", node=node_id, error=str(error))
        return crid, error
    return crid, None


def _outcome(answer: HttpAccepted | BatchError) -> AttemptOutcome:
    if isinstance(answer, HttpAccepted):
        return AttemptOutcome.ACCEPTED
    if isinstance(answer, RequestInDoubt) or (
        isinstance(answer, UnexpectedResponse) and 200 <= answer.status < 300
    ):
        return AttemptOutcome.IN_DOUBT
    if isinstance(answer, BatchHTTPError):
        return AttemptOutcome.REJECTED
    return AttemptOutcome.NOT_SENT


def _already_disabled(answer: HttpAccepted | BatchError) -> bool:
    return isinstance(answer, Conflict) and answer.code == "NodeAlreadyInTargetSchedulingState"
