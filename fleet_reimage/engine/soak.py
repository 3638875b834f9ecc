"""The soak (``rollout.soak``): a completed wave's nodes must stay healthy before the next.

When the policy sees a pool's wave complete (not its last), its ``NextWaveWaits`` starts the
soak (``rollout/nextwave.py``) and the ledger tells ``SoakWatch.started``, which remembers the
wave's healthy nodes and announces ``soak_started``. The health monitor keeps polling the pool
while it soaks, with the same per-pool list call as the health gate (its filter reaching back
to the soak's start, so a node that rebooted again is in the answer); ``judge`` reads each
answer: a soaking node that is no longer ready (``starttaskfailed``, ``unusable``, ...) or
whose ``lastBootTime`` changed is failed, "degraded during soak", and counts against the
failure budget. The first poll made once the soak's time is up ends it (``soak_ended``) and
lets the next wave start. Soaking nodes are settled: they count as waiting, not unavailable.

In a shared run the runner whose claim saw the wave complete watches its soak (the wave's
healthy targets read from the journal, whoever did them); the other runners' claims wait
for the soak's end as the pool's pause (``policy.decide_shared``).

A run stopped during a soak soaks that wave again, from the start, when it is resumed
(``restart``, from the journal's events).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import structlog

from fleet_reimage.batch.models import NodeInfo
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.gates import waits_of
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import Phase, PoolKey, PoolRun, RunTarget
from fleet_reimage.journal.model import RunEvent, TargetChange, TargetState
from fleet_reimage.rollout.nextwave import soak_verdict
from fleet_reimage.rollout.policy import WaveCompleted
from fleet_reimage.rollout.pool import PoolRollout

log = structlog.get_logger("fleet_reimage.soak")


@dataclass(slots=True)
class _Soak:
    wave: int  # 0-based
    since: float  # wall clock: when it started
    nodes: list[RunTarget]  # the wave's healthy targets still soaking
    failed: int = 0


class SoakWatch:
    def __init__(
        self, ledger: RunLedger, control: RunControl, *, seconds: float, ready: frozenset[str]
    ) -> None:
        self.ledger = ledger
        self.control = control
        self.seconds = seconds
        self.ready = ready
        self._soaks: dict[PoolKey, _Soak] = {}

    def soaking(self, pool: PoolRun) -> bool:
        return pool.key in self._soaks

    def since(self, pool: PoolRun) -> float | None:
        """When the pool's soak started (wall clock), None when it is not soaking."""
        soak = self._soaks.get(pool.key)
        return None if soak is None else soak.since

    def started(self, pool: PoolRun, completed: WaveCompleted) -> None:
        """The policy saw a wave complete: if it started a soak, watch the wave's nodes."""
        waits = waits_of(pool)
        if waits is None or waits.soaking != completed.wave:
            return
        rollout = pool.rollout
        ids = rollout.wave_targets(completed.wave) if isinstance(rollout, PoolRollout) else []
        nodes = [
            self.ledger.targets[t]
            for t in ids
            if self.ledger.targets[t].record.state is TargetState.HEALTHY
        ]
        soak = self._soaks[pool.key] = _Soak(completed.wave, time.time(), nodes)
        if not isinstance(rollout, PoolRollout):  # shared: other runners did some of the wave
            self.control.start_background(self._shared_wave, pool, soak)
        pool.last_poll = max(pool.last_poll, time.monotonic())  # first poll one interval on
        self.ledger.pool_event(
            "soak_started",
            pool,
            {"wave": completed.wave + 1, "seconds": self.seconds, "nodes": len(nodes)},
        )

    async def _shared_wave(self, pool: PoolRun, soak: _Soak) -> None:
        """A shared run's soaking wave: its healthy targets as the journal has them, whichever
        runner did them."""
        records = await self.ledger.journal.targets(self.ledger.run_id)
        account, pool_id = pool.key
        for record in records:
            target = self.ledger.targets.get(record.target_id)
            if (
                target is None or record.account != account or record.pool != pool_id
                or record.wave != soak.wave or record.state is not TargetState.HEALTHY
            ):  # fmt: skip
                continue
            if target.record.state is not TargetState.HEALTHY:  # another runner's
                self.ledger.refresh_record(target, record)
                target.phase = Phase.DONE
            if target not in soak.nodes:
                soak.nodes.append(target)

    async def judge(self, pool: PoolRun, nodes: Mapping[str, NodeInfo], polled_at: float) -> None:
        """A poll of a soaking pool (started at ``polled_at``, monotonic) came back."""
        soak = self._soaks.get(pool.key)
        waits = waits_of(pool)
        if soak is None or waits is None:
            return
        degraded: list[tuple[RunTarget, str]] = []
        for target in soak.nodes:
            node = nodes.get(target.record.node_id)
            if node is None:  # not in the answer: still ready, and not booted again
                continue
            reason = soak_verdict(
                node.state, node.last_boot_time, ready_states=self.ready,
                healthy_boot=target.healthy_boot, soak_started=soak.since,
            )  # fmt: skip
            if reason is not None:
                degraded.append((target, reason))
        await self._fail(soak, degraded)
        if waits.soak_due(polled_at) and not self.control.stopping:
            waits.end_soak()
            del self._soaks[pool.key]
            data = {"wave": soak.wave + 1, "nodes": len(soak.nodes), "failed": soak.failed}
            self.ledger.pool_event("soak_ended", pool, data)
            self.control.wake()

    async def _fail(self, soak: _Soak, degraded: Sequence[tuple[RunTarget, str]]) -> None:
        if not degraded:
            return
        run_id = self.ledger.run_id
        async with anyio.create_task_group() as group:
            for target, reason in degraded:
                change = TargetChange(run_id, target.id, TargetState.FAILED, time.time(), reason)
                group.start_soon(self.ledger.journal.target_changed, change)
        for target, reason in degraded:
            soak.nodes.remove(target)
            soak.failed += 1
            self.ledger.failed_later(target, reason)

    def restart(self, events: Sequence[RunEvent]) -> None:
        """A resumed run: soak again each wave whose soak a stopped run left unfinished."""
        open_soaks: dict[PoolKey, int] = {}
        for event in events:
            if event.account is None or event.pool is None:
                continue
            key = (event.account, event.pool)
            if event.kind == "soak_started":
                open_soaks[key] = int(str(event.data.get("wave", 0))) - 1
            elif event.kind in ("soak_ended", "wave_started"):
                open_soaks.pop(key, None)
        for pool in self.ledger.pools:
            wave = open_soaks.get(pool.key)
            waits = waits_of(pool)
            if wave is None or waits is None or pool.rollout.done:
                continue
            waits.wave_completed(wave, time.monotonic(), last=False)
            self.started(pool, WaveCompleted(wave, time.monotonic(), None, False))
