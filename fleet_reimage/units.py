"""Durations, counts and percents as written in plans and fleet files (pure).

Durations: ``200ms``, ``30s``, ``20m``, ``1h``, ``1.5s``, or a combination such as ``1h30m``.
A bare number is not accepted: the unit is part of what an operator means.

Counts and percents: ``5`` (a count) or ``"25%"`` (a share of a pool's selected nodes).
The rounding rule, used for waves, ``max_unavailable`` and ``failure_budget`` alike::

    amount(p%, n) = 0                       if p == 0 or n == 0
                  = max(1, floor(n * p / 100))  otherwise

Floor keeps every limit on the safe side (never more unavailable than written), and the
``max(1, ...)`` keeps a wave or budget from being zero when the pool is not empty, which
would stall a rollout forever. Counts are capped at ``n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from fleet_reimage.errors import FleetReimageError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


class UnitError(FleetReimageError, ValueError):
    """A duration, count or percent that cannot be read; the message says what is allowed."""


def parse_duration(text: object) -> float:
    """Seconds in a duration such as ``200ms``, ``30s``, ``1h30m``."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise UnitError(f"expected a duration such as 200ms, 30s, 20m or 1h, got {text!r}")
    compact = text.strip().lower().replace(" ", "")
    pos, total = 0, Fraction(0)
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise UnitError(f"expected a duration such as 200ms, 30s, 20m or 1h, got {text!r}")
    return float(total)


def format_duration(seconds: float) -> str:
    """The shortest faithful text for a duration, for schedules and reports."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 120 or seconds % 60:
        return f"{seconds:g}s"
    if seconds < 7200 or seconds % 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


@dataclass(frozen=True, slots=True)
class Amount:
    """A count (``percent is False``) or a percent of a pool's selected nodes."""

    value: Fraction
    percent: bool

    def of(self, total: int) -> int:
        """How many nodes this amount means out of ``total`` (see the module's rounding rule)."""
        if total <= 0 or self.value == 0:
            return 0
        if not self.percent:
            return min(int(self.value), total)
        share = (self.value * total) // 100
        return max(1, min(int(share), total))

    def __str__(self) -> str:
        shown = f"{float(self.value):g}"
        return f"{shown}%" if self.percent else shown


def parse_amount(raw: object) -> Amount:
    """A count (non-negative integer) or a percent string such as ``"25%"`` (0..100)."""
    if isinstance(raw, bool):
        raise UnitError(f'expected a count such as 5 or a percent such as "25%", got {raw!r}')
    if isinstance(raw, int):
        if raw < 0:
            raise UnitError(f"a count cannot be negative, got {raw}")
        return Amount(Fraction(raw), percent=False)
    if isinstance(raw, str):
        match = _PERCENT.fullmatch(raw.strip())
        if match:
            value = Fraction(match.group(1))
            if value > 100:
                raise UnitError(f"a percent must be between 0% and 100%, got {raw!r}")
            return Amount(value, percent=True)
        if raw.strip().isdigit():
            return Amount(Fraction(int(raw.strip())), percent=False)
    raise UnitError(f'expected a count such as 5 or a percent such as "25%", got {raw!r}')


# --- counts in words ------------------------------------------------------------------
# Every message that counts things goes through these, so none says "1 nodes".

# The words our messages put a count before that do not follow the rules below.
_IRREGULAR = {"is": "are", "was": "were", "has": "have", "it": "they", "this": "these"}


def plural(word: str, count: int) -> str:
    """``word`` (or a phrase's last word) in the form that goes with ``count``.

    ``node``/``nodes``, ``retry``/``retries``, ``crash``/``crashes``, ``is``/``are``.
    """
    if count == 1:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"


def count(number: int, word: str) -> str:
    """``"1 node"``, ``"2 nodes"``, ``"0 retries"``."""
    return f"{number} {plural(word, number)}"
