"""The run's ledger: its in-memory state, and every change made to it once the journal has it.

A node's work (``node_work.py``), the health gate (``health.py``) and a shared run's
coordinator (``sharedrun.py``) each decide something about a target; the change itself is
made here, always in the same order: the journal write came first (the caller awaited it),
then the in-memory state, the pool's rollout policy, the failure budget and the events
(``--events`` and the journal's event log). The policy's events (a wave started or
completed) and the budget's (exceeded) are announced here, whichever path found them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.events import RunObserver
from fleet_reimage.engine.runstate import JobKind, Phase, PoolRun, RunTarget
from fleet_reimage.journal.model import (
    Journal,
    JournalError,
    RunEvent,
    TargetChange,
    TargetRecord,
    TargetState,
)
from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.policy import WaveCompleted
from fleet_reimage.rollout.pool import PoolRollout

log = structlog.get_logger("fleet_reimage.run")


class RunLedger:
    def __init__(
        self,
        *,
        run_id: str,
        journal: Journal,
        observer: RunObserver,
        control: RunControl,
        pools: Sequence[PoolRun],
        targets: Sequence[RunTarget],
        budget: FailureBudget,
        health_wait: bool,
        shared: bool,
    ) -> None:
        self.run_id = run_id
        self.journal = journal
        self.observer = observer
        self.control = control
        self.pools = list(pools)
        self.targets = {t.id: t for t in targets}
        self.budget = budget
        self.health_wait = health_wait
        self.shared = shared  # other runners share the run (and its journal)
        # Told each wave the policy saw complete (the soak starts there: ``soak.py``).
        self.on_wave_completed: Callable[[PoolRun, WaveCompleted], None] | None = None
        self._seq = 0
        self._by_node: dict[tuple[str, str], dict[str, RunTarget]] = {}

    # --- a target's state ---

    @property
    def accepted_state(self) -> TargetState:
        """The state an accepted request leaves its target in."""
        return TargetState.ACCEPTED if self.health_wait else TargetState.DONE_UNVERIFIED

    def set_state(self, target: RunTarget, state: TargetState) -> None:
        pool = target.pool
        pool.states[target.record.state] -= 1
        pool.states[state] += 1
        target.record.state = state

    def refresh_record(self, target: RunTarget, record: TargetRecord) -> None:
        """Adopt the journal's view of a target (another runner may have changed it)."""
        self.set_state(target, record.state)
        mine = target.record
        mine.attempts, mine.reason = record.attempts, record.reason
        mine.first_sent_at, mine.last_sent_at = record.first_sent_at, record.last_sent_at
        mine.accepted_at = record.accepted_at

    def requeue(self, target: RunTarget) -> None:
        """The target was not sent (or not applied) and must start over later."""
        self.set_state(target, TargetState.PENDING)
        target.phase = Phase.QUEUED
        target.pool.rollout.release_to_queue(target.id)

    def schedule(self, pool: PoolRun, target: RunTarget, kind: JobKind, delay: float) -> None:
        """A job for the target ``delay`` seconds from now (a retry, or a read of the node)."""
        self._seq += 1
        if kind is JobKind.RECONCILE:
            target.phase = Phase.RECONCILE
        pool.schedule(time.monotonic() + delay, self._seq, target.id, kind)

    def awaiting_health(self, pool: PoolRun, target: RunTarget, now: float) -> None:
        """Accepted, and the plan waits for the node to come back."""
        target.phase = Phase.HEALTH
        target.health_since = now
        if not pool.awaiting:
            pool.last_poll = max(pool.last_poll, now)  # first poll one interval from now
        pool.awaiting[target.id] = target

    def settle(self, target: RunTarget, state: TargetState, reason: str | None) -> None:
        """A target reached a terminal state (its journal record is already written)."""
        pool = target.pool
        self.set_state(target, state)
        target.record.reason = reason
        target.phase = Phase.DONE
        pool.awaiting.pop(target.id, None)
        duration = time.monotonic() - target.started if target.started is not None else None
        fields = self.node_fields(
            target,
            outcome=state.value,
            reason=reason,
            attempts=target.record.attempts,
            duration_s=None if duration is None else round(duration, 3),
        )
        log.info("node finished", **fields)
        self.observer.event(f"node_{state.value}", fields)
        # Failed after the action: it holds its room from this very step (the plan's rule).
        failed_after = failed_after_action(target.record)
        completed = pool.rollout.settle(
            target.id, time.monotonic(), failed_after_action=failed_after
        )
        if completed is not None:
            self.wave_completed(pool, completed)
        if state is TargetState.FAILED and self.budget.record_failure():
            self._budget_exceeded()

    def failed_later(self, target: RunTarget, reason: str) -> None:
        """A settled target was found failed after all (it degraded during its soak; its
        journal record is already written): it counts against the failure budget."""
        self.set_state(target, TargetState.FAILED)
        target.record.reason = reason
        fields = self.node_fields(
            target, outcome="failed", reason=reason, attempts=target.record.attempts
        )
        log.warning("node failed", **fields)
        self.observer.event("node_failed", fields)
        if isinstance(target.pool.rollout, PoolRollout):
            target.pool.rollout.failed_later(target.id)
        if self.budget.record_failure():
            self._budget_exceeded()

    def stop_pool(self, pool: PoolRun, reason: str, *, resumable: bool = False) -> None:
        """No further calls to this pool. Its untouched targets become skipped, or with
        ``resumable`` stay pending (the run then ends stopped, and ``resume`` continues them).
        """
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
        data = {"reason": reason, "resumable": resumable}
        if resumable:
            data["pending"] = len(never) + len(queued)
        self.pool_event("pool_stopped", pool, data)
        if resumable:  # retries waiting their turn were not applied: pending again
            for target_id in queued:
                target = self.targets[target_id]
                self.requeue(target)
                self.control.start_background(self.change, target, TargetState.PENDING, None)
            return
        for target_id in [*never, *queued]:
            target = self.targets[target_id]
            self.settle(target, TargetState.SKIPPED, reason)
            self.control.start_background(self.change, target, TargetState.SKIPPED, reason)

    def pool_event(self, kind: str, pool: PoolRun, data: Mapping[str, object]) -> None:
        """An event about one pool, for ``--events`` and the journal's log alike."""
        account, pool_id = pool.account.name, pool.pool_id
        self.observer.event(kind, {"account": account, "pool": pool_id, **data})
        self.record_event(kind, account=account, pool=pool_id, data=data)

    async def pool_event_written(
        self, kind: str, pool: PoolRun, data: Mapping[str, object]
    ) -> None:
        """``pool_event``, written to the journal before it returns: for the run's end, once
        its task group (where ``record_event`` writes) is gone."""
        account, pool_id = pool.account.name, pool.pool_id
        self.observer.event(kind, {"account": account, "pool": pool_id, **data})
        await self._write_event(RunEvent(self.run_id, time.time(), kind, account, pool_id, data))

    def unavailability(self, pool: PoolRun, down: set[str]) -> tuple[int, list[RunTarget]]:
        """From the node ids a health poll saw not ready: how many are down for reasons of
        their own (not a target in progress, nor one that failed after the action), and
        which of the pool's targets are down."""
        targets = self._targets_by_node(pool)
        busy = self.active_node_ids(pool)
        down_targets = [targets[node] for node in down if node in targets]
        failed = {t.record.node_id for t in down_targets if failed_after_action(t.record)}
        return len(down - busy - failed), down_targets

    def _targets_by_node(self, pool: PoolRun) -> dict[str, RunTarget]:
        by_node = self._by_node.get(pool.key)
        if by_node is None:
            by_node = self._by_node[pool.key] = {
                t.record.node_id: t for t in self.targets.values() if t.pool is pool
            }
        return by_node

    def active_node_ids(self, pool: PoolRun) -> set[str]:
        """Node ids of the pool's targets between dispatch and a terminal state.

        In a shared run other runners' targets may be reimaging too, and only the journal
        knows which: every target not known to be finished counts as someone's.
        """
        if self.shared:
            return {
                t.record.node_id
                for t in self.targets.values()
                if t.pool is pool and t.phase is not Phase.DONE
            }
        return {self.targets[t].record.node_id for t in pool.rollout.active_targets()}

    # --- the policies' events ---

    def wave_started(self, pool: PoolRun, now: float) -> None:
        """A target of the pool's current wave started at ``now`` (monotonic): announce the
        wave, once per runner."""
        rollout = pool.rollout
        if rollout.wave == pool.started_wave:
            return
        pool.started_wave = rollout.wave
        data = {"wave": rollout.wave + 1, "of": rollout.wave_count}
        self.observer.event(
            "wave_started", {"account": pool.account.name, "pool": pool.pool_id, **data}
        )
        self.record_event(
            "wave_started", account=pool.account.name, pool=pool.pool_id, data=data, at=_wall(now)
        )

    def wave_completed(self, pool: PoolRun, wave: WaveCompleted) -> None:
        """The policy saw a wave of the pool complete (times on the monotonic clock)."""
        data = {"wave": wave.wave + 1, "held": wave.held}
        self.observer.event(
            "wave_completed", {"account": pool.account.name, "pool": pool.pool_id, **data}
        )
        self.record_event(
            "wave_completed",
            account=pool.account.name,
            pool=pool.pool_id,
            data={**data, "next_wave_at": _wall(wave.next_wave_at)},
            at=_wall(wave.at),  # when the policy saw it complete: its pause counts from there
        )
        if self.on_wave_completed is not None:
            self.on_wave_completed(pool, wave)

    def failures_seen(self, failures: int) -> None:
        """The run has at least ``failures`` (a shared run's claim counts every runner's)."""
        if self.budget.observe(failures):
            self._budget_exceeded()

    def _budget_exceeded(self) -> None:
        budget = self.budget
        fields = {"failed": budget.counted, "budget": budget.limit}
        self.observer.event("budget_exceeded", fields)
        self.record_event("budget_exceeded", data=fields)
        self.control.request_stop("budget", f"failure budget exceeded ({budget.describe()})")

    # --- the journal and the events stream ---

    async def change(self, target: RunTarget, state: TargetState, reason: str | None) -> None:
        await self.journal.target_changed(
            TargetChange(self.run_id, target.id, state, time.time(), reason)
        )

    def record_event(
        self,
        kind: str,
        *,
        account: str | None = None,
        pool: str | None = None,
        data: Mapping[str, object],
        at: float | None = None,
    ) -> None:
        """Add an event to the journal's log, in the background (``at``: when it happened,
        wall clock; now by default)."""
        event = RunEvent(self.run_id, time.time() if at is None else at, kind, account, pool, data)
        self.control.start_background(self._write_event, event)

    async def _write_event(self, event: RunEvent) -> None:
        """Events are for people: one that cannot be written must not stop anything (if the
        journal itself is failing, the run stops and says so once)."""
        with contextlib.suppress(JournalError):
            await self.journal.record_event(event)

    def node_fields(self, target: RunTarget, **extra: object) -> dict[str, object]:
        return {
            "run": self.run_id,
            "account": target.pool.account.name,
            "pool": target.pool.pool_id,
            "node": target.record.node_id,
            "client_request_id": target.last_client_request_id,
            **extra,
        }


def failed_after_action(record: TargetRecord) -> bool:
    """The target failed after its action took effect (back broken, or not back in time)."""
    return record.state is TargetState.FAILED and record.accepted_at is not None


def _wall(monotonic_time: float | None) -> float | None:
    """A monotonic instant as wall-clock epoch seconds (for records read by other processes)."""
    if monotonic_time is None or not math.isfinite(monotonic_time):
        return None
    return time.time() + (monotonic_time - time.monotonic())
