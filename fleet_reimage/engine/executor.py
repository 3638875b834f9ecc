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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from fleet_reimage.batch.client import new_client_request_id
from fleet_reimage.batch.retry import RetryPolicy
from fleet_reimage.engine.events import RunObserver
from fleet_reimage.engine.health import HealthMonitor
from fleet_reimage.engine.node_work import NodeWork
from fleet_reimage.engine.runstate import (
    AccountRun,
    JobKind,
    Phase,
    PoolRun,
    PoolSnapshot,
    RunTarget,
    snapshot_pool,
)
from fleet_reimage.engine.slots import SendSlots
from fleet_reimage.engine.wakeup import Wakeup
from fleet_reimage.journal.model import (
    Journal,
    JournalError,
    RunStatus,
    TargetRecord,
    TargetState,
)
from fleet_reimage.plan.model import Plan
from fleet_reimage.rollout.budget import FailureBudget

if TYPE_CHECKING:
    from fleet_reimage.engine.sharedrun import SharedRunCoordinator

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
    stop_kind: str | None = None  # why it stopped: budget, deadline, auth, interrupted, ...


@dataclass(slots=True)
class RunSettings:
    deadline: float | None = None  # wall clock: nothing new starts after it
    confirm: Confirm | None = None  # asks the operator at a checkpoint; None = stop there
    stop_grace: float = 30.0  # how long a graceful stop waits for requests in flight


class Executor(NodeWork):
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
            max_throttles=max(100, 10 * retry.max_attempts),
            initial_backoff=retry.initial_backoff,
            max_backoff=retry.max_backoff,
        )
        self.health = HealthMonitor(self)
        self.shared: SharedRunCoordinator | None = None  # set for a shared (joined) run
        self.slots = SendSlots(plan.execution.concurrency, self.accounts)
        self._jobs = 0  # live job tasks
        self._unsent = 0  # jobs launched that have not been granted (or denied) a send slot
        self._seq = 0
        self._wake = Wakeup()
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
            # No collection first: it would cost as much once, before the first request, and
            # the little cyclic garbage of start-up is only kept until the run ends.
            gc.freeze()
            thresholds, collecting = gc.get_threshold(), gc.isenabled()
            gc.set_threshold(50_000, 20, 100)  # fewer young collections: requests churn objects
            gc.enable()  # the command line pauses it while the run's state is built
            try:
                if self.shared is not None:
                    await self.shared.start()
                send, receive = anyio.create_memory_object_stream[Job](math.inf)
                self._jobs_out = send
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
                gc.set_threshold(*thresholds)
                gc.unfreeze()
                if not collecting:
                    gc.disable()
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
            self._wake = Wakeup()

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
                if self.shared is not None:
                    self.shared.running_low(pool)
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
        action = kind is JobKind.ACTION
        client_request_id = new_client_request_id() if action else None
        structlog.contextvars.bind_contextvars(
            run=self.run_id,
            account=pool.account.name,
            pool=pool.pool_id,
            node=target.record.node_id,
            client_request_id=client_request_id,
            attempt=target.record.attempts + 1 if action else None,
        )
        try:
            if client_request_id is not None:
                await self._attempt(pool, target, client_request_id)
            else:
                await self._reconcile(pool, target)
        except JournalError as error:
            # Nothing more can be recorded, so nothing more may be sent: stop at once.
            # What was in flight stays "sent, no answer" and is reconciled on resume.
            if self.stop_kind != "journal":  # reported once, in the run's result
                self.request_stop("journal", f"the journal cannot be written: {error}")
            self.abort()
        finally:
            self._jobs -= 1
            self.wake()

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
            try:
                result = await self._record_end()
            except JournalError:  # the run ends whatever the journal can still take
                result = self._result([t.record.state for t in self.targets.values()])
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

    async def _record_end(self) -> RunResult:
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
        return RunResult(self.run_id, status, code, reason, counts, stopped, self.stop_kind)
