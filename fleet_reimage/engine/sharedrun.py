"""Several runners sharing one run through a PostgreSQL journal (``--join``).

Each runner claims work from the journal instead of deciding alone: ``ClaimedPoolRollout``
stands in for a pool's local bookkeeping and hands out only targets this runner has claimed;
the claim itself (in the journal, one transaction per pool with the pool's row locked) asks
the rollout policy (``rollout/policy.py``, the one a run alone asks) with the state of the
pool across all runners, so waves, pauses, checkpoints, ``max_unavailable`` and the failure
budget hold for the run as a whole. ``SharedRunCoordinator`` keeps the runner's registration
alive (heartbeat), claims more work as room frees up, announces what the policy decided (a
wave completed, the budget exceeded), takes over the in-flight and accepted nodes of runners
whose lease expired, splits each account's concurrency between the live runners and shares
Retry-After pauses, and gives everything back when the runner leaves.

One clock: every lease, fence and pause is measured by the database's clock, never this
runner's (what crosses the wire is a duration). A runner whose clock differs from the
database's by more than ``MAX_CLOCK_SKEW`` is warned when it joins: its records' times (sent,
finished) would not line up with the other runners'.

Limits of the shared model, on purpose: a ``confirm_after_wave`` checkpoint is not asked in a
shared run (every runner stops there, resumable, and a resume confirms it); a pool found
unable to do the action is stopped by each runner on its first answer from it.

Gates and soaks: each claim's policy is ``policy.decide_shared`` with this runner's
``NextWaveWaits``; the gates are asked in turns across runners (``gates.py``), and the runner
whose claim sees a wave complete watches its soak (``soak.py``) while the soak's end, kept
as the pool's pause, holds the others' claims.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import structlog

from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import AccountRun, JobKind, Phase, PoolRun, RunTarget
from fleet_reimage.journal.model import JournalError, LeaseLost, TargetRecord, TargetState
from fleet_reimage.journal.shared import Claim, RunnerInfo, SharedRuns
from fleet_reimage.rollout.claimed import ClaimedPoolRollout
from fleet_reimage.rollout.policy import Decision, WaveCompleted, decide_shared

log = structlog.get_logger("fleet_reimage.shared")

DEFAULT_LEASE = 15.0  # seconds a runner's claims survive without a heartbeat
CLAIM_INTERVAL = 0.2  # seconds between claim rounds when nothing wakes the claimer
CLAIM_DEPTH = 4  # claim up to this many times the account's concurrency ahead, per pool
MAX_CLOCK_SKEW = 1.0  # seconds between this runner's clock and the database's: warn beyond


def new_runner() -> RunnerInfo:
    host = socket.gethostname()
    return RunnerInfo(f"{host}:{os.getpid()}:{secrets.token_hex(3)}", host, os.getpid())


@dataclass(frozen=True, slots=True)
class SharedSettings:
    runner: RunnerInfo
    exclusive: bool  # False with --join
    lease: float = DEFAULT_LEASE


async def clock_skew(store: SharedRuns, clock: Callable[[], float] = time.time) -> float:
    """How far the database's clock is ahead of ``clock`` (seconds; negative: behind), and
    warn when that is more than ``MAX_CLOCK_SKEW`` (beyond the uncertainty of the read)."""
    before = clock()
    server = await store.server_time()
    after = clock()
    skew = server - (before + after) / 2
    if abs(skew) > MAX_CLOCK_SKEW + (after - before) / 2:
        log.warning(
            "this runner's clock differs from the database's",
            skew_s=round(skew, 3),
            advice="leases and pauses follow the database's clock, but the times this runner "
            "records will not line up with the other runners'; synchronise its clock (NTP)",
        )
    return skew


class SharedRunCoordinator:
    """The tasks a runner of a shared run needs beside the executor's own."""

    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        store: SharedRuns,
        settings: SharedSettings,
        *,
        accounts: Sequence[AccountRun],
        per_account_concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.control = control
        self.store = store
        self.settings = settings
        self.accounts = list(accounts)
        self.per_account_concurrency = per_account_concurrency
        self.clock = clock  # this runner's wall clock: only compared with the database's
        self.live_runners = 1
        self.event_mark = 0  # the run's latest event when this runner joined (gates.py)
        # told of each target taken over from a runner that died (drain.py: its node may
        # have been drained by that runner)
        self.on_take_over: Callable[[RunTarget], None] | None = None
        self._wake = anyio.Event()

    @property
    def runner_id(self) -> str:
        return self.settings.runner.runner_id

    async def start(self) -> None:
        runners = await self.store.register_runner(
            self.ledger.run_id,
            self.settings.runner,
            lease=self.settings.lease,
            exclusive=self.settings.exclusive,
        )
        self.event_mark = await self.store.event_mark(self.ledger.run_id)
        try:
            await clock_skew(self.store, self.clock)
        except JournalError as error:  # only a warning was at stake
            log.warning(
                "could not compare this runner's clock with the database's", error=str(error)
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
                    self.ledger.run_id, self.runner_id, lease=self.settings.lease
                )
            except LeaseLost as error:
                self.control.request_stop("lease", f"this runner lost its lease: {error}")
                return
            except JournalError as error:
                log.warning("heartbeat failed", error=str(error))
                continue
            self._share_accounts(len(runners))
            await self._share_pauses()

    def _share_accounts(self, runners: int) -> None:
        """Each live runner gets an equal share of every account's concurrency."""
        self.live_runners = max(1, runners)
        share = max(1, self.per_account_concurrency // self.live_runners)
        for account in self.accounts:
            account.throttle.set_max_concurrency(share)

    async def _share_pauses(self) -> None:
        """Every runner waits out the longest Retry-After pause any of them was told."""
        for account in self.accounts:
            mine = max(0.0, account.throttle.paused_until - time.monotonic())
            shared = await self.store.share_pause(self.ledger.run_id, account.name, mine)
            if shared > 0:
                account.throttle.pause_until(time.monotonic() + shared)

    # --- claims ---

    async def _claimer(self) -> None:
        while True:
            got = 0
            for pool in self.ledger.pools:
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
        try:
            claim = await self.store.claim(
                self.ledger.run_id,
                self.runner_id,
                pool.account.name,
                pool.pool_id,
                limit=want,
                baseline=rollout.baseline,
                lease=self.settings.lease,
                policy=functools.partial(decide_shared, rollout.rules, rollout.waits),
            )
        except JournalError as error:
            log.warning("claim failed", pool=pool.pool_id, error=str(error))
            return 0
        self._apply_claim(pool, rollout, claim)
        return len(claim.targets) + len(claim.takeovers)

    def _apply_claim(
        self, pool: PoolRun, rollout: ClaimedPoolRollout, claim: Claim[Decision]
    ) -> None:
        """Learn what the policy decided, adopt what the claim gave, announce its events."""
        decision = claim.decision
        # The claim's times are the database's: as durations from its ``now``, they are this
        # runner's monotonic instants.
        offset = time.monotonic() - claim.state.now
        opens_at = decision.progress.opens_at + offset
        rollout.learn(
            decision,
            taken=len(claim.targets),
            more_pending=claim.more_pending,
            next_wave_at=opens_at if math.isfinite(opens_at) else -math.inf,
            failed_down=claim.state.failed_down,
        )
        if decision.completed is not None:
            done = decision.completed
            next_at = None if done.next_wave_at is None else done.next_wave_at + offset
            if rollout.waits is not None:  # this runner saw it complete: it watches the soak
                rollout.waits.wave_completed(done.wave, done.at + offset, last=next_at is None)
            self.ledger.wave_completed(
                pool, WaveCompleted(done.wave, done.at + offset, next_at, done.held)
            )
        fresh = [self._adopt(record) for record in claim.targets]
        rollout.add_claims([t for t in fresh if t is not None])
        for record in claim.takeovers:
            self._take_over(pool, rollout, record)
        self.ledger.failures_seen(claim.state.failures)
        self.control.wake()

    def _adopt(self, record: TargetRecord) -> int | None:
        """Our in-memory copy of a claimed target, refreshed from the journal's record."""
        target = self.ledger.targets.get(record.target_id)
        if target is None or target.phase is not Phase.QUEUED:
            return None
        self.ledger.refresh_record(target, record)
        return record.target_id

    def _take_over(self, pool: PoolRun, rollout: ClaimedPoolRollout, record: TargetRecord) -> None:
        target = self.ledger.targets.get(record.target_id)
        if target is None or target.phase not in (Phase.QUEUED, Phase.DONE):
            return
        self.ledger.refresh_record(target, record)
        if self.on_take_over is not None:
            self.on_take_over(target)
        rollout.add_claims([target.id], active=True)
        log.info("took over", pool=pool.pool_id, node=record.node_id, state=record.state)
        if record.state is TargetState.ACCEPTED:
            self.ledger.awaiting_health(pool, target, time.monotonic())
        else:  # in flight when its runner died: read the node before anything else
            target.maybe_applied = True
            self.ledger.schedule(pool, target, JobKind.RECONCILE, 0.0)

    async def publish_baseline(
        self, pool: PoolRun, baseline: int, down_targets: Sequence[str]
    ) -> None:
        """Share a pool's baseline and its targets seen down, from a health poll. Awaited
        before the poll judges any target: a target judged failed after the action is then
        already among the down ones when a claim counts it (no claim sees a gap)."""
        try:
            await self.store.set_pool_baseline(
                self.ledger.run_id, pool.account.name, pool.pool_id, baseline, down_targets
            )
        except JournalError as error:  # the next poll tries again
            log.warning("sharing the pool's baseline failed", pool=pool.pool_id, error=str(error))

    # --- leaving ---

    async def leave(self) -> None:
        """Give back unsent claims and every non-terminal target, and unregister."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.leave(self.ledger.run_id, self.runner_id)
            except JournalError as error:
                log.warning("leaving the shared run failed; leases will expire", error=str(error))
