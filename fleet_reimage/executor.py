"""The task loop: asks the policies what may start, calls the client, writes the journal.

One dispatcher loop and short-lived jobs. A job is one HTTP call for one node (a reimage or
reboot attempt, or a read of an in-doubt node); nothing waits inside a job: a retry is a new
job scheduled on the pool's retry heap, so the number of live tasks stays bounded by the
run's concurrency however many nodes are selected.

Before every start the dispatcher asks, in order: is the run stopping? is there a free slot
in the run (``concurrency``) and in the account (``per_account_concurrency`` and the
account's adaptive throttle)? may this pool start a node now (waves, pauses, checkpoints,
``max_unavailable``)? Retries of nodes already dispatched go first; they do not add to a
pool's unavailability.

Every attempt is written to the journal, durably, before the request is sent, and its
outcome is durable before the node counts as done (``journal`` group-commits both).
"""

from __future__ import annotations

import gc
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from .batch.client import Accepted as HttpAccepted
from .batch.errors import (
    AuthFailed,
    BatchError,
    BatchHTTPError,
    NodeStateConflict,
    NotFound,
    PoolStateConflict,
    RequestInDoubt,
    RequestNotSent,
    UnexpectedResponse,
)
from .batch.models import NODE_SELECT
from .batch.retry import RetryPolicy
from .events import RunObserver
from .health import HealthMonitor
from .journal.model import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Journal,
    LeaseLost,
    RunEvent,
    RunStatus,
    TargetChange,
    TargetRecord,
    TargetState,
)
from .plan.model import Plan
from .rollout.budget import FailureBudget
from .rollout.outcomes import (
    Accepted,
    NodeRetryContext,
    NodeStep,
    ReconcileLater,
    RetryLater,
    Settle,
    StopPool,
    StopRun,
    after_action_error,
    after_reconcile,
)
from .rollout.pool import WaveCompleted
from .runstate import (
    AccountRun,
    JobKind,
    Phase,
    PoolRun,
    PoolSnapshot,
    RunTarget,
    snapshot_pool,
)
from .slots import SendSlots

if TYPE_CHECKING:
    from .sharedrun import SharedRunCoordinator

log = structlog.get_logger("fleet_reimage.run")

STOP_EXIT_CODES = {"interrupted": 130}
TICK = 0.25  # seconds between the dispatcher's periodic wake-ups
Job = tuple[PoolRun, RunTarget, JobKind]
Confirm = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    exit_code: int
    reason: str | None
    counts: dict[str, int]
    stopped_pools: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RunSettings:
    deadline: float | None = None  # wall clock: nothing new starts after it
    confirm: Confirm | None = None  # asks the operator at a checkpoint; None = stop there
    stop_grace: float = 30.0  # how long a graceful stop waits for requests in flight


class Executor:
    def __init__(
        self,
        *,
        run_id: str,
        plan: Plan,
        journal: Journal,
        accounts: Sequence[AccountRun],
        pools: Sequence[PoolRun],
        targets: Sequence[RunTarget],
        budget: FailureBudget,
        settings: RunSettings,
        observer: RunObserver,
    ) -> None:
        self.run_id = run_id
        self.plan = plan
        self.journal = journal
        self.accounts = list(accounts)
        self.pools = list(pools)
        self.targets = {t.id: t for t in targets}
        self.budget = budget
        self.settings = settings
        self.observer = observer
        self.action = plan.action.value
        retry = plan.execution.retry
        self.policy = RetryPolicy(
            max_attempts=retry.max_attempts,
            max_connect_failures=retry.max_attempts,
            initial_backoff=retry.initial_backoff,
            max_backoff=retry.max_backoff,
        )
        self.health = HealthMonitor(self)
        self.shared: SharedRunCoordinator | None = None  # set for a shared (joined) run
        self.slots = SendSlots(plan.execution.concurrency, self.accounts)
        self._jobs = 0  # live job tasks
        self._unsent = 0  # jobs launched that have not been granted (or denied) a send slot
        self._seq = 0
        self._wake = anyio.Event()
        self._random = random.Random()
        self.stop_kind: str | None = None
        self.stop_reason: str | None = None
        self._checkpoint_open = False
        self._cancel: anyio.CancelScope | None = None

    # --- public control ---

    def request_stop(self, kind: str, reason: str) -> None:
        """Stop dispatching; requests in flight finish. The first reason wins."""
        if self.stop_kind is None:
            self.stop_kind, self.stop_reason = kind, reason
            self.observer.event("run_stopping", {"kind": kind, "reason": reason})
            self._journal_event("run_stopping", data={"kind": kind, "reason": reason})
        self.wake()

    def abort(self) -> None:
        """Stop at once: requests in flight are abandoned (the journal shows them in doubt)."""
        if self._cancel is not None:
            self._cancel.cancel()

    def wake(self) -> None:
        self._wake.set()

    def start_background(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``func(*args)`` beside the run (a journal write nobody needs to wait for)."""
        self._group.start_soon(func, *args)

    def active_node_ids(self, pool: PoolRun) -> set[str]:
        """Node ids of the pool's targets between dispatch and a terminal state.

        In a shared run other runners' targets may be reimaging too, and only the journal
        knows which: every target not known to be finished counts as someone's.
        """
        if self.shared is not None:
            return {
                t.record.node_id
                for t in self.targets.values()
                if t.pool is pool and t.phase is not Phase.DONE
            }
        return {self.targets[t].record.node_id for t in pool.rollout.active_targets()}

    def refresh_record(self, target: RunTarget, record: TargetRecord) -> None:
        """Adopt the journal's view of a target (another runner may have changed it)."""
        self._set_state(target, record.state)
        mine = target.record
        mine.attempts, mine.reason = record.attempts, record.reason
        mine.first_sent_at, mine.last_sent_at = record.first_sent_at, record.last_sent_at
        mine.accepted_at = record.accepted_at

    def snapshots(self) -> list[PoolSnapshot]:
        return [snapshot_pool(pool) for pool in self.pools]

    # --- the loop ---

    async def run(self) -> RunResult:
        self.observer.event("run_started", {"run_id": self.run_id, "selected": len(self.targets)})
        with anyio.CancelScope() as scope:
            self._cancel = scope
            if self.budget.exceeded:  # a resumed run whose budget is still spent
                self.stop_kind = "budget"
                self.stop_reason = (
                    f"failure budget exceeded ({self.budget.describe()}); "
                    "resume with --accept-failures or --failure-budget N"
                )
            # Everything built so far lives as long as the run: keep the cycle collector off
            # it (with 100,000 targets a full collection would pause the loop for ~100 ms).
            gc.collect()
            gc.freeze()
            if self.shared is not None:
                await self.shared.start()
            send, receive = anyio.create_memory_object_stream[Job](math.inf)
            self._jobs_out = send
            try:
                async with anyio.create_task_group() as group, send, receive:
                    self._group = group
                    group.start_soon(self.health.run)
                    group.start_soon(self._ticker)
                    for _ in range(2 * self.plan.execution.concurrency):
                        group.start_soon(self._worker, receive.clone())
                    if self.shared is not None:
                        group.start_soon(self.shared.run)
                    await self._dispatch_loop()
                    group.cancel_scope.cancel()
            finally:
                gc.unfreeze()
        if scope.cancelled_caught and self.stop_kind is None:
            self.stop_kind, self.stop_reason = "interrupted", "stopped at once"
        return await self._finish()

    async def _dispatch_loop(self) -> None:
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            self._check_deadline()
            next_start = math.inf if self.stop_kind else self._start_ready(now)
            if self.stop_kind is None:
                next_start = min(next_start, self.slots.grant(now))
            else:
                self.slots.deny_all()
            if self._all_done():
                return
            if self.stop_kind is not None:
                if self._jobs == 0:
                    return
                grace_until = grace_until or now + self.settings.stop_grace
                if now >= grace_until:
                    self.abort()
                    return
                next_start = grace_until
            self._maybe_checkpoint()
            if next_start - now < TICK:  # a timer ends before the next tick: wait for it
                with anyio.move_on_after(max(next_start - now, 0.0)):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = anyio.Event()

    def _start_ready(self, now: float) -> float:
        """Launch every job that may start now; returns when the next one could.

        Launched jobs write their attempt to the journal, then wait for a send slot: at most
        ``concurrency`` of them wait at once (per account, at most its current concurrency),
        so the journal write of the next requests overlaps the requests on the wire.
        """
        earliest = math.inf
        limit = self.plan.execution.concurrency
        progress = True
        while progress:
            progress = False
            for pool in self.pools:
                if self._unsent >= limit:
                    return earliest
                account = pool.account
                if account.unsent >= account.throttle.concurrency:
                    continue
                job = self._next_job(pool, now)
                if job is None:
                    due = pool.next_due()
                    start = pool.rollout.next_start_time(now)
                    earliest = min(earliest, due or math.inf, start or math.inf)
                    continue
                self._launch(pool, *job)
                progress = True
        return earliest

    def _next_job(self, pool: PoolRun, now: float) -> tuple[RunTarget, JobKind] | None:
        due = pool.due_job(now)
        if due is not None:
            return self.targets[due[0]], due[1]
        target_id = pool.rollout.take_next(now)
        if target_id is None:
            return None
        target = self.targets[target_id]
        target.started = now
        if pool.rollout.wave != pool.started_wave:
            pool.started_wave = pool.rollout.wave
            data = {"wave": pool.rollout.wave + 1, "of": pool.rollout.wave_count}
            self.observer.event(
                "wave_started", {"account": pool.account.name, "pool": pool.pool_id, **data}
            )
            self._journal_event(
                "wave_started", account=pool.account.name, pool=pool.pool_id, data=data
            )
        return target, JobKind.ACTION

    def _launch(self, pool: PoolRun, target: RunTarget, kind: JobKind) -> None:
        self._jobs += 1
        self._unsent += 1
        pool.account.unsent += 1
        target.phase = Phase.REQUEST if kind is JobKind.ACTION else Phase.RECONCILE
        self._jobs_out.send_nowait((pool, target, kind))

    async def _worker(self, jobs: MemoryObjectReceiveStream[Job]) -> None:
        """A long-lived task running jobs one after another (cheaper than a task per job)."""
        async with jobs:
            async for pool, target, kind in jobs:
                await self._job(pool, target, kind)

    async def _ticker(self) -> None:
        """Wake the dispatcher now and then, for deadlines and stop grace periods."""
        while True:
            await anyio.sleep(TICK)
            self.wake()

    async def _job(self, pool: PoolRun, target: RunTarget, kind: JobKind) -> None:
        # Every log event of this node's work carries these fields (all of them are set, so
        # nothing of the worker's previous job leaks into this one).
        structlog.contextvars.bind_contextvars(
            run=self.run_id,
            account=pool.account.name,
            pool=pool.pool_id,
            node=target.record.node_id,
            client_request_id=None,
            attempt=None,
        )
        try:
            if kind is JobKind.ACTION:
                await self._attempt(pool, target)
            else:
                await self._reconcile(pool, target)
        finally:
            self._jobs -= 1
            self.wake()

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
        self.wake()

    # --- one attempt ---

    async def _attempt(self, pool: PoolRun, target: RunTarget) -> None:
        record = target.record
        client_request_id = str(uuid.uuid4())
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
        structlog.contextvars.bind_contextvars(
            client_request_id=client_request_id, attempt=attempt_no
        )
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
            _attempt_end(
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
        return await send(
            pool.pool_id,
            node_id,
            option=self.plan.option.value,
            client_request_id=client_request_id,
        )

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
            self.request_stop("auth", f"authentication failed: {error}")
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
                f"no answer after {target.counters.failures} attempts, and none took effect",
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
                    _target_state_for(step, self._accepted_state()),
                    reason=_step_reason(step),
                )
            )
        elif not isinstance(step, ReconcileLater):
            await self._change(
                target, _target_state_for(step, self._accepted_state()), _step_reason(step)
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

    # --- stops and checkpoints ---

    def _check_deadline(self) -> None:
        deadline = self.settings.deadline
        if deadline is not None and self.stop_kind is None and time.time() >= deadline:
            self.request_stop("deadline", "the maintenance window's deadline passed")

    def _maybe_checkpoint(self) -> None:
        held = [p for p in self.pools if p.rollout.held]
        if not held or self._checkpoint_open or self.stop_kind is not None:
            return
        if not all(p.rollout.held or p.rollout.done for p in self.pools):
            return
        wave = self.plan.rollout.confirm_after_wave
        message = f"wave {wave} is complete in every pool: continue the rollout?"
        self._journal_event("checkpoint", data={"wave": wave})
        self.observer.event("checkpoint", {"wave": wave})
        if self.settings.confirm is None:
            self.request_stop(
                "checkpoint", f"paused after wave {wave} for the operator; resume to continue"
            )
            return
        self._checkpoint_open = True
        self._group.start_soon(self._ask, message, held)

    async def _ask(self, message: str, held: list[PoolRun]) -> None:
        assert self.settings.confirm is not None
        go_on = await self.settings.confirm(message)
        self._checkpoint_open = False
        if go_on:
            self._journal_event("checkpoint_confirmed", data={})
            self.observer.event("checkpoint_confirmed", {"run": self.run_id})
            for pool in held:
                pool.rollout.release_checkpoint()
        else:
            self.request_stop("checkpoint", "the operator chose to stop at the checkpoint")
        self.wake()

    def _all_done(self) -> bool:
        return self._jobs == 0 and all(
            p.rollout.done and not p.awaiting and not p.retry_heap for p in self.pools
        )

    async def _finish(self) -> RunResult:
        """Leave every target in a state resume understands, then record the run's end."""
        with anyio.CancelScope(shield=True):
            for pool in self.pools:
                for _, _, target_id, kind in pool.retry_heap:
                    target = self.targets[target_id]
                    if kind is JobKind.ACTION and target.phase is Phase.BACKOFF:
                        await self._change(target, TargetState.PENDING, "stopped before its retry")
            states = [t.record.state for t in self.targets.values()]
            others_alive = False
            if self.shared is not None:  # the run's truth is the journal's, not ours alone
                others_alive = self.shared.live_runners > 1
                await self.shared.leave()
                states = [r.state for r in await self.journal.targets(self.run_id)]
            result = self._result(states)
            if result.status is RunStatus.FINISHED or not others_alive:
                await self.journal.set_run_status(
                    self.run_id, result.status, result.reason, time.time()
                )
        self.observer.event(
            "run_finished" if result.status is RunStatus.FINISHED else "run_stopped",
            {
                "status": result.status.value,
                "exit_code": result.exit_code,
                "reason": result.reason,
                **result.counts,
            },
        )
        return result

    def _result(self, states: Sequence[TargetState]) -> RunResult:
        counts: dict[str, int] = {state.value: 0 for state in TargetState}
        for state in states:
            counts[state.value] += 1
        stopped = {
            f"{p.account.name}/{p.pool_id}": p.rollout.stopped
            for p in self.pools
            if p.rollout.stopped
        }
        all_terminal = all(state.terminal for state in states)
        if self.stop_kind == "interrupted":
            status, code = RunStatus.INTERRUPTED, 130
        elif self.stop_kind is not None and not all_terminal:
            status, code = RunStatus.STOPPED, 3
        else:
            status = RunStatus.FINISHED if all_terminal else RunStatus.STOPPED
            bad = counts["failed"] + counts["skipped"]
            code = 3 if (stopped or self.stop_kind) else (1 if bad else 0)
        reason = self.stop_reason or ("; ".join(f"{k}: {v}" for k, v in stopped.items()) or None)
        return RunResult(self.run_id, status, code, reason, counts, stopped)

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
            self._group.start_soon(self.journal.record_event, event)

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


def _target_state_for(step: NodeStep, accepted: TargetState) -> TargetState:
    if isinstance(step, Accepted):
        return accepted
    if isinstance(step, Settle):
        return step.state
    if isinstance(step, StopPool):
        return TargetState.SKIPPED
    if isinstance(step, StopRun):
        return TargetState.PENDING
    return TargetState.IN_FLIGHT


def _step_reason(step: NodeStep) -> str | None:
    return getattr(step, "reason", None)


def _attempt_end(
    run_id: str,
    target: RunTarget,
    client_request_id: str,
    answer: HttpAccepted | BatchError,
    step: NodeStep,
    latency_ms: float,
    accepted_state: TargetState,
) -> AttemptEnd:
    status = request_id = code = message = None
    if isinstance(answer, HttpAccepted):
        outcome, status, request_id = AttemptOutcome.ACCEPTED, answer.status, answer.request_id
    elif isinstance(answer, RequestNotSent):
        outcome, message = AttemptOutcome.NOT_SENT, str(answer)
    elif isinstance(answer, RequestInDoubt):
        outcome, message = AttemptOutcome.IN_DOUBT, str(answer)
    else:
        assert isinstance(answer, BatchHTTPError)
        in_doubt = isinstance(answer, UnexpectedResponse) and 200 <= answer.status < 300
        outcome = AttemptOutcome.IN_DOUBT if in_doubt else AttemptOutcome.REJECTED
        status, request_id, code, message = (
            answer.status,
            answer.request_id,
            answer.code,
            answer.message,
        )
    return AttemptEnd(
        run_id,
        target.id,
        client_request_id,
        time.time(),
        outcome,
        _target_state_for(step, accepted_state),
        status,
        request_id,
        code,
        message,
        round(latency_ms, 2),
        _step_reason(step),
    )
