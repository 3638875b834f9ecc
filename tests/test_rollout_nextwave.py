"""The next-wave waits (pure): soak and gates in the rollout policy, on a clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.journal.shared import PoolProgress, PoolState
from fleet_reimage.rollout.budget import BudgetRule
from fleet_reimage.rollout.nextwave import NextWaveRules, NextWaveWaits, soak_verdict
from fleet_reimage.rollout.policy import RolloutRules, decide, decide_shared
from fleet_reimage.rollout.pool import PoolRollout

READY = frozenset({"idle", "running"})


def pool(rules: NextWaveRules, pause: float = 0.0) -> PoolRollout:
    return PoolRollout(
        [[1, 2], [3, 4], [5]],
        max_unavailable=10,
        pause_between_waves=pause,
        waits=NextWaveWaits(rules),
    )


def start_all(rollout: PoolRollout, now: float) -> list[int]:
    started = []
    while (target := rollout.take_next(now)) is not None:
        started.append(target)
    return started


def test_a_gated_wave_starts_nothing_until_its_gate_passed() -> None:
    rollout = pool(NextWaveRules(gated=True))
    assert rollout.decision(0.0).blocked == "gate"
    assert start_all(rollout, 0.0) == []
    assert rollout.waits is not None
    rollout.waits.gate_passed(0)
    assert start_all(rollout, 0.0) == [1, 2]
    for target in (1, 2):
        rollout.settle(target, 1.0)
    assert rollout.wave == 1 and rollout.decision(1.0).blocked == "gate"  # each wave asks
    rollout.waits.gate_passed(1)
    assert start_all(rollout, 1.0) == [3, 4]


def test_a_soak_holds_the_next_wave_until_it_is_ended_not_just_until_its_time() -> None:
    rollout = pool(NextWaveRules(soak=5.0))
    waits = rollout.waits
    assert waits is not None
    assert start_all(rollout, 0.0) == [1, 2]
    rollout.settle(1, 1.0)
    assert waits.soaking is None  # the wave is not complete yet
    rollout.settle(2, 2.0)
    assert waits.soaking == 0 and waits.soak_until == 7.0
    assert rollout.decision(3.0).blocked == "soak" and not waits.soak_due(6.9)
    assert start_all(rollout, 8.0) == []  # time is up, but no poll has ended it yet
    assert waits.soak_due(7.0)
    assert waits.end_soak() == 0
    assert start_all(rollout, 8.0) == [3, 4]


def test_the_pause_comes_first_and_the_soak_runs_beside_it() -> None:
    rollout = pool(NextWaveRules(soak=1.0, gated=True), pause=3.0)
    waits = rollout.waits
    assert waits is not None
    waits.gate_passed(0)
    start_all(rollout, 0.0)
    rollout.settle(1, 1.0)
    rollout.settle(2, 1.0)
    assert rollout.decision(2.0).blocked == "pause"
    assert waits.soak_due(2.0)
    waits.end_soak()
    assert rollout.decision(4.5).blocked == "gate"  # after the pause: the gate, last
    waits.gate_passed(1)
    assert rollout.decision(4.5).admit == 10


def test_the_last_wave_is_not_soaked() -> None:
    rollout = PoolRollout([[1]], max_unavailable=1, waits=NextWaveWaits(NextWaveRules(soak=9.0)))
    start_all(rollout, 0.0)
    rollout.settle(1, 1.0)
    assert rollout.done and rollout.waits is not None and rollout.waits.soaking is None


def test_budget_and_checkpoint_come_before_the_waits() -> None:
    rollout = PoolRollout(
        [[1], [2]],
        max_unavailable=1,
        checkpoint_after_wave=0,
        waits=NextWaveWaits(NextWaveRules(soak=1.0, gated=True)),
    )
    assert rollout.waits is not None
    rollout.waits.gate_passed(0)
    start_all(rollout, 0.0)
    rollout.settle(1, 1.0)
    assert rollout.decision(1.0).blocked == "held"


@pytest.mark.parametrize(
    ("state", "boot", "healthy_boot", "expected"),
    [
        ("idle", 100.0, 100.0, None),
        ("running", 100.0, 100.0, None),
        ("unusable", 100.0, 100.0, "degraded during soak (state unusable)"),
        ("starttaskfailed", 100.0, 100.0, "degraded during soak (state starttaskfailed)"),
        ("rebooting", 100.0, 100.0, "degraded during soak (state rebooting)"),
        ("idle", 130.0, 100.0, "degraded during soak (rebooted again)"),
        ("idle", 90.0, None, None),  # healthy boot unknown: booted before the soak started
        ("idle", 130.0, None, "degraded during soak (rebooted again)"),
        ("idle", None, 100.0, None),
    ],
)
def test_soak_verdict(
    state: str, boot: float | None, healthy_boot: float | None, expected: str | None
) -> None:
    got = soak_verdict(
        state, boot, ready_states=READY, healthy_boot=healthy_boot, soak_started=120.0
    )
    assert got == expected


# --- a shared run's claims: the soak's end is kept as the pool's pause (decide_shared) ---


def completing(now: float, *, open_wave: int | None = 1, failures: int = 0) -> PoolState:
    """A pool whose wave 0 (0-based) completes at ``now``, seen by a claim."""
    return PoolState(now, PoolProgress(wave=0), open_wave, 0, 0, failures)


def test_a_shared_claim_that_sees_a_wave_complete_keeps_the_soak_as_the_pause() -> None:
    waits = NextWaveWaits(NextWaveRules(soak=10.0))
    decision = decide_shared(RolloutRules(5, pause=3.0), waits, completing(100.0))
    assert decision.progress.opens_at == 110.0 and decision.progress.wave == 1
    assert decision.admit == 0 and decision.blocked == "pause"
    assert decision.completed is not None and decision.completed.next_wave_at == 110.0
    # Another runner's later claim reads that progress: it waits until the soak's end...
    later = PoolState(105.0, decision.progress, 1, 0, 0, 0)
    other = NextWaveWaits(NextWaveRules(soak=10.0))  # it does not watch the soak itself
    assert decide_shared(RolloutRules(5, pause=3.0), other, later).blocked == "pause"
    # ...and then may start the next wave, though it never saw the wave complete.
    after = PoolState(110.0, decision.progress, 1, 0, 0, 0)
    assert decide_shared(RolloutRules(5, pause=3.0), other, after).admit == 5


def test_a_shared_claim_with_a_longer_pause_or_no_soak_decides_as_decide() -> None:
    rules = RolloutRules(5, pause=30.0)
    for waits in (NextWaveWaits(NextWaveRules(soak=10.0)), NextWaveWaits(NextWaveRules()), None):
        state = completing(100.0)
        assert decide_shared(rules, waits, state) == decide(rules, state, waits)
    last = completing(100.0, open_wave=None)  # the last wave: finished, never soaked
    soaked = NextWaveWaits(NextWaveRules(soak=10.0))
    assert decide_shared(rules, soaked, last) == decide(rules, last, soaked)


@given(
    soak=st.floats(0.0, 100.0),
    pause=st.floats(0.0, 100.0),
    now=st.floats(0.0, 1e6),
    failures=st.integers(0, 5),
    checkpoint=st.sampled_from([None, 0, 1]),
)
def test_a_shared_claim_holds_the_next_wave_for_the_longer_of_pause_and_soak(
    soak: float, pause: float, now: float, failures: int, checkpoint: int | None
) -> None:
    rules = RolloutRules(5, pause, checkpoint, BudgetRule(limit=2))
    waits = NextWaveWaits(NextWaveRules(soak=soak))
    alone = decide(rules, completing(now, failures=failures), waits)
    shared = decide_shared(rules, waits, completing(now, failures=failures))
    assert (
        shared.progress.wave == alone.progress.wave and shared.progress.held == alone.progress.held
    )
    assert shared.progress.opens_at == max(alone.progress.opens_at, now + soak if soak else -1)
    assert shared.admit <= alone.admit
    if soak > pause:
        assert shared.admit == 0  # nothing of the next wave starts before the soak's end
    if alone.blocked in ("budget", "held"):  # the stronger reasons stay
        assert shared.blocked == alone.blocked
