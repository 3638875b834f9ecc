"""A pool's rollout in a shared run: the policy decides in the journal's claims; this hands
out what they gave (pure).

In a run shared by several runners (``--join``), the rollout policy (``policy.decide``) is
asked inside each claim's transaction, with the state of the pool across all runners, and
the journal gives this runner the targets the policy admitted. This object has the same
questions and answers as ``PoolRollout`` for the executor, but only hands out targets this
runner has claimed, and learns the pool's wave, checkpoint, pause and blocking from each
claim's decision (``learn``). Its gates and soak (``waits``) are this runner's: a wave starts
only after the gates passed here (run here, or seen passed by another runner, see
``engine/gates.py``); a soak is watched by the runner whose claim saw the wave complete, and
the others wait for its end through the pool's pause (``policy.decide_shared``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

from fleet_reimage.rollout.nextwave import NextWaveWaits
from fleet_reimage.rollout.policy import Blocked, Decision, RolloutRules, held_by_failures


class ClaimedPoolRollout:
    """The pool policy of a shared run: the journal's claims decide, this hands them out."""

    def __init__(
        self,
        wave_count: int,
        rules: RolloutRules,
        *,
        baseline: int,
        waits: NextWaveWaits | None = None,
    ) -> None:
        """``waits``: the pool's soak and gates as this runner knows them (the gates it saw
        pass, the soak it watches), which its claims' decisions honour."""
        self.rules = rules
        self.waits = waits
        self.baseline = baseline
        self.wave_count = max(1, wave_count)
        self.wave = 0
        self.next_wave_at = -math.inf  # monotonic, from the last claim
        self.held = False
        self.stopped: str | None = None
        self.finished = False  # every target of the pool is terminal (per the last claim)
        self.blocked: Blocked | None = None
        self.failed_down = 0  # the run's failed targets of the pool still down (last claim)
        self._queue: deque[int] = deque()
        self._active: set[int] = set()

    @property
    def max_unavailable(self) -> int:
        return self.rules.max_unavailable

    @property
    def done(self) -> bool:
        return self.stopped is not None or (self.finished and not self._queue and not self._active)

    @property
    def unavailable(self) -> int:
        return self.baseline + len(self._active) + held_by_failures(self.rules, self.failed_down)

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def active_targets(self) -> frozenset[int]:
        return frozenset(self._active)

    def blocked_by_unavailability(self) -> bool:
        return self.blocked == "unavailable"

    def next_start_time(self, now: float) -> float | None:
        return None  # the claimer asks the journal again; nothing to wake the dispatcher for

    def take_next(self, now: float) -> int | None:
        if self.stopped is not None or not self._queue:
            return None
        target = self._queue.popleft()
        self._active.add(target)
        return target

    def learn(
        self,
        decision: Decision,
        *,
        taken: int,
        more_pending: bool,
        next_wave_at: float,
        failed_down: int = 0,
    ) -> None:
        """What the policy decided in the journal's claim that gave ``taken`` targets
        (``next_wave_at``: when the pause ends, on this runner's monotonic clock;
        ``failed_down``: what the claim counted of the pool's failed targets still down)."""
        self.blocked = decision.after_taking(taken, more_pending)
        self.failed_down = failed_down
        self.finished = decision.finished
        self.held = decision.progress.held
        if decision.wave is not None:
            self.wave = decision.wave
        self.next_wave_at = next_wave_at

    def add_claims(self, target_ids: Sequence[int], *, active: bool = False) -> None:
        if active:
            self._active.update(target_ids)
        else:
            self._queue.extend(t for t in target_ids if t not in self._active)

    def settle(self, target: int, now: float, *, failed_after_action: bool = False) -> None:
        """A target of ours settled; a claim sees what that means for the wave (``learn``)."""
        self._active.discard(target)
        if failed_after_action:  # until the next claim counts it
            self.failed_down += 1

    def release_to_queue(self, target: int) -> None:
        if target in self._active:
            self._active.discard(target)
            self._queue.appendleft(target)

    def drop(self, target: int) -> None:
        """A target this runner no longer owns (its lease was lost)."""
        self._active.discard(target)

    def set_baseline(self, unavailable_not_ours: int, down: Iterable[int] | None = None) -> None:
        """A health poll's count (which failed targets are down, the journal's claims count)."""
        self.baseline = max(0, unavailable_not_ours)

    def release_checkpoint(self) -> None:
        self.held = False

    def pending(self) -> list[int]:
        return list(self._queue)

    def stop(self, reason: str) -> list[int]:
        never = list(self._queue)
        self._queue.clear()
        self.stopped = reason
        return never
