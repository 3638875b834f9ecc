"""The rollout policy: may a pool start new nodes now, and how many? (pure; time is passed in)

Every run asks this, and only this, whichever journal backs it: a run alone asks it in memory
(``pool.py``) before each start and after each node settles; a shared run asks it inside each
claim's transaction, with the pool's row locked (``journal/shared.py``); the dry run asks it
on a simulated clock (``views/dryrun.py``). One decision, ``decide``, in this order:

1. **Waves.** The pool is in the lowest wave that has a target not yet terminal. When that
   wave moves on, the wave before it completed *now*: the next one opens
   ``pause_between_waves`` later, and a checkpoint (``confirm_after_wave``) on the completed
   step, or on an empty step skipped with it, holds the pool until the operator confirms.
   Ladder steps that are empty for this pool are skipped without a pause.
2. **Failure budget** (the run's, ``budget.py``): past it, nothing new starts anywhere.
3. **Checkpoint**, then **pause**: nothing new starts while held, or before the wave opens.
   Then the **soak** and the **gates** (``nextwave.py``, when the plan has them): nothing new
   starts while the last wave soaks, nor before the wave's gates passed.
4. **max_unavailable**, at every instant: ``room = max_unavailable - baseline - active
   - failed_down``, where ``active`` counts targets from their start until they are terminal
   (by any runner), ``baseline`` the pool's nodes unavailable for reasons of their own, and
   ``failed_down`` the targets that failed *after* the action (back broken, or not back in
   time) whose nodes are still down: they hold their room seamlessly from the instant they
   are judged failed, unless the plan says ``failed_holds_availability: false`` (then that
   capacity is written off, and the room goes to the next node).

The decision is data (``Decision``): how many may start (``admit``), why no more may
(``blocked``), the wave it saw complete (``completed``, a policy event), and the progress to
remember (``PoolProgress``). Wave boundaries are events of the policy, so later steps around
them (gates before a wave, a soak after it) are rules here, not code in the executor.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Literal

from fleet_reimage.journal.shared import PoolProgress, PoolState
from fleet_reimage.rollout.budget import BudgetRule
from fleet_reimage.rollout.nextwave import NextWaveWaits

Blocked = Literal["budget", "held", "pause", "soak", "gate", "unavailable", "wave"]
NO_BUDGET = BudgetRule(limit=sys.maxsize)  # never exceeded (the dry run has no failures)


@dataclass(frozen=True, slots=True)
class RolloutRules:
    """A pool's rules, from the plan (and the resume's overrides)."""

    max_unavailable: int
    pause: float = 0.0  # pause_between_waves, seconds
    checkpoint_after_wave: int | None = None  # 0-based ladder step, or None
    budget: BudgetRule = NO_BUDGET
    failed_holds_availability: bool = True  # a node that failed after the action holds room

    def __post_init__(self) -> None:
        if self.max_unavailable < 1:
            raise ValueError("max_unavailable must be at least 1")


@dataclass(frozen=True, slots=True)
class WaveCompleted:
    """A policy event: the pool's wave ``wave`` (0-based) completed at ``at``."""

    wave: int
    at: float
    next_wave_at: float | None  # None when it was the last wave
    held: bool  # a checkpoint holds the pool after this wave


@dataclass(frozen=True, slots=True)
class Decision:
    progress: PoolProgress  # what to remember for the next decision
    admit: int  # how many new targets may start now
    blocked: Blocked | None  # why none may (None: ``admit`` > 0)
    completed: WaveCompleted | None = None  # the wave this decision saw complete

    @property
    def finished(self) -> bool:
        return self.progress.finished

    @property
    def wave(self) -> int | None:
        """The pool's current wave (0-based), None once it finished."""
        return None if self.progress.finished else self.progress.wave

    @property
    def opens_at(self) -> float | None:
        """When the pause ends, while the pool waits for it."""
        return self.progress.opens_at if self.blocked == "pause" else None

    def after_taking(self, taken: int, more_pending: bool) -> Blocked | None:
        """Why nothing more may start once ``taken`` targets were started on this decision
        (``more_pending``: targets of the wave are left to start)."""
        if self.blocked is not None:
            return self.blocked
        if taken >= self.admit:
            return "unavailable"
        return None if more_pending else "wave"


def held_by_failures(rules: RolloutRules, failed_down: int) -> int:
    """How much room the pool's failed, still-down targets hold under the plan's rule."""
    return failed_down if rules.failed_holds_availability else 0


def room(rules: RolloutRules, baseline: int, active: int, failed_down: int = 0) -> int:
    """How many more nodes of the pool may be unavailable now (max_unavailable)."""
    return rules.max_unavailable - baseline - active - held_by_failures(rules, failed_down)


def decide(rules: RolloutRules, state: PoolState, waits: NextWaveWaits | None = None) -> Decision:
    """The decision for the pool in ``state`` (see the module docstring); ``waits``: its
    soak and gates, when the plan has them."""
    progress, completed = advance(rules, state)
    if progress.finished:
        return Decision(progress, 0, None, completed)
    blocked: Blocked | None = None
    if rules.budget.exceeded(state.failures):
        blocked = "budget"
    elif progress.held:
        blocked = "held"
    elif state.now < progress.opens_at:
        blocked = "pause"
    elif waits is not None and progress.wave is not None:
        blocked = waits.blocks(progress.wave)
    free = room(rules, state.baseline, state.active, state.failed_down)
    if blocked is None and free <= 0:
        blocked = "unavailable"
    return Decision(progress, 0 if blocked else free, blocked, completed)


def decide_shared(rules: RolloutRules, waits: NextWaveWaits | None, state: PoolState) -> Decision:
    """A shared run's claim decision: ``decide``, with a soak that starts now also kept as the
    pool's pause (``opens_at``, in the pool's row): the runner whose claim saw the wave
    complete watches the soak (``waits``), and every other runner's claim waits for its end."""
    decision = decide(rules, state, waits)
    completed = decision.completed
    soak = 0.0 if waits is None else waits.rules.soak
    if completed is None or completed.next_wave_at is None or soak <= 0:
        return decision
    if soak <= rules.pause:  # the pause (opens_at = at + pause) outlasts it
        return decision
    # Durations compared, not their ends: at + soak may round to at + pause when soak is tiny.
    soak_ends = max(completed.at + soak, decision.progress.opens_at)
    progress = replace(decision.progress, opens_at=soak_ends)
    blocked: Blocked = "held" if progress.held else "pause"
    if decision.blocked == "budget":
        blocked = "budget"
    return Decision(progress, 0, blocked, replace(completed, next_wave_at=soak_ends))


def advance(rules: RolloutRules, state: PoolState) -> tuple[PoolProgress, WaveCompleted | None]:
    """The pool's progress now, and the wave that completed since the last decision, if any."""
    progress, open_wave = state.progress, state.open_wave
    if progress.finished:
        return progress, None
    if progress.wave is None:  # the first look: the pool starts where it is, no event
        return PoolProgress(open_wave, progress.opens_at, False, open_wave is None), None
    if open_wave is not None and open_wave <= progress.wave:
        return (progress if open_wave == progress.wave else replace(progress, wave=open_wave)), None
    completed = progress.wave
    if open_wave is None:  # the last wave completed: the pool is finished
        after = PoolProgress(completed, progress.opens_at, False, True)
        return after, WaveCompleted(completed, state.now, None, False)
    # A checkpoint on the completed step, or on an empty step skipped with it, holds the pool.
    checkpoint = rules.checkpoint_after_wave
    held = checkpoint is not None and completed <= checkpoint < open_wave
    opens_at = state.now + rules.pause
    after = PoolProgress(open_wave, opens_at, held)
    return after, WaveCompleted(completed, state.now, opens_at, held)
