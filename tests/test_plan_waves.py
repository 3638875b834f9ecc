"""Wave sizes from the cumulative ladder: examples and properties."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.plan.waves import cumulative_targets, normalise_ladder, wave_sizes
from fleet_reimage.units import Amount


def pct(value: float) -> Amount:
    return Amount(Fraction(value), percent=True)


def count(value: int) -> Amount:
    return Amount(Fraction(value), percent=False)


CANARY = (count(1), count(5), pct(25), pct(100))


@pytest.mark.parametrize(
    ("ladder", "total", "sizes"),
    [
        (CANARY, 100, [1, 4, 20, 75]),
        (CANARY, 10, [1, 4, 5]),  # 25% of 10 is 2, below the 5 already done: empty, dropped
        (CANARY, 3, [1, 2]),  # 5 is capped at the pool size
        (CANARY, 1, [1]),
        (CANARY, 0, []),
        ((pct(1),), 50, [1, 49]),  # 1% of 50 floors to 0, but never zero for a non-empty pool
        ((pct(50),), 5, [2, 3]),  # floor(2.5)
        ((count(10), pct(5)), 100, [10, 90]),  # 5% of 100 is 5 < 10: that wave is empty
        ((count(10), pct(5)), 1000, [10, 40, 950]),
        ((), 7, [7]),  # the final 100% is implied
        ((pct(100),), 7, [7]),
    ],
)
def test_examples(ladder: tuple[Amount, ...], total: int, sizes: list[int]) -> None:
    assert wave_sizes(ladder, total) == sizes


def test_cumulative_targets_keep_one_entry_per_ladder_step() -> None:
    assert cumulative_targets(CANARY, 10) == [1, 5, 5, 10]
    assert cumulative_targets((count(2),), 10) == [2, 10]
    assert cumulative_targets(CANARY, 0) == [0, 0, 0, 0]


def test_negative_total_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot have -1 nodes"):
        wave_sizes(CANARY, -1)


def test_normalise_ladder_appends_100_percent_once() -> None:
    assert normalise_ladder((count(1),)) == (count(1), pct(100))
    assert normalise_ladder(CANARY) == CANARY
    assert normalise_ladder(()) == (pct(100),)


amounts = st.one_of(
    st.integers(min_value=0, max_value=5000).map(count),
    st.fractions(min_value=0, max_value=100, max_denominator=1000).map(
        lambda f: Amount(f, percent=True)
    ),
)
ladders = st.lists(amounts, max_size=8)
totals = st.integers(min_value=0, max_value=20000)


@given(ladders, totals)
def test_sizes_are_positive_and_sum_to_the_pool(ladder: list[Amount], total: int) -> None:
    sizes = wave_sizes(ladder, total)
    assert sum(sizes) == total
    assert all(size >= 1 for size in sizes)
    assert len(sizes) <= len(normalise_ladder(ladder))


@given(ladders, totals)
def test_first_wave_is_the_first_target(ladder: list[Amount], total: int) -> None:
    sizes = wave_sizes(ladder, total)
    if ladder and ladder[0].of(total) > 0:
        assert sizes[0] == ladder[0].of(total)


@given(ladders, totals)
def test_cumulative_targets_never_decrease_and_end_at_total(
    ladder: list[Amount], total: int
) -> None:
    targets = cumulative_targets(ladder, total)
    assert len(targets) == len(normalise_ladder(ladder))
    assert targets == sorted(targets)
    assert targets[-1] == total
    for target, amount in zip(targets, normalise_ladder(ladder), strict=True):
        assert target >= amount.of(total)  # never behind what a step asks for
    # The non-empty steps are exactly the waves.
    steps = [b - a for a, b in zip([0, *targets], targets, strict=False) if b > a]
    assert steps == wave_sizes(ladder, total)


@given(st.fractions(min_value=Fraction(1, 1000), max_value=100), st.integers(1, 20000))
def test_a_nonzero_percent_of_a_nonempty_pool_is_never_an_empty_first_wave(
    share: Fraction, total: int
) -> None:
    sizes = wave_sizes([Amount(share, percent=True)], total)
    assert sizes[0] >= 1
    # Floor keeps the canary on the safe side: never more than the share asked for (unless
    # the share rounds below one node, which is raised to one).
    assert sizes[0] == max(1, int(share * total // 100))
