"""Several runners sharing one run through a PostgreSQL journal (``--join``).

Each runner claims work from the journal instead of deciding alone: ``ClaimedPoolRollout``
stands in for a pool's local policy and hands out only targets this runner has claimed; the
claim itself (in the journal, one transaction per pool) decides waves, pauses,
``max_unavailable`` and the failure budget across all runners together.
``SharedRunCoordinator`` keeps the runner's registration alive (heartbeat), claims more
work as room frees up, takes over the in-flight and accepted nodes of runners whose lease
expired, splits each account's concurrency between the live runners and shares
Retry-After pauses, and gives everything back when the runner leaves.

Limits of the shared model, on purpose: a ``confirm_after_wave`` checkpoint is not offered
to joined runners (they stop there, resumable); a pool found unable to do the action is
stopped by each runner on its first answer from it.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import structlog

from fleet_reimage.engine.runstate import JobKind, Phase, PoolRun
from fleet_reimage.journal.model import (
    Claim,
    JournalError,
    LeaseLost,
    RunnerInfo,
    SharedRuns,
    TargetState,
)
from fleet_reimage.rollout.claimed import ClaimedPoolRollout

if TYPE_CHECKING:
    from fleet_reimage.engine.executor import Executor

log = structlog.get_logger("fleet_reimage.shared")

DEFAULT_LEASE = 15.0  # seconds a runner's claims survive without a heartbeat
CLAIM_INTERVAL = 0.2  # seconds between claim rounds when nothing wakes the claimer
CLAIM_DEPTH = 4  # claim up to this many times the account's concurrency ahead, per pool


def new_runner() -> RunnerInfo:
    host = socket.gethostname()
    return RunnerInfo(f"{host}:{os.getpid()}:{secrets.token_hex(3)}", host, os.getpid())


@dataclass(frozen=True, slots=True)
class SharedSettings:
    runner: RunnerInfo
    exclusive: bool  # False with --join
    lease: float = DEFAULT_LEASE


class SharedRunCoordinator:
    """The tasks a runner of a shared run needs beside the executor's own."""

    def __init__(
        self,
        executor: Executor,
        store: SharedRuns,
        settings: SharedSettings,
        *,
        failure_budget: int,
        forgiven_failures: int,
        checkpoint_passed: bool = False,
    ) -> None:
        self.executor = executor
        self.store = store
        self.settings = settings
        self.failure_budget = failure_budget
        self.forgiven = forgiven_failures
        # confirm_after_wave: joined runners are not asked; the run stops there (resumable),
        # and a resume is the operator's confirmation.
        self.checkpoint_passed = checkpoint_passed
        self.live_runners = 1
        self._wake = anyio.Event()

    @property
    def runner_id(self) -> str:
        return self.settings.runner.runner_id

    async def start(self) -> None:
        runners = await self.store.register_runner(
            self.executor.run_id,
            self.settings.runner,
            lease=self.settings.lease,
            exclusive=self.settings.exclusive,
        )
        self._share_accounts(len(runners))

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._heartbeat)
            group.start_soon(self._claimer)

    def wake(self) -> None:
        self._wake.set()

    # --- heartbeat: keep the registration and leases alive, share account budgets ---

    async def _heartbeat(self) -> None:
        interval = self.settings.lease / 3
        while True:
            await anyio.sleep(interval)
            try:
                runners = await self.store.heartbeat(
                    self.executor.run_id, self.runner_id, lease=self.settings.lease
                )
            except LeaseLost as error:
                self.executor.request_stop("lease", f"this runner lost its lease: {error}")
                return
            except JournalError as error:
                log.warning("heartbeat failed", error=str(error))
                continue
            self._share_accounts(len(runners))
            await self._share_pauses()

    def _share_accounts(self, runners: int) -> None:
        """Each live runner gets an equal share of every account's concurrency."""
        self.live_runners = max(1, runners)
        per_account = self.executor.plan.execution.per_account_concurrency
        for account in self.executor.accounts:
            account.throttle.set_max_concurrency(max(1, per_account // self.live_runners))

    async def _share_pauses(self) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        for account in self.executor.accounts:
            local = account.throttle.paused_until
            local_wall = now_wall + (local - now_mono) if local > now_mono else 0.0
            shared = await self.store.share_pause(self.executor.run_id, account.name, local_wall)
            if shared > now_wall:
                account.throttle.pause_until(now_mono + (shared - now_wall))

    # --- claims ---

    async def _claimer(self) -> None:
        while True:
            got = 0
            for pool in self.executor.pools:
                if not pool.rollout.done:
                    got += await self._claim(pool)
            if got:  # work is flowing: claim again as soon as the queues run low
                await anyio.lowlevel.checkpoint()
                if not self._wake.is_set():
                    with anyio.move_on_after(CLAIM_INTERVAL):
                        await self._wake.wait()
            else:
                with anyio.move_on_after(CLAIM_INTERVAL):
                    await self._wake.wait()
            self._wake = anyio.Event()

    def running_low(self, pool: PoolRun) -> None:
        """The executor found a pool's claimed queue short: claim more now."""
        rollout = pool.rollout
        if (
            isinstance(rollout, ClaimedPoolRollout)
            and not rollout.finished
            and rollout.queued <= pool.account.throttle.concurrency
        ):
            self._wake.set()

    async def _claim(self, pool: PoolRun) -> int:
        """Claim what the pool's queue needs; returns how many targets were claimed."""
        rollout = pool.rollout
        assert isinstance(rollout, ClaimedPoolRollout)
        # Enough for a few round trips of the account's window, so claims are not the limit.
        want = pool.account.throttle.concurrency * CLAIM_DEPTH - rollout.queued
        if want <= 0 or rollout.stopped is not None:
            return 0
        execution_plan = self.executor.plan
        try:
            claim = await self.store.claim(
                self.executor.run_id,
                self.runner_id,
                pool.account.name,
                pool.pool_id,
                limit=want,
                max_unavailable=rollout.max_unavailable,
                baseline=rollout.baseline,
                pause=execution_plan.rollout.pause_between_waves,
                failure_budget=self.failure_budget,
                forgiven_failures=self.forgiven,
                lease=self.settings.lease,
                now=time.time(),
            )
        except JournalError as error:
            log.warning("claim failed", pool=pool.pool_id, error=str(error))
            return 0
        self._apply_claim(pool, rollout, claim)
        return len(claim.targets) + len(claim.takeovers)

    def _apply_claim(self, pool: PoolRun, rollout: ClaimedPoolRollout, claim: Claim) -> None:
        executor = self.executor
        rollout.blocked, rollout.finished = claim.blocked, claim.finished
        if claim.retry_at is not None:
            rollout.next_wave_at = time.monotonic() + max(0.0, claim.retry_at - time.time())
        if claim.wave is not None and claim.wave != rollout.wave:
            rollout.wave = claim.wave
        if self._at_checkpoint(claim):
            self.executor.start_background(
                self.store.release,
                executor.run_id,
                self.runner_id,
                [record.target_id for record in claim.targets],
            )
            claim = replace(claim, targets=[])
        fresh = [self._adopt(pool, record) for record in claim.targets]
        rollout.add_claims([t for t in fresh if t is not None])
        for record in claim.takeovers:
            self._take_over(pool, rollout, record)
        if claim.blocked == "budget" and executor.stop_kind is None:
            executor.request_stop(
                "budget",
                "failure budget exceeded across the shared run; "
                "resume with --accept-failures or --failure-budget N",
            )
        if claim.targets or claim.takeovers:
            executor.wake()

    def _at_checkpoint(self, claim: Claim) -> bool:
        """The claim reaches past the plan's checkpoint, which nobody confirmed yet."""
        checkpoint = self.executor.plan.rollout.confirm_after_wave
        if (
            checkpoint is None
            or self.checkpoint_passed
            or claim.wave is None
            or claim.wave < checkpoint
        ):
            return False
        if self.executor.stop_kind is None:
            self.executor.request_stop(
                "checkpoint",
                f"paused after wave {checkpoint} for the operator (a shared run "
                "does not ask); resume to continue",
            )
        return True

    def _adopt(self, pool: PoolRun, record: Any) -> int | None:
        """Our in-memory copy of a claimed target, refreshed from the journal's record."""
        target = self.executor.targets.get(record.target_id)
        if target is None or target.phase is not Phase.QUEUED:
            return None
        self.executor.refresh_record(target, record)
        return int(record.target_id)

    def _take_over(self, pool: PoolRun, rollout: ClaimedPoolRollout, record: Any) -> None:
        target = self.executor.targets.get(record.target_id)
        if target is None or target.phase not in (Phase.QUEUED, Phase.DONE):
            return
        self.executor.refresh_record(target, record)
        rollout.add_claims([target.id], active=True)
        log.info("took over", pool=pool.pool_id, node=record.node_id, state=record.state)
        if record.state is TargetState.ACCEPTED:
            target.phase = Phase.HEALTH
            target.health_since = time.monotonic()
            pool.awaiting[target.id] = target
        else:  # in flight when its runner died: read the node before anything else
            target.maybe_applied = True
            self.executor.schedule(pool, target, JobKind.RECONCILE, 0.0)

    def publish_baseline(self, pool: PoolRun, baseline: int) -> None:
        """Share a pool's baseline from a health poll (in the background)."""
        self.executor.start_background(
            self.store.set_pool_baseline,
            self.executor.run_id,
            pool.account.name,
            pool.pool_id,
            baseline,
        )

    # --- leaving ---

    async def leave(self) -> None:
        """Give back unsent claims and every non-terminal target, and unregister."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.leave(self.executor.run_id, self.runner_id)
            except JournalError as error:
                log.warning("leaving the shared run failed; leases will expire", error=str(error))

    async def all_finished(self) -> bool:
        """True when every target of the run is terminal in the journal (all runners)."""
        records = await self.executor.journal.targets(self.executor.run_id)
        return all(record.state.terminal for record in records)
