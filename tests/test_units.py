"""Durations and the count/percent rounding rule (pure)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.units import Amount, UnitError, format_duration, parse_amount, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("200ms", 0.2), ("30s", 30.0), ("20m", 1200.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), (" 2s ", 2.0), ("0s", 0.0), ("1d", 86400.0),
])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "10 parsecs", "-1s", "1h-", "ms", 30, None, True])
def test_bad_durations_say_what_is_allowed(text: object) -> None:
    with pytest.raises(UnitError, match="200ms, 30s, 20m or 1h"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "200ms"), (30, "30s"), (1200, "20m"), (7200, "2h"), (90, "90s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(("raw", "total", "expected"), [
    ("25%", 100, 25), ("25%", 3, 1),   # floor, but never zero for a non-empty pool
    ("1%", 1, 1), ("0%", 50, 0), ("100%", 7, 7), ("99%", 100, 99), ("99%", 10, 9),
    ("33.3%", 1000, 333), (5, 3, 3),   # counts are capped at the total
    (0, 10, 0), ("5%", 0, 0), (5, 0, 0), ("50%", 1, 1), ("50%", 3, 1),
])  # fmt: skip
def test_amount_rounding_edges(raw: object, total: int, expected: int) -> None:
    assert parse_amount(raw).of(total) == expected


@pytest.mark.parametrize("raw", ["101%", "-5%", -1, "five", True, 1.5, "5 %%"])
def test_bad_amounts(raw: object) -> None:
    with pytest.raises(UnitError):
        parse_amount(raw)


@given(st.fractions(min_value=0, max_value=100, max_denominator=1000), st.integers(0, 100_000))
def test_percent_never_zero_never_above_total(percent: Fraction, total: int) -> None:
    amount = Amount(percent, percent=True)
    value = amount.of(total)
    assert 0 <= value <= total
    if total > 0 and percent > 0:
        assert value >= 1
        assert value <= max(1, percent * total / 100)  # floor keeps the limit on the safe side
    if percent == 0 or total == 0:
        assert value == 0
