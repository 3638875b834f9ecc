"""The task loop: asks the policies what may start, hands jobs to workers, ends the run.

One dispatcher loop and short-lived jobs. A job is one HTTP call for one node (a reimage or
reboot attempt, or a read of an in-doubt node, see ``node_work.py``); nothing waits inside a
job: a retry is a new job scheduled on the pool's retry heap, so the number of live tasks
stays bounded by the run's concurrency however many nodes are selected.

Before every start the dispatcher asks, in order: is the run stopping? may another job wait
for a send slot (``slots.py``: ``concurrency``, and per account its current concurrency)?
may this pool start a node now (the rollout policy: waves, pauses, checkpoints,
``max_unavailable``, the failure budget)? Retries of nodes already dispatched go first; they
do not add to a pool's unavailability.
A pool whose next wave waits for its gates has them asked beside the run
(``gates.py``), and the ``after_run`` gates are asked once every node is finished; a soak
is watched by the health monitor's polls (``soak.py``).

The executor is composed, not inherited: node work, the health gate and a shared run's
coordinator each get the run's ledger (``ledger.py``, the state and its changes) and this
object as ``RunControl`` (``control.py``: stop, wake, run beside), nothing more. Process-wide
settings (the garbage collector) are the command line's business, never the library's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from fleet_reimage.engine.drain import Drains
from fleet_reimage.engine.events import RunObserver
from fleet_reimage.engine.gates import GateKeeper
from fleet_reimage.engine.health import HealthMonitor
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.node_work import NodeWork
from fleet_reimage.engine.poolclaim import PoolClaims
from fleet_reimage.engine.replace import ReplaceDriver
from fleet_reimage.engine.runstate import (
    AccountRun,
    JobKind,
    Phase,
    PoolRun,
    PoolSnapshot,
    RunTarget,
    snapshot_pool,
)
from fleet_reimage.engine.sharedrun import SharedRunCoordinator, SharedSettings
from fleet_reimage.engine.slots import SendSlots
from fleet_reimage.engine.soak import SoakWatch
from fleet_reimage.engine.wakeup import Wakeup
from fleet_reimage.journal.model import Journal, JournalError, RunStatus, TargetState
from fleet_reimage.journal.shared import SharedRuns
from fleet_reimage.plan.model import Action, Plan
from fleet_reimage.rollout.budget import FailureBudget

log = structlog.get_logger("fleet_reimage.run")

TICK = 0.25  # seconds between the dispatcher's periodic wake-ups
Job = tuple[PoolRun, RunTarget, JobKind]
_PHASE_OF = {JobKind.ACTION: Phase.REQUEST, JobKind.RECONCILE: Phase.RECONCILE,
             JobKind.DRAIN: Phase.DRAINING}  # fmt: skip
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
    notifications: dict[str, int] | None = None  # webhooks: sent, failed, dropped
    drains: dict[str, int] | None = None  # started, drained, timed_out, undone, enabled


@dataclass(slots=True)
class RunSettings:
    deadline: float | None = None  # wall clock: nothing new starts after it
    confirm: Confirm | None = None  # asks the operator at a checkpoint; None = stop there
    stop_grace: float = 30.0  # how long a graceful stop waits for requests in flight


@dataclass(frozen=True, slots=True)
class Sharing:
    """How this runner shares its run with others (PostgreSQL journals)."""

    store: SharedRuns
    settings: SharedSettings
    clock: Callable[[], float] = time.time  # this runner's wall clock, checked against the DB


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
        sharing: Sharing | None = None,
        drained_before: Sequence[int] = (),
    ) -> None:
        """``drained_before``: targets a previous run drained and acted on (a resume's)."""
        self.run_id = run_id
        self.plan = plan
        self.journal = journal
        self.accounts = list(accounts)
        self.settings = settings
        self.observer = observer
        self.action = plan.action.value
        self.stop_kind: str | None = None
        self.stop_reason: str | None = None
        self.ledger = RunLedger(run_id=run_id, journal=journal, observer=observer, control=self,
                                pools=pools, targets=targets, budget=budget,
                                health_wait=plan.rollout.health.wait,
                                shared=sharing is not None)  # fmt: skip
        self.slots = SendSlots(plan.execution.concurrency, self.accounts, self.wake)
        self.shared: SharedRunCoordinator | None = None
        if sharing is not None:
            self.shared = SharedRunCoordinator(
                self.ledger, self, sharing.store, sharing.settings, accounts=self.accounts,
                per_account_concurrency=plan.execution.per_account_concurrency,
                clock=sharing.clock,
            )  # fmt: skip
        runner_id = None if self.shared is None else self.shared.runner_id
        self.work = NodeWork(self.ledger, self, self.slots, plan, runner_id=runner_id)
        self.drains = self._drains(runner_id, drained_before)  # rollout.drain: drain.py
        on_baseline = None if self.shared is None else self.shared.publish_baseline
        self.gates, self.soak = self._next_wave_waits(plan)
        self.health = HealthMonitor(
            self.ledger, self, plan, on_baseline=on_baseline, soak=self.soak, drains=self.drains
        )
        self.claims: PoolClaims | None = None  # rollout.claim_pools: see poolclaim.py
        if plan.rollout.claim_pools:
            self.claims = PoolClaims(self.ledger, self, others_alive=self._others_alive)
        self.replace: ReplaceDriver | None = None  # action: replace runs pools, not nodes
        if plan.action is Action.REPLACE:
            self.replace = ReplaceDriver(self.ledger, self, plan, deadline=self._check_deadline,
                                         checkpoint=self._maybe_checkpoint,
                                         gates=self._ask_gates)  # fmt: skip
        self._live_jobs = 0  # job tasks launched and not finished
        self._wake = Wakeup()
        self._checkpoint_open = False
        self._cancel: anyio.CancelScope | None = None
        self._group: TaskGroup | None = None

    def _drains(self, runner_id: str | None, drained_before: Sequence[int]) -> Drains | None:
        plan = self.plan
        if plan.rollout.drain is None:
            return None
        drains = Drains(self.ledger, self, self.slots, plan.rollout.drain,
                        plan_option=plan.option.value,
                        poll_interval=plan.rollout.health.poll_interval,
                        runner_id=runner_id, drained_before=drained_before)  # fmt: skip
        if self.shared is not None:  # a dead runner's drains are finished by the taker
            self.shared.on_take_over = drains.taken_over
        return drains

    def _next_wave_waits(self, plan: Plan) -> tuple[GateKeeper | None, SoakWatch | None]:
        """The plan's gates (``gates.py``) and soak (``soak.py``), when it has them."""
        gates = None
        if plan.rollout.gates:
            gates = GateKeeper(self.ledger, self, plan, shared=self.shared)
        if plan.rollout.soak <= 0:
            return gates, None
        ready = plan.rollout.health.ready_states
        soak = SoakWatch(self.ledger, self, seconds=plan.rollout.soak, ready=ready)
        self.ledger.on_wave_completed = soak.started
        return gates, soak

    @property
    def pools(self) -> list[PoolRun]:
        return self.ledger.pools

    @property
    def targets(self) -> dict[int, RunTarget]:
        return self.ledger.targets

    @property
    def budget(self) -> FailureBudget:
        return self.ledger.budget

    def snapshots(self) -> list[PoolSnapshot]:
        return [snapshot_pool(pool) for pool in self.pools]

    # --- RunControl, and the caller's controls ---

    @property
    def stopping(self) -> bool:
        return self.stop_kind is not None

    def request_stop(self, kind: str, reason: str) -> None:
        """Stop dispatching; requests in flight finish. The first reason wins."""
        if self.stop_kind is None:
            self.stop_kind, self.stop_reason = kind, reason
            self.slots.deny_all()
            self.observer.event("run_stopping", {"kind": kind, "reason": reason})
            self.ledger.record_event("run_stopping", data={"kind": kind, "reason": reason})
        self.wake()

    def abort(self) -> None:
        """Stop at once: requests in flight are abandoned (the journal shows them in doubt)."""
        if self._cancel is not None:
            self._cancel.cancel()

    def wake(self) -> None:
        self._wake.set()

    def start_background(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``func(*args)`` beside the run (dropped before the run has started)."""
        if self._group is not None:
            self._group.start_soon(func, *args)

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
                self.slots.deny_all()
            if self.shared is not None:
                await self.shared.start()
            send, receive = anyio.create_memory_object_stream[Job](math.inf)
            self._jobs_out = send
            async with anyio.create_task_group() as group, send, receive:
                self._group = group
                if self.replace is not None:  # pools, not nodes: see replace.py
                    await self._claim_pools(group)
                    await self.replace.run()
                else:
                    group.start_soon(self.health.run)
                    group.start_soon(self._ticker)
                    for _ in range(2 * self.plan.execution.concurrency):
                        group.start_soon(self._worker, receive.clone())
                    if self.soak is not None:  # a resumed run soaks again what it left soaking
                        # (before any claim of a shared run could start the wave after it)
                        self.soak.restart(await self.journal.events(self.run_id))
                    if self.shared is not None:
                        group.start_soon(self.shared.run)
                    await self._claim_pools(group)
                    await self._dispatch_loop()
                await self._after_run()
                group.cancel_scope.cancel()
            self._group = None
        if scope.cancelled_caught and self.stop_kind is None:
            self.stop_kind, self.stop_reason = "interrupted", "stopped at once"
        return await self._finish()

    def _ask_gates(self, pool: PoolRun, now: float) -> None:
        """The pool's wave waits for its gates: ask them (once; ``gates.py``)."""
        if self.gates is not None:
            self.gates.check(pool, now)

    async def _claim_pools(self, group: TaskGroup) -> None:
        if self.claims is not None:  # before the first change to any pool
            await self.claims.start()
            group.start_soon(self.claims.run)

    async def _dispatch_loop(self) -> None:
        grace_until: float | None = None
        while True:
            now = time.monotonic()
            self._check_deadline()
            next_start = math.inf
            if self.stop_kind is None:
                next_start = min(self._start_ready(now), self.slots.grant(now))
            if self._all_done():
                return
            if self.stop_kind is not None:
                if self._live_jobs == 0:
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

        Launched jobs write their attempt to the journal, then wait for a send slot (see
        ``slots.py``), so the journal write of the next requests overlaps the requests on
        the wire.
        """
        earliest = math.inf
        progress = True
        while progress:
            progress = False
            for pool in self.pools:
                if not self.slots.may_launch():
                    return earliest
                if not self.slots.may_launch(pool.account):
                    continue
                job = self._next_job(pool, now)
                if self.shared is not None:
                    self.shared.running_low(pool)
                if job is None:
                    self._ask_gates(pool, now)  # its wave may wait for its gates
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
        if self.drains is not None and not self.drains.ready(pool):
            return None  # what its nodes run is not known yet: a poll will wake us
        target_id = pool.rollout.take_next(now)
        if target_id is None:
            return None
        target = self.targets[target_id]
        target.started = now
        self.ledger.wave_started(pool, now)
        if self.drains is not None:
            return target, self.drains.first_step(pool, target)
        return target, JobKind.ACTION

    def _launch(self, pool: PoolRun, target: RunTarget, kind: JobKind) -> None:
        self._live_jobs += 1
        self.slots.launch(pool.account)
        target.phase = _PHASE_OF[kind]
        if self.drains is not None and kind is JobKind.ACTION:
            self.drains.launched(target)
        self._jobs_out.send_nowait((pool, target, kind))

    async def _worker(self, jobs: MemoryObjectReceiveStream[Job]) -> None:
        """A long-lived task running jobs one after another (cheaper than a task per job)."""
        async with jobs:
            async for pool, target, kind in jobs:
                await self._job(pool, target, kind)

    async def _ticker(self) -> None:
        """Wake the dispatcher now and then, for deadlines and stop grace periods; end the
        drains whose timeout passed between two polls."""
        while True:
            await anyio.sleep(TICK)
            if self.drains is not None and self.drains.draining:
                self.drains.check(time.monotonic())
            self.wake()

    async def _job(self, pool: PoolRun, target: RunTarget, kind: JobKind) -> None:
        try:
            if kind is JobKind.DRAIN and self.drains is not None:
                await self.drains.job(pool, target)
            else:
                await self.work.run(pool, target, kind)
        except JournalError as error:
            # Nothing more can be recorded, so nothing more may be sent: stop at once.
            # What was in flight stays "sent, no answer" and is reconciled on resume.
            if self.stop_kind != "journal":  # reported once, in the run's result
                self.request_stop("journal", f"the journal cannot be written: {error}")
            self.abort()
        finally:
            self._live_jobs -= 1
            self.wake()

    async def _after_run(self) -> None:
        """Every node is finished and nothing stopped the run: ask the after_run gates."""
        if self.gates is None or not self.gates.after_gates or self.stopping:
            return
        if self._all_done():
            await self.gates.after_run()

    # --- stops and checkpoints ---

    def _check_deadline(self) -> None:
        deadline = self.settings.deadline
        if deadline is not None and self.stop_kind is None and time.time() >= deadline:
            self.request_stop("deadline", "the maintenance window's deadline passed")

    def _maybe_checkpoint(self) -> None:
        """Every pool is held at the checkpoint (or done): ask the operator, or stop there."""
        held = [p for p in self.pools if p.rollout.held]
        if not held or self._checkpoint_open or self.stop_kind is not None:
            return
        if not all(p.rollout.held or p.rollout.done for p in self.pools):
            return
        wave = self.plan.rollout.confirm_after_wave
        self.ledger.record_event("checkpoint", data={"wave": wave})
        self.observer.event("checkpoint", {"wave": wave})
        if self.settings.confirm is None or self.shared is not None:  # a shared run stops
            self.request_stop(
                "checkpoint", f"paused after wave {wave} for the operator; resume to continue"
            )
            return
        self._checkpoint_open = True
        message = f"wave {wave} is complete in every pool: continue the rollout?"
        self.start_background(self._ask, self.settings.confirm, message, held)

    async def _ask(self, confirm: Confirm, message: str, held: list[PoolRun]) -> None:
        go_on = await confirm(message)
        self._checkpoint_open = False
        if go_on:
            self.ledger.record_event("checkpoint_confirmed", data={})
            self.observer.event("checkpoint_confirmed", {"run": self.run_id})
            for pool in held:
                pool.rollout.release_checkpoint()
        else:
            self.request_stop("checkpoint", "the operator chose to stop at the checkpoint")
        self.wake()

    def _others_alive(self) -> bool:
        """Other runners share this run now (a shared run's claims stay theirs)."""
        return self.shared is not None and self.shared.live_runners > 1

    def _all_done(self) -> bool:
        return self._live_jobs == 0 and all(
            p.rollout.done and not p.awaiting and not p.retry_heap for p in self.pools
        )

    # --- the end ---

    async def _finish(self) -> RunResult:
        """Leave every target in a state resume understands, then record the run's end."""
        with anyio.CancelScope(shield=True):
            if self.claims is not None:
                await self.claims.finish()
            if self.drains is not None:  # scheduling is never left disabled by us
                await self.drains.finish()
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
                    await self.ledger.change(
                        target, TargetState.PENDING, "stopped before its retry"
                    )
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
        elif self.stop_kind is not None and (not all_terminal or self.stop_kind == "gate"):
            status, code = RunStatus.STOPPED, 3  # a failed after_run gate is asked on resume
        else:
            status = RunStatus.FINISHED if all_terminal else RunStatus.STOPPED
            bad = counts["failed"] + counts["skipped"]
            code = 3 if (stopped or self.stop_kind) else (1 if bad else 0)
        reason = self.stop_reason or ("; ".join(f"{k}: {v}" for k, v in stopped.items()) or None)
        drains = None if self.drains is None else dict(self.drains.counts)
        return RunResult(self.run_id, status, code, reason, counts, stopped, self.stop_kind,
                         drains=drains)  # fmt: skip
