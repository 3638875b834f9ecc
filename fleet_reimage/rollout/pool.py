"""One pool's rollout: wave gates and the max_unavailable budget (pure; time is passed in).

Targets are integers (journal target ids) in dispatch order, grouped by wave. The policy
answers one question for the executor, "may the next node of this pool start now, and which
one?", and is told what happened (a node was dispatched, a node settled, the pool was
polled).

Unavailability holds at every instant, not once per wave:

    unavailable = baseline + active
    baseline    = nodes of the pool that are not ready (idle/running) for reasons of their own
                  (unusable, starttaskfailed, offline, ... and nodes we reimaged that came
                  back broken), refreshed by every health poll
    active      = our targets from the moment their first request is sent until they are
                  healthy again or settled otherwise (including retries and backoff)

A new node may start only while ``unavailable < max_unavailable``. A wave opens when every
target of the previous wave has settled and ``pause_between_waves`` has passed since then;
a checkpoint (``confirm_after_wave``) holds the pool after that wave until released.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WaveCompleted:
    wave: int  # 0-based index of the wave that completed
    at: float
    next_wave_at: float | None  # None when it was the last wave
    held: bool  # a checkpoint holds the pool after this wave


class PoolRollout:
    def __init__(
        self,
        waves: Sequence[Sequence[int]],
        *,
        max_unavailable: int,
        baseline_unavailable: int = 0,
        pause_between_waves: float = 0.0,
        checkpoint_after_wave: int | None = None,
        settled: Iterable[int] = (),
        active: Iterable[int] = (),
        next_wave_at: float = -math.inf,
    ) -> None:
        """``settled``/``active`` restore a resumed run (terminal, and dispatched targets)."""
        if max_unavailable < 1:
            raise ValueError("max_unavailable must be at least 1")
        self.max_unavailable = max_unavailable
        self.baseline = baseline_unavailable
        self.pause = pause_between_waves
        self.checkpoint_after_wave = checkpoint_after_wave  # 0-based wave index, or None
        self._waves = [list(w) for w in waves]  # empty waves kept: indices are ladder steps
        self._wave_of = {t: index for index, wave in enumerate(self._waves) for t in wave}
        self._settled = set(settled)
        self._active = set(active) - self._settled
        self._remaining = [sum(1 for t in w if t not in self._settled) for w in self._waves]
        self.wave = 0
        self.next_wave_at = next_wave_at
        self.held = False
        self.stopped: str | None = None
        self._queue: deque[int] = deque()
        self._skip_completed_waves()

    # --- questions ---

    @property
    def unavailable(self) -> int:
        return self.baseline + len(self._active)

    @property
    def active(self) -> int:
        return len(self._active)

    def active_targets(self) -> frozenset[int]:
        return frozenset(self._active)

    @property
    def done(self) -> bool:
        return self.stopped is not None or self.wave >= len(self._waves)

    @property
    def wave_count(self) -> int:
        return len(self._waves)

    def blocked_by_unavailability(self) -> bool:
        return bool(self._queue) and self.unavailable >= self.max_unavailable

    def next_start_time(self, now: float) -> float | None:
        """When this pool may start its next new node, if it is waiting for a wave pause."""
        if self.done or self.held or not self._queue:
            return None
        return self.next_wave_at if now < self.next_wave_at else None

    def take_next(self, now: float) -> int | None:
        """The next target that may start now (and mark it active), or None."""
        if self.done or self.held or now < self.next_wave_at:
            return None
        if not self._queue or self.unavailable >= self.max_unavailable:
            return None
        target = self._queue.popleft()
        self._active.add(target)
        return target

    def pending(self) -> list[int]:
        """Targets not yet dispatched, in all waves from the current one on."""
        rest = list(self._queue)
        for wave in self._waves[self.wave + 1 :]:
            rest.extend(t for t in wave if t not in self._settled and t not in self._active)
        return rest

    # --- what happened ---

    def settle(self, target: int, now: float) -> WaveCompleted | None:
        """A target reached a terminal state; returns the wave completion it caused, if any."""
        if target in self._settled:
            return None
        self._settled.add(target)
        self._active.discard(target)
        index = self._wave_of.get(target)
        if index is not None:
            self._remaining[index] -= 1
        if self.stopped is not None:
            return None
        return self._maybe_complete_wave(now)

    def release_to_queue(self, target: int) -> None:
        """A dispatched target was not applied and must start over later (e.g. on stop)."""
        if target in self._active:
            self._active.discard(target)
            self._queue.appendleft(target)

    def drop(self, target: int) -> None:
        """A dispatched target this runner no longer owns (shared runs only)."""
        self._active.discard(target)

    def set_baseline(self, unavailable_not_ours: int) -> None:
        self.baseline = max(0, unavailable_not_ours)

    def release_checkpoint(self) -> None:
        self.held = False

    def stop(self, reason: str) -> list[int]:
        """Stop the pool; returns the targets that will now never start."""
        never = self.pending()
        self.stopped = reason
        self._queue.clear()
        return never

    # --- internals ---

    def _maybe_complete_wave(self, now: float) -> WaveCompleted | None:
        if self.wave >= len(self._waves) or self._remaining[self.wave] > 0:
            return None
        completed = self.wave
        self.wave += 1
        self._skip_completed_waves()
        # A checkpoint on this step, or on an empty step skipped just now, holds the pool.
        checkpoint = self.checkpoint_after_wave
        held = checkpoint is not None and completed <= checkpoint < self.wave
        last = self.wave >= len(self._waves)
        self.next_wave_at = now + self.pause if not last else self.next_wave_at
        self.held = held and not last
        return WaveCompleted(completed, now, None if last else self.next_wave_at, self.held)

    def _skip_completed_waves(self) -> None:
        while self.wave < len(self._waves) and self._remaining[self.wave] == 0:
            self.wave += 1
        if self.wave < len(self._waves):
            self._queue = deque(
                t
                for t in self._waves[self.wave]
                if t not in self._settled and t not in self._active
            )
