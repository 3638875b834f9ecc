"""A pool's policy in a shared run: the journal's claims decide, this hands them out (pure).

In a run shared by several runners (``--join``), waves, pauses, ``max_unavailable`` and the
failure budget are decided by claims in the journal, across all runners at once. This object
has the same questions and answers as ``PoolRollout`` for the executor, but only hands out
targets this runner has claimed, and learns the pool's wave and state from each claim.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from .pool import WaveCompleted


class ClaimedPoolRollout:
    """The pool policy of a shared run: the journal's claims decide, this hands them out."""

    def __init__(self, wave_count: int, *, max_unavailable: int, baseline: int) -> None:
        self.max_unavailable = max_unavailable
        self.baseline = baseline
        self.wave_count = max(1, wave_count)
        self.wave = 0
        self.next_wave_at = -math.inf
        self.held = False
        self.stopped: str | None = None
        self.finished = False  # every target of the pool is terminal (per the last claim)
        self.blocked: str | None = None
        self._queue: deque[int] = deque()
        self._active: set[int] = set()

    @property
    def done(self) -> bool:
        return self.stopped is not None or (self.finished and not self._queue and not self._active)

    @property
    def unavailable(self) -> int:
        return self.baseline + len(self._active)

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
        return None

    def take_next(self, now: float) -> int | None:
        if self.stopped is not None or not self._queue:
            return None
        target = self._queue.popleft()
        self._active.add(target)
        return target

    def add_claims(self, target_ids: Sequence[int], *, active: bool = False) -> None:
        if active:
            self._active.update(target_ids)
        else:
            self._queue.extend(t for t in target_ids if t not in self._active)

    def settle(self, target: int, now: float) -> WaveCompleted | None:
        self._active.discard(target)
        return None

    def release_to_queue(self, target: int) -> None:
        if target in self._active:
            self._active.discard(target)
            self._queue.appendleft(target)

    def drop(self, target: int) -> None:
        """A target this runner no longer owns (its lease was lost)."""
        self._active.discard(target)

    def unsent(self) -> list[int]:
        return list(self._queue)

    def set_baseline(self, unavailable_not_ours: int) -> None:
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
