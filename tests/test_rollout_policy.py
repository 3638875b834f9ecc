"""The rollout policy itself (pure): what ``decide`` answers for a pool's state."""

from __future__ import annotations

import math

from fleet_reimage.journal.shared import PoolProgress, PoolState
from fleet_reimage.rollout.budget import BudgetRule
from fleet_reimage.rollout.policy import RolloutRules, WaveCompleted, decide

RULES = RolloutRules(max_unavailable=3, pause=30.0, checkpoint_after_wave=None)


def state(
    progress: PoolProgress,
    open_wave: int | None,
    *,
    now: float = 100.0,
    active: int = 0,
    baseline: int = 0,
    failures: int = 0,
) -> PoolState:
    return PoolState(now, progress, open_wave, active, baseline, failures)


def test_the_first_look_starts_where_the_pool_is_without_an_event() -> None:
    first = decide(RULES, state(PoolProgress(), 2, active=1))
    assert first.progress == PoolProgress(2, -math.inf, False, False)
    assert (first.admit, first.blocked, first.completed, first.wave) == (2, None, None, 2)
    done = decide(RULES, state(PoolProgress(), None))
    assert done.finished and done.completed is None and done.wave is None


def test_a_wave_completes_when_the_open_wave_moves_on_and_the_next_waits_for_the_pause() -> None:
    seen = decide(RULES, state(PoolProgress(0), 1, now=100.0))
    assert seen.completed == WaveCompleted(0, 100.0, 130.0, False)
    assert (seen.admit, seen.blocked, seen.opens_at) == (0, "pause", 130.0)
    later = decide(RULES, state(seen.progress, 1, now=129.9))
    assert later.completed is None and later.blocked == "pause"
    opened = decide(RULES, state(seen.progress, 1, now=130.0))
    assert (opened.admit, opened.blocked, opened.opens_at) == (3, None, None)


def test_the_last_wave_completes_without_a_pause_and_finishes_the_pool() -> None:
    last = decide(RULES, state(PoolProgress(2), None, now=50.0))
    assert last.completed == WaveCompleted(2, 50.0, None, False)
    assert last.finished and last.admit == 0 and last.blocked is None
    again = decide(RULES, state(last.progress, None, now=60.0))
    assert again.completed is None and again.finished  # announced once


def test_a_checkpoint_holds_after_its_wave_even_when_the_next_step_is_empty() -> None:
    rules = RolloutRules(max_unavailable=3, pause=0.0, checkpoint_after_wave=1)
    # wave 0 done, step 1 empty for this pool, wave 2 open: the checkpoint after step 1 holds
    held = decide(rules, state(PoolProgress(0), 2))
    assert held.completed is not None and held.completed.held
    assert (held.blocked, held.admit, held.progress.held) == ("held", 0, True)
    before = decide(rules, state(PoolProgress(0), 1))
    assert before.completed is not None and not before.completed.held and before.admit == 3


def test_the_budget_comes_first_then_the_checkpoint_then_the_pause_then_room() -> None:
    rules = RolloutRules(max_unavailable=3, pause=30.0, budget=BudgetRule(limit=1, forgiven=1))
    paused_and_held = PoolProgress(1, opens_at=1e9, held=True)
    assert decide(rules, state(paused_and_held, 1, failures=3)).blocked == "budget"
    assert decide(rules, state(paused_and_held, 1, failures=2)).blocked == "held"  # 1 forgiven
    paused = PoolProgress(1, opens_at=1e9)
    assert decide(rules, state(paused, 1, active=3)).blocked == "pause"
    assert decide(rules, state(PoolProgress(1), 1, active=2, baseline=1)).blocked == "unavailable"
    roomy = decide(rules, state(PoolProgress(1), 1, active=1, baseline=1))
    assert (roomy.admit, roomy.blocked) == (1, None)


def test_what_blocks_after_a_take() -> None:
    decision = decide(RULES, state(PoolProgress(0), 0, active=1))  # room for 2
    assert decision.after_taking(2, more_pending=True) == "unavailable"
    assert decision.after_taking(1, more_pending=True) is None  # the caller's limit, not ours
    assert decision.after_taking(1, more_pending=False) == "wave"
    paused = decide(RULES, state(PoolProgress(0, opens_at=1e9), 0))
    assert paused.after_taking(0, more_pending=True) == "pause"


def test_targets_failed_after_the_action_hold_room_while_down_unless_the_plan_frees_it() -> None:
    holds = RolloutRules(max_unavailable=3)
    frees = RolloutRules(max_unavailable=3, failed_holds_availability=False)
    # 1 node down for reasons of its own, 1 of ours in progress, 1 failed after the action.
    down = PoolState(100.0, PoolProgress(0), 0, 1, 1, 1, failed_down=1)
    assert (decide(holds, down).admit, decide(holds, down).blocked) == (0, "unavailable")
    assert (decide(frees, down).admit, decide(frees, down).blocked) == (1, None)
    back = PoolState(100.0, PoolProgress(0), 0, 1, 1, 1, failed_down=0)  # a poll saw it ready
    assert decide(holds, back).admit == 1
