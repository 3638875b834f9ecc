"""One pool of a run alone: its targets' bookkeeping, with the rollout policy asked in memory.

Targets are integers (journal target ids) in dispatch order, grouped by wave. This object
answers the executor's question "may the next node of this pool start now, and which one?"
and is told what happened (a node started, a node settled, the pool was polled). It only
counts; every decision is ``policy.decide``'s, asked with the pool's state on a monotonic
clock, exactly as a shared run's claim asks it with the state it read from the journal:

    open wave   = the lowest wave with a target not settled
    active      = our targets from their first request until they are settled (including
                  retries and backoff)
    baseline    = nodes of the pool that are not ready (idle/running) for reasons of their
                  own (unusable, starttaskfailed, offline, ...), refreshed by every health poll
    failed_down = our targets that failed after the action (back broken, or not back in
                  time) whose nodes the last poll saw still down (before any poll: all of
                  them); counted from the instant a target is judged failed, so it holds its
                  room without a gap if the plan's ``failed_holds_availability`` says so
    failures    = the run's failures (``FailureBudget``)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

from fleet_reimage.journal.shared import PoolProgress, PoolState
from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.nextwave import NextWaveWaits
from fleet_reimage.rollout.policy import (
    NO_BUDGET,
    Decision,
    RolloutRules,
    WaveCompleted,
    advance,
    decide,
    held_by_failures,
    room,
)


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
        budget: FailureBudget | None = None,
        failed_holds_availability: bool = True,
        failed_after_action: Iterable[int] = (),
        down: Iterable[int] | None = None,
        waits: NextWaveWaits | None = None,
    ) -> None:
        """``settled``/``active`` restore a resumed run (terminal, and dispatched targets);
        ``budget``: the run's failure budget, which gates every pool;
        ``failed_after_action``: settled targets that failed after the action, and ``down``
        the targets whose nodes are not ready now (None: not known; see ``failed_down``);
        ``waits``: the pool's soak and gates (``nextwave.py``), when the plan has them."""
        self.rules = RolloutRules(
            max_unavailable,
            pause_between_waves,
            checkpoint_after_wave,  # 0-based ladder step, or None
            NO_BUDGET if budget is None else budget.rule,
            failed_holds_availability,
        )
        self.baseline = baseline_unavailable
        self.waits = waits
        self._failed_after = set(failed_after_action)
        self._down: frozenset[int] | None = None if down is None else frozenset(down)
        self.stopped: str | None = None
        self._budget = budget
        self._waves = [list(w) for w in waves]  # empty waves kept: indices are ladder steps
        self._wave_of = {t: index for index, wave in enumerate(self._waves) for t in wave}
        self._settled = set(settled)
        self._active = set(active) - self._settled
        self._remaining = [sum(1 for t in w if t not in self._settled) for w in self._waves]
        self._current = 0  # the open wave: the lowest with a target not settled
        self._queue: deque[int] = deque()  # its targets not started yet, in dispatch order
        self._find_open_wave()
        first_look = PoolProgress(opens_at=next_wave_at)
        self.progress, _ = advance(self.rules, self._state(first_look, -math.inf))

    # --- questions ---

    @property
    def max_unavailable(self) -> int:
        return self.rules.max_unavailable

    @property
    def failed_down(self) -> int:
        """Our targets that failed after the action and are still down (see the docstring)."""
        if self._down is None:
            return len(self._failed_after)
        return len(self._failed_after & self._down)

    @property
    def unavailable(self) -> int:
        """Nodes that count against max_unavailable now (under the plan's rules)."""
        held = held_by_failures(self.rules, self.failed_down)
        return self.baseline + len(self._active) + held

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        """Targets of the open wave not started yet."""
        return len(self._queue)

    def active_targets(self) -> frozenset[int]:
        return frozenset(self._active)

    @property
    def wave(self) -> int:
        """The open wave (0-based); ``wave_count`` once every target settled."""
        return self._current

    @property
    def wave_count(self) -> int:
        return len(self._waves)

    @property
    def done(self) -> bool:
        return self.stopped is not None or self._current >= len(self._waves)

    @property
    def held(self) -> bool:
        return self.progress.held

    @property
    def next_wave_at(self) -> float:
        return self.progress.opens_at

    def blocked_by_unavailability(self) -> bool:
        free = room(self.rules, self.baseline, len(self._active), self.failed_down)
        return bool(self._queue) and free <= 0

    def next_start_time(self, now: float) -> float | None:
        """When this pool may start its next new node, if it is waiting for a wave pause."""
        if self.done or self.held or not self._queue:
            return None
        return self.next_wave_at if now < self.next_wave_at else None

    def decision(self, now: float) -> Decision:
        """What the policy decides for this pool now (nothing changes)."""
        return decide(self.rules, self._state(self.progress, now), self.waits)

    def take_next(self, now: float) -> int | None:
        """The next target that may start now (and mark it active), or None."""
        if self.stopped is not None or not self._queue:
            return None
        if self.decision(now).admit <= 0:
            return None
        target = self._queue.popleft()
        self._active.add(target)
        return target

    def pending(self) -> list[int]:
        """Targets not yet dispatched, in all waves from the current one on."""
        rest = list(self._queue)
        for wave in self._waves[self._current + 1 :]:
            rest.extend(t for t in wave if t not in self._settled and t not in self._active)
        return rest

    # --- what happened ---

    def settle(
        self, target: int, now: float, *, failed_after_action: bool = False
    ) -> WaveCompleted | None:
        """A target reached a terminal state; returns the wave completion it caused, if any.

        ``failed_after_action``: it failed after the action took effect (its node came back
        broken, or not in time): from now on it is one of ``failed_down`` while its node is
        down, in the same step that takes it out of ``active``."""
        if target in self._settled:
            return None
        self._settled.add(target)
        self._active.discard(target)
        if failed_after_action:
            self._failed_after.add(target)
        index = self._wave_of.get(target)
        if index is not None:
            self._remaining[index] -= 1
        if self.stopped is not None:
            return None
        if index == self._current and self._remaining[index] == 0:
            self._find_open_wave()
        decision = self.decision(now)
        self.progress = decision.progress
        completed = decision.completed
        if completed is not None and self.waits is not None:
            self.waits.wave_completed(completed.wave, now, last=completed.next_wave_at is None)
        return completed

    def wave_targets(self, wave: int) -> list[int]:
        """The targets of a wave (0-based ladder step), in dispatch order."""
        return list(self._waves[wave]) if 0 <= wave < len(self._waves) else []

    def failed_later(self, target: int) -> None:
        """A settled target was found failed after all (it degraded during its soak): it is
        one of ``failed_down`` while its node is down, like any that failed after the action."""
        self._failed_after.add(target)

    def release_to_queue(self, target: int) -> None:
        """A dispatched target was not applied and must start over later (e.g. on stop)."""
        if target in self._active:
            self._active.discard(target)
            self._queue.appendleft(target)

    def drop(self, target: int) -> None:
        """A dispatched target this runner no longer owns (shared runs only)."""
        self._active.discard(target)

    def set_baseline(self, unavailable_not_ours: int, down: Iterable[int] | None = None) -> None:
        """A health poll's findings: the pool's nodes down for reasons of their own, and
        ``down``, our targets whose nodes it saw not ready (None: unchanged)."""
        self.baseline = max(0, unavailable_not_ours)
        if down is not None:
            self._down = frozenset(down)

    def adopt(
        self, settled: Iterable[int], active: Iterable[int], failed_after_action: Iterable[int]
    ) -> None:
        """Take up the pool as the journal has it now: another runner moved it on (a shared
        ``action: replace`` run takes turns per pool, ``engine/replace.py``)."""
        self._settled = set(settled)
        self._active = set(active) - self._settled
        self._failed_after = set(failed_after_action)
        self._remaining = [sum(1 for t in w if t not in self._settled) for w in self._waves]
        self._current = 0
        self._find_open_wave()
        self.progress, _ = advance(self.rules, self._state(PoolProgress(), -math.inf))

    def release_checkpoint(self) -> None:
        self.progress = replace(self.progress, held=False)

    def stop(self, reason: str) -> list[int]:
        """Stop the pool; returns the targets that will now never start."""
        never = self.pending()
        self.stopped = reason
        self._queue.clear()
        return never

    # --- internals ---

    def _state(self, progress: PoolProgress, now: float) -> PoolState:
        open_wave = self._current if self._current < len(self._waves) else None
        failures = 0 if self._budget is None else self._budget.failures
        return PoolState(
            now, progress, open_wave, len(self._active), self.baseline, failures, self.failed_down
        )

    def _find_open_wave(self) -> None:
        while self._current < len(self._waves) and self._remaining[self._current] == 0:
            self._current += 1
        if self._current < len(self._waves):
            self._queue = deque(
                t
                for t in self._waves[self._current]
                if t not in self._settled and t not in self._active
            )
