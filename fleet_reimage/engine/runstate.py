"""The executor's in-memory view of a run: targets, pools, accounts and their counters.

Plain mutable records (slots, ~200 bytes a target, so 100,000 targets stay small). The
policies that decide (``rollout/``) are separate objects that these records hold.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.retry import RetryCounters
from fleet_reimage.journal.model import TargetRecord, TargetState
from fleet_reimage.rollout.claimed import ClaimedPoolRollout
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.rollout.throttle import AdaptiveThrottle

PoolKey = tuple[str, str]  # (account, pool id)


class Phase(Enum):
    QUEUED = "queued"  # not dispatched yet
    REQUEST = "request"  # a reimage/reboot request is in flight
    BACKOFF = "backoff"  # waiting to retry; the last request was not applied
    RECONCILE = "reconcile"  # in doubt: waiting to read the node, or reading it
    DRAINING = "draining"  # scheduling disabled by us, waiting for its tasks (engine/drain.py)
    HEALTH = "health"  # accepted; waiting for the node to come back ready
    DONE = "done"  # terminal


class JobKind(Enum):
    ACTION = "action"  # send the reimage/reboot
    RECONCILE = "reconcile"  # read an in-doubt node
    DRAIN = "drain"  # disable the node's scheduling before its action (engine/drain.py)


@dataclass(slots=True, eq=False)
class RunTarget:
    record: TargetRecord
    pool: PoolRun
    phase: Phase = Phase.QUEUED
    counters: RetryCounters = field(default_factory=RetryCounters)
    busy_since: float | None = None  # monotonic, first 409-busy answer
    maybe_applied: bool = False  # an attempt of ours was in doubt
    last_client_request_id: str | None = None
    health_since: float = 0.0  # monotonic: when the health wait started (or resumed)
    started: float | None = None  # monotonic: first dispatch in this process
    action_option: str | None = None  # the action's option when not the plan's (a drain's)
    healthy_boot: float | None = None  # lastBootTime when judged healthy here (soak: soak.py)

    @property
    def id(self) -> int:
        return self.record.target_id


@dataclass(slots=True)
class AccountRun:
    name: str
    client: BatchClient
    throttle: AdaptiveThrottle  # its requests in flight are counted by ``slots.SendSlots``


@dataclass(slots=True, eq=False)
class PoolRun:
    account: AccountRun
    pool_id: str
    rollout: PoolRollout | ClaimedPoolRollout
    selected: int
    retry_heap: list[tuple[float, int, int, JobKind]] = field(default_factory=list)
    awaiting: dict[int, RunTarget] = field(default_factory=dict)  # accepted, awaiting health
    states: Counter[TargetState] = field(default_factory=Counter)
    retries: int = 0
    throttled: int = 0
    last_poll: float = -math.inf
    polling: bool = False
    blocked_since: float | None = None  # monotonic: when max_unavailable started to block
    started_wave: int = -1  # the last wave index announced as started

    @property
    def key(self) -> PoolKey:
        return (self.account.name, self.pool_id)

    def schedule(self, at: float, seq: int, target_id: int, kind: JobKind) -> None:
        heapq.heappush(self.retry_heap, (at, seq, target_id, kind))

    def due_job(self, now: float) -> tuple[int, JobKind] | None:
        if self.retry_heap and self.retry_heap[0][0] <= now:
            _, _, target_id, kind = heapq.heappop(self.retry_heap)
            return target_id, kind
        return None

    def next_due(self) -> float | None:
        return self.retry_heap[0][0] if self.retry_heap else None


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    account: str
    pool_id: str
    selected: int
    pending: int
    in_flight: int  # requests in flight, backoff or reconcile
    awaiting_health: int
    healthy: int
    done_unverified: int
    failed: int
    gone: int
    skipped: int
    wave: int  # 1-based current wave
    waves: int
    retries: int
    throttled: int
    unavailable: int
    max_unavailable: int
    stopped: str | None

    @property
    def finished(self) -> int:
        return self.healthy + self.done_unverified + self.failed + self.gone + self.skipped


def snapshot_pool(pool: PoolRun) -> PoolSnapshot:
    states = pool.states
    rollout = pool.rollout
    return PoolSnapshot(
        account=pool.account.name,
        pool_id=pool.pool_id,
        selected=pool.selected,
        pending=states[TargetState.PENDING],
        in_flight=states[TargetState.IN_FLIGHT],
        awaiting_health=states[TargetState.ACCEPTED],
        healthy=states[TargetState.HEALTHY],
        done_unverified=states[TargetState.DONE_UNVERIFIED],
        failed=states[TargetState.FAILED],
        gone=states[TargetState.GONE],
        skipped=states[TargetState.SKIPPED],
        wave=min(rollout.wave + 1, rollout.wave_count),
        waves=rollout.wave_count,
        retries=pool.retries,
        throttled=pool.throttled,
        unavailable=rollout.unavailable,
        max_unavailable=rollout.max_unavailable,
        stopped=rollout.stopped,
    )
