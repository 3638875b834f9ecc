"""One node's work: an attempt, a reconcile, and acting on what the answer means.

The executor (``executor.py``) decides *when* a job runs; this decides what a job does and
what follows from its answer, always in the same order: write the journal first (the attempt
before it is sent, its outcome before the node counts as done), then update the in-memory
state and the policies. Kept apart from the loop so each file owns one idea; ``Executor``
inherits these methods.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import structlog
from anyio.abc import TaskGroup

from fleet_reimage.batch.client import Accepted as HttpAccepted
from fleet_reimage.batch.errors import (
    AuthFailed,
    BatchError,
    BatchHTTPError,
    NodeStateConflict,
    NotFound,
    PoolStateConflict,
)
from fleet_reimage.batch.explain import describe
from fleet_reimage.batch.models import NODE_SELECT
from fleet_reimage.batch.retry import RetryPolicy
from fleet_reimage.engine.attempt_records import attempt_end, step_reason, target_state_for
from fleet_reimage.engine.events import RunObserver
from fleet_reimage.engine.runstate import JobKind, Phase, PoolRun, RunTarget
from fleet_reimage.engine.slots import SendSlots
from fleet_reimage.journal.model import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Journal,
    JournalError,
    LeaseLost,
    RunEvent,
    TargetChange,
    TargetState,
)
from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.where import locate_in_plan
from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.outcomes import (
    Accepted,
    NodeRetryContext,
    NodeStep,
    ReconcileLater,
    RetryLater,
    Settle,
    StopPool,
    after_action_error,
    after_reconcile,
)
from fleet_reimage.rollout.pool import WaveCompleted
from fleet_reimage.units import count

if TYPE_CHECKING:
    from fleet_reimage.engine.sharedrun import SharedRunCoordinator

log = structlog.get_logger("fleet_reimage.run")


class NodeWork:
    """The per-node half of the executor (see the module docstring)."""

    run_id: str
    plan: Plan
    journal: Journal
    targets: dict[int, RunTarget]
    budget: FailureBudget
    observer: RunObserver
    action: str
    policy: RetryPolicy
    slots: SendSlots
    shared: SharedRunCoordinator | None
    stop_kind: str | None
    _unsent: int
    _group: TaskGroup
    _random: random.Random
    _seq: int

    def request_stop(self, kind: str, reason: str) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        raise NotImplementedError

    async def _send_slot(self, pool: PoolRun) -> bool:
        """Wait for a send slot; False when the run stopped first (nothing may be sent)."""
        try:
            if self.stop_kind is None and self.slots.try_send(pool.account, time.monotonic()):
                granted = True
            else:
                grant = self.slots.request(pool.account)
                self.wake()
                await grant.event.wait()
                granted = grant.granted
        finally:
            self._unsent -= 1
            pool.account.unsent -= 1
        if granted:
            pool.in_flight += 1
        return granted

    def _release_slot(self, pool: PoolRun) -> None:
        self.slots.release(pool.account)
        pool.in_flight -= 1
        if self.stop_kind is None:
            # Hand the slot on now rather than on the dispatcher's next turn: one event-loop
            # iteration less between an answer and the next request (it shows at high latency).
            self.slots.grant(time.monotonic())
        self.wake()

    # --- one attempt ---

    async def _attempt(self, pool: PoolRun, target: RunTarget, client_request_id: str) -> None:
        """One attempt with a fresh ``client_request_id`` (already bound to the log context)."""
        record = target.record
        attempt_no = record.attempts + 1
        sent_at = time.time()
        runner_id = self.shared.runner_id if self.shared is not None else None
        try:
            await self.journal.attempt_started(
                AttemptStart(
                    self.run_id,
                    record.target_id,
                    attempt_no,
                    self.action,
                    client_request_id,
                    sent_at,
                    runner_id,
                )
            )
        except LeaseLost:  # another runner owns it now: forget it, send nothing
            self._unsent -= 1
            pool.account.unsent -= 1
            target.phase = Phase.QUEUED
            pool.rollout.drop(target.id)
            return
        self._set_state(target, TargetState.IN_FLIGHT)
        record.attempts = attempt_no
        record.first_sent_at = record.first_sent_at or sent_at
        target.last_client_request_id = client_request_id
        if not await self._send_slot(pool):
            await self._not_sent(pool, target, client_request_id)
            return
        # The attempt's time is when it really left: that is what lastBootTime is compared to.
        record.last_sent_at = sent_at = time.time()
        started = time.perf_counter()
        try:
            answer: HttpAccepted | BatchError = await self._call(
                pool, record.node_id, client_request_id
            )
        except BatchError as error:
            answer = error
        except BaseException:
            self._release_slot(pool)
            raise
        # Tell the throttle before the slot goes to the next request, not after the journal
        # write: a 429 must slow down the very next send.
        self._throttle_feedback(pool, answer)
        self._release_slot(pool)
        latency_ms = (time.perf_counter() - started) * 1000.0
        log.debug(
            "attempt answered",
            client_request_id=client_request_id,
            attempt=attempt_no,
            answer=type(answer).__name__,
        )
        step = Accepted("202") if isinstance(answer, HttpAccepted) else self._decide(target, answer)
        await self.journal.attempt_finished(
            attempt_end(
                self.run_id,
                target,
                client_request_id,
                answer,
                step,
                latency_ms,
                self._accepted_state(),
            )
        )
        self._apply(pool, target, step, answer)

    def _throttle_feedback(self, pool: PoolRun, answer: HttpAccepted | BatchError) -> None:
        now = time.monotonic()
        throttle = pool.account.throttle
        if isinstance(answer, HttpAccepted):
            throttle.on_success(now)
            return
        if not isinstance(answer, BatchHTTPError) or answer.status not in (429, 503):
            return
        change = throttle.on_throttle(now, answer.retry_after, answer.status == 429)
        if change is not None:
            data = {"concurrency": change.concurrency, "rate": change.rate, "reason": change.reason}
            self._journal_event("throttle_changed", account=pool.account.name, data=data)

    async def _call(self, pool: PoolRun, node_id: str, client_request_id: str) -> HttpAccepted:
        client = pool.account.client
        send = client.reimage_node if self.action == "reimage" else client.reboot_node
        try:
            return await send(
                pool.pool_id,
                node_id,
                option=self.plan.option.value,
                client_request_id=client_request_id,
            )
        except AuthFailed as error:  # a run-wide stop: its reason names the account
            raise locate_in_plan(error, self.plan, pool.account.name, client.endpoint) from None

    async def _not_sent(self, pool: PoolRun, target: RunTarget, client_request_id: str) -> None:
        """The run stopped between the journal write and the send: record that it never left."""
        await self.journal.attempt_finished(
            AttemptEnd(
                self.run_id,
                target.id,
                client_request_id,
                time.time(),
                AttemptOutcome.NOT_SENT,
                TargetState.PENDING,
                reason="the run stopped before it was sent",
            )
        )
        self._set_state(target, TargetState.PENDING)
        target.phase = Phase.QUEUED
        pool.rollout.release_to_queue(target.id)

    def _decide(self, target: RunTarget, error: BatchError) -> NodeStep:
        now = time.monotonic()
        target.counters = target.counters.after(error)
        if isinstance(error, (NodeStateConflict, PoolStateConflict)) and target.busy_since is None:
            target.busy_since = now
        ctx = NodeRetryContext(
            action=self.action,
            counters=target.counters,
            maybe_applied=target.maybe_applied,
            busy_for=None if target.busy_since is None else now - target.busy_since,
            busy_timeout=self.plan.execution.retry.busy_timeout,
            policy=self.policy,
        )
        return after_action_error(error, ctx, self._random.random())

    async def _reconcile(self, pool: PoolRun, target: RunTarget) -> None:
        record = target.record
        if not await self._send_slot(pool):
            self.schedule(pool, target, JobKind.RECONCILE, 0.0)  # stays in doubt for resume
            return
        try:
            node = await pool.account.client.get_node(
                pool.pool_id, record.node_id, select=NODE_SELECT
            )
        except NotFound:
            node = None
        except AuthFailed as error:  # the node stays in doubt; resume reads it again
            self.schedule(pool, target, JobKind.RECONCILE, 0.0)
            where = locate_in_plan(
                error, self.plan, pool.account.name, pool.account.client.endpoint
            )
            self.request_stop("auth", f"authentication failed: {describe(where)}")
            return
        except BatchError as error:  # could not read it now: read again a little later
            self.schedule(pool, target, JobKind.RECONCILE, self.policy.initial_backoff)
            log.info("reconcile read failed", error=str(error))
            return
        finally:
            self._release_slot(pool)
        server_timeout = min(30.0, self.plan.execution.request_timeout)
        step = after_reconcile(
            node, sent_at=record.last_sent_at or 0.0, now=time.time(), server_timeout=server_timeout
        )
        if isinstance(step, RetryLater) and target.counters.failures >= self.policy.max_attempts:
            step = Settle(
                TargetState.FAILED,
                f"no answer after {count(target.counters.failures, 'attempt')}, "
                "and none took effect",
            )
        if not isinstance(step, ReconcileLater) and target.last_client_request_id:
            outcome = (
                AttemptOutcome.RECONCILED_APPLIED
                if isinstance(step, Accepted)
                else AttemptOutcome.RECONCILED_NOT_APPLIED
            )
            await self.journal.attempt_finished(
                AttemptEnd(
                    self.run_id,
                    record.target_id,
                    target.last_client_request_id,
                    time.time(),
                    outcome,
                    target_state_for(step, self._accepted_state()),
                    reason=step_reason(step),
                )
            )
        elif not isinstance(step, ReconcileLater):
            await self._change(
                target, target_state_for(step, self._accepted_state()), step_reason(step)
            )
        self._apply(pool, target, step, None)

    # --- acting on a decision (in memory; the journal write came first) ---

    def _apply(
        self,
        pool: PoolRun,
        target: RunTarget,
        step: NodeStep,
        answer: HttpAccepted | BatchError | None,
    ) -> None:
        now = time.monotonic()
        if isinstance(step, Accepted):
            self._accepted(pool, target, now, step.reason)
        elif isinstance(step, RetryLater):
            self._retry_later(pool, target, step, answer, now)
        elif isinstance(step, ReconcileLater):
            target.maybe_applied = True
            self.schedule(pool, target, JobKind.RECONCILE, step.delay)
        elif isinstance(step, Settle):
            self.settle(target, step.state, step.reason)
        elif isinstance(step, StopPool):
            self.settle(target, TargetState.SKIPPED, step.reason)
            self.stop_pool(pool, step.reason)
        else:
            self._set_state(target, TargetState.PENDING)
            target.phase = Phase.QUEUED
            pool.rollout.release_to_queue(target.id)
            self.request_stop("auth", step.reason)

    def _accepted(self, pool: PoolRun, target: RunTarget, now: float, reason: str) -> None:
        self.observer.event("node_accepted", self._node_fields(target, reason=reason))
        if not self.plan.rollout.health.wait:
            self.settle(target, TargetState.DONE_UNVERIFIED, reason)
            return
        self._set_state(target, TargetState.ACCEPTED)
        target.record.accepted_at = time.time()
        target.phase = Phase.HEALTH
        target.health_since = now
        if not pool.awaiting:
            pool.last_poll = max(pool.last_poll, now)  # first poll one interval from now
        pool.awaiting[target.id] = target

    def _retry_later(
        self,
        pool: PoolRun,
        target: RunTarget,
        step: RetryLater,
        answer: HttpAccepted | BatchError | None,
        now: float,
    ) -> None:
        pool.retries += 1
        if step.throttled:
            pool.throttled += 1
            server_delay = answer.retry_after if isinstance(answer, BatchHTTPError) else None
            self.observer.event(
                "throttled",
                {"account": pool.account.name, "pool": pool.pool_id, "retry_after": server_delay},
            )
        target.phase = Phase.BACKOFF
        self.schedule(pool, target, JobKind.ACTION, step.delay)

    def schedule(self, pool: PoolRun, target: RunTarget, kind: JobKind, delay: float) -> None:
        self._seq += 1
        if kind is JobKind.RECONCILE:
            target.phase = Phase.RECONCILE
        pool.schedule(time.monotonic() + delay, self._seq, target.id, kind)

    def settle(self, target: RunTarget, state: TargetState, reason: str | None) -> None:
        """A target reached a terminal state (its journal record is already written)."""
        pool = target.pool
        self._set_state(target, state)
        target.record.reason = reason
        target.phase = Phase.DONE
        pool.awaiting.pop(target.id, None)
        duration = time.monotonic() - target.started if target.started is not None else None
        fields = self._node_fields(
            target,
            outcome=state.value,
            reason=reason,
            attempts=target.record.attempts,
            duration_s=None if duration is None else round(duration, 3),
        )
        log.info("node finished", **fields)
        self.observer.event(f"node_{state.value}", fields)
        completed = pool.rollout.settle(target.id, time.monotonic())
        if completed is not None:
            self._wave_completed(pool, completed)
        if state is TargetState.FAILED and self.budget.record_failure():
            reason_text = f"failure budget exceeded ({self.budget.describe()})"
            self.observer.event(
                "budget_exceeded", {"failed": self.budget.counted, "budget": self.budget.limit}
            )
            self._journal_event(
                "budget_exceeded", data={"failed": self.budget.counted, "budget": self.budget.limit}
            )
            self.request_stop("budget", reason_text)

    def stop_pool(self, pool: PoolRun, reason: str) -> None:
        """No further calls to this pool; its untouched targets become skipped."""
        if pool.rollout.stopped is not None:
            return
        never = pool.rollout.stop(reason)
        queued = [
            entry[2]
            for entry in pool.retry_heap
            if entry[3] is JobKind.ACTION and entry[2] not in never
        ]
        pool.retry_heap.clear()
        log.warning("pool stopped", pool=pool.pool_id, account=pool.account.name, reason=reason)
        self.observer.event(
            "pool_stopped", {"account": pool.account.name, "pool": pool.pool_id, "reason": reason}
        )
        self._journal_event(
            "pool_stopped", account=pool.account.name, pool=pool.pool_id, data={"reason": reason}
        )
        for target_id in [*never, *queued]:
            target = self.targets[target_id]
            self.settle(target, TargetState.SKIPPED, reason)
            self._group.start_soon(self._change, target, TargetState.SKIPPED, reason)

    def _wave_completed(self, pool: PoolRun, wave: WaveCompleted) -> None:
        data = {"wave": wave.wave + 1, "held": wave.held}
        self.observer.event(
            "wave_completed", {"account": pool.account.name, "pool": pool.pool_id, **data}
        )
        self._journal_event(
            "wave_completed",
            account=pool.account.name,
            pool=pool.pool_id,
            data={**data, "next_wave_at": _wall(wave.next_wave_at)},
        )

    # --- small helpers ---

    def _set_state(self, target: RunTarget, state: TargetState) -> None:
        pool = target.pool
        pool.states[target.record.state] -= 1
        pool.states[state] += 1
        target.record.state = state

    def _accepted_state(self) -> TargetState:
        return (
            TargetState.ACCEPTED if self.plan.rollout.health.wait else TargetState.DONE_UNVERIFIED
        )

    async def _change(self, target: RunTarget, state: TargetState, reason: str | None) -> None:
        await self.journal.target_changed(
            TargetChange(self.run_id, target.id, state, time.time(), reason)
        )

    def _journal_event(
        self,
        kind: str,
        *,
        account: str | None = None,
        pool: str | None = None,
        data: Mapping[str, object],
    ) -> None:
        event = RunEvent(self.run_id, time.time(), kind, account, pool, data)
        if hasattr(self, "_group"):
            self._group.start_soon(self._record_event, event)

    async def _record_event(self, event: RunEvent) -> None:
        """Events are for people: one that cannot be written must not stop anything (if the
        journal itself is failing, the run stops and says so once)."""
        with contextlib.suppress(JournalError):
            await self.journal.record_event(event)

    def _node_fields(self, target: RunTarget, **extra: object) -> dict[str, object]:
        return {
            "run": self.run_id,
            "account": target.pool.account.name,
            "pool": target.pool.pool_id,
            "node": target.record.node_id,
            "client_request_id": target.last_client_request_id,
            **extra,
        }


def _wall(monotonic_time: float | None) -> float | None:
    """A monotonic instant as wall-clock epoch seconds (for records read by other processes)."""
    if monotonic_time is None or not math.isfinite(monotonic_time):
        return None
    return time.time() + (monotonic_time - time.monotonic())
