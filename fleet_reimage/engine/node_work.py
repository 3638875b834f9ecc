"""One node's work: a job (an attempt, or a read of an in-doubt node) and what its answer means.

The executor (``executor.py``) decides *when* a job runs; this decides what a job does and
what follows from its answer, always in the same order: write the journal first (the attempt
before it is sent, its outcome before the node counts as done), then change the run's state
through the ledger (``ledger.py``). A node's work is a sequence of steps, each a job of its
own kind (``JobKind``): its next step is scheduled, never awaited inside a job, so a new
kind of step (say, draining a node before its reimage) is a new kind of job here.
"""

from __future__ import annotations

import random
import time

import structlog

from fleet_reimage.batch.client import Accepted as HttpAccepted
from fleet_reimage.batch.client import new_client_request_id
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
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import JobKind, Phase, PoolRun, RunTarget
from fleet_reimage.engine.slots import SendSlots
from fleet_reimage.journal.model import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    LeaseLost,
    TargetState,
)
from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.where import locate_in_plan
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
from fleet_reimage.units import count

log = structlog.get_logger("fleet_reimage.run")

Answer = HttpAccepted | BatchError


def retry_policy(plan: Plan) -> RetryPolicy:
    retry = plan.execution.retry
    return RetryPolicy(
        max_attempts=retry.max_attempts,
        max_connect_failures=retry.max_attempts,
        max_throttles=max(100, 10 * retry.max_attempts),
        initial_backoff=retry.initial_backoff,
        max_backoff=retry.max_backoff,
    )


async def journal_attempt(
    ledger: RunLedger, slots: SendSlots, pool: PoolRun, target: RunTarget, start: AttemptStart
) -> bool:
    """Make an attempt durable before it is sent (the target is then in flight); False when
    another runner of a shared run owns the target now: it is forgotten, nothing is sent."""
    try:
        await ledger.journal.attempt_started(start)
    except LeaseLost:
        slots.abandon(pool.account)
        target.phase = Phase.QUEUED
        pool.rollout.drop(target.id)
        return False
    ledger.set_state(target, TargetState.IN_FLIGHT)
    target.record.attempts = start.attempt_no
    return True


class NodeWork:
    """The jobs of a run's nodes (see the module docstring)."""

    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        slots: SendSlots,
        plan: Plan,
        *,
        runner_id: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.control = control
        self.slots = slots
        self.plan = plan
        self.action = plan.action.value
        self.policy = retry_policy(plan)
        self.runner_id = runner_id  # a shared run's: fences this runner's attempts
        self._random = random.Random()

    async def run(self, pool: PoolRun, target: RunTarget, kind: JobKind) -> None:
        """One job; every log event of it carries the node's context."""
        action = kind is JobKind.ACTION
        client_request_id = new_client_request_id() if action else None
        # All of them are set, so nothing of the worker's previous job leaks into this one.
        structlog.contextvars.bind_contextvars(
            run=self.ledger.run_id,
            account=pool.account.name,
            pool=pool.pool_id,
            node=target.record.node_id,
            client_request_id=client_request_id,
            attempt=target.record.attempts + 1 if action else None,
        )
        if client_request_id is not None:
            await self._attempt(pool, target, client_request_id)
        else:
            await self._reconcile(pool, target)

    # --- one attempt ---

    async def _attempt(self, pool: PoolRun, target: RunTarget, client_request_id: str) -> None:
        """One attempt with a fresh ``client_request_id`` (already bound to the log context)."""
        ledger, record = self.ledger, target.record
        attempt_no = record.attempts + 1
        sent_at = time.time()
        start = AttemptStart(ledger.run_id, record.target_id, attempt_no, self.action,
                             client_request_id, sent_at, self.runner_id)  # fmt: skip
        if not await journal_attempt(ledger, self.slots, pool, target, start):
            return
        record.first_sent_at = record.first_sent_at or sent_at
        target.last_client_request_id = client_request_id
        if not await self.slots.acquire(pool.account, time.monotonic()):
            await self._not_sent(target, client_request_id)
            return
        # The attempt's time is when it really left: that is what lastBootTime is compared to.
        record.last_sent_at = time.time()
        started = time.perf_counter()
        answer = await self._send(pool, target, client_request_id)
        latency_ms = (time.perf_counter() - started) * 1000.0
        log.debug("attempt answered", client_request_id=client_request_id, attempt=attempt_no,
                  answer=type(answer).__name__)  # fmt: skip
        step = Accepted("202") if isinstance(answer, HttpAccepted) else self._decide(target, answer)
        await ledger.journal.attempt_finished(
            attempt_end(
                ledger.run_id,
                target,
                client_request_id,
                answer,
                step,
                latency_ms,
                ledger.accepted_state,
            )
        )
        self._apply(pool, target, step, answer)

    async def _send(self, pool: PoolRun, target: RunTarget, client_request_id: str) -> Answer:
        """The request, on a slot already held; the slot is free again when this returns."""
        client = pool.account.client
        send = client.reimage_node if self.action == "reimage" else client.reboot_node
        try:
            option = target.action_option or self.plan.option.value  # a drain's ``then``
            answer: Answer = await send(pool.pool_id, target.record.node_id, option=option,
                                        client_request_id=client_request_id)  # fmt: skip
        except AuthFailed as error:  # a run-wide stop: its reason names the account
            answer = locate_in_plan(error, self.plan, pool.account.name, client.endpoint)
        except BatchError as error:
            answer = error
        except BaseException:
            self.slots.release(pool.account, time.monotonic())
            raise
        # Tell the throttle before the slot goes to the next request, not after the journal
        # write: a 429 must slow down the very next send.
        self._throttle_feedback(pool, answer)
        self.slots.release(pool.account, time.monotonic())
        return answer

    def _throttle_feedback(self, pool: PoolRun, answer: Answer) -> None:
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
            self.ledger.record_event("throttle_changed", account=pool.account.name, data=data)

    async def _not_sent(self, target: RunTarget, client_request_id: str) -> None:
        """The run stopped between the journal write and the send: record that it never left."""
        ledger = self.ledger
        await ledger.journal.attempt_finished(
            AttemptEnd(
                ledger.run_id,
                target.id,
                client_request_id,
                time.time(),
                AttemptOutcome.NOT_SENT,
                TargetState.PENDING,
                reason="the run stopped before it was sent",
            )
        )
        ledger.requeue(target)

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

    # --- one read of an in-doubt node ---

    async def _reconcile(self, pool: PoolRun, target: RunTarget) -> None:
        ledger, record = self.ledger, target.record
        if not await self.slots.acquire(pool.account, time.monotonic()):
            ledger.schedule(pool, target, JobKind.RECONCILE, 0.0)  # stays in doubt for resume
            return
        try:
            node = await pool.account.client.get_node(
                pool.pool_id, record.node_id, select=NODE_SELECT
            )
        except NotFound:
            node = None
        except AuthFailed as error:  # the node stays in doubt; resume reads it again
            ledger.schedule(pool, target, JobKind.RECONCILE, 0.0)
            where = locate_in_plan(
                error, self.plan, pool.account.name, pool.account.client.endpoint
            )
            self.control.request_stop("auth", f"authentication failed: {describe(where)}")
            return
        except BatchError as error:  # could not read it now: read again a little later
            ledger.schedule(pool, target, JobKind.RECONCILE, self.policy.initial_backoff)
            log.info("reconcile read failed", error=str(error))
            return
        finally:
            self.slots.release(pool.account, time.monotonic())
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
        await self._record_reconciled(target, step)
        self._apply(pool, target, step, None)

    async def _record_reconciled(self, target: RunTarget, step: NodeStep) -> None:
        if isinstance(step, ReconcileLater):
            return
        ledger = self.ledger
        state = target_state_for(step, ledger.accepted_state)
        if not target.last_client_request_id:  # in doubt from a run before this one
            await ledger.change(target, state, step_reason(step))
            return
        outcome = (
            AttemptOutcome.RECONCILED_APPLIED
            if isinstance(step, Accepted)
            else AttemptOutcome.RECONCILED_NOT_APPLIED
        )
        await ledger.journal.attempt_finished(
            AttemptEnd(
                ledger.run_id,
                target.id,
                target.last_client_request_id,
                time.time(),
                outcome,
                state,
                reason=step_reason(step),
            )
        )

    # --- acting on a decision (in memory; the journal write came first) ---

    def _apply(
        self, pool: PoolRun, target: RunTarget, step: NodeStep, answer: Answer | None
    ) -> None:
        ledger = self.ledger
        if isinstance(step, Accepted):
            self._accepted(pool, target, step.reason)
        elif isinstance(step, RetryLater):
            self._retry_later(pool, target, step, answer)
        elif isinstance(step, ReconcileLater):
            target.maybe_applied = True
            ledger.schedule(pool, target, JobKind.RECONCILE, step.delay)
        elif isinstance(step, Settle):
            ledger.settle(target, step.state, step.reason)
        elif isinstance(step, StopPool):
            ledger.settle(target, TargetState.SKIPPED, step.reason)
            ledger.stop_pool(pool, step.reason)
        else:
            ledger.requeue(target)
            self.control.request_stop("auth", step.reason)

    def _accepted(self, pool: PoolRun, target: RunTarget, reason: str) -> None:
        ledger = self.ledger
        ledger.observer.event("node_accepted", ledger.node_fields(target, reason=reason))
        if not ledger.health_wait:
            ledger.settle(target, TargetState.DONE_UNVERIFIED, reason)
            return
        ledger.set_state(target, TargetState.ACCEPTED)
        target.record.accepted_at = time.time()
        ledger.awaiting_health(pool, target, time.monotonic())

    def _retry_later(
        self, pool: PoolRun, target: RunTarget, step: RetryLater, answer: Answer | None
    ) -> None:
        pool.retries += 1
        if step.throttled:
            pool.throttled += 1
            server_delay = answer.retry_after if isinstance(answer, BatchHTTPError) else None
            self.ledger.observer.event(
                "throttled",
                {"account": pool.account.name, "pool": pool.pool_id, "retry_after": server_delay},
            )
        target.phase = Phase.BACKOFF
        self.ledger.schedule(pool, target, JobKind.ACTION, step.delay)
