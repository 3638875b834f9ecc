"""Turning the plan's cumulative wave ladder into wave sizes for one pool (pure).

The ladder ``[1, 5, "25%", "100%"]`` means: after wave 1, 1 node of the pool is done;
after wave 2, 5; after wave 3, a quarter; after wave 4, all. Each cumulative target is
``amount.of(total)`` (see ``fleet_reimage.units`` for the rounding rule), never less than the
previous target, so a ladder mixing counts and percents still only moves forward. A step
that adds no node is an empty wave and is dropped. A final 100% is implied.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from fleet_reimage.units import Amount

ALL = Amount(Fraction(100), percent=True)


def is_all(amount: Amount) -> bool:
    return amount.percent and amount.value == 100


def normalise_ladder(ladder: Sequence[Amount]) -> tuple[Amount, ...]:
    """The ladder with the implied final 100% appended when it is missing."""
    if ladder and is_all(ladder[-1]):
        return tuple(ladder)
    return (*ladder, ALL)


def cumulative_targets(ladder: Sequence[Amount], total: int) -> list[int]:
    """One cumulative target per ladder step (repeats allowed), the last one being ``total``.

    The list has one entry per step of the normalised ladder, so step ``i`` of the plan
    (``confirm_after_wave`` counts these from 1) can be found even when it is empty.
    """
    if total < 0:
        raise ValueError(f"a pool cannot have {total} nodes")
    targets: list[int] = []
    previous = 0
    for amount in normalise_ladder(ladder):
        previous = max(previous, amount.of(total))
        targets.append(previous)
    return targets


def wave_sizes(ladder: Sequence[Amount], total: int) -> list[int]:
    """Sizes of the non-empty waves for a pool of ``total`` selected nodes; they sum to total."""
    sizes: list[int] = []
    done = 0
    for target in cumulative_targets(ladder, total):
        if target > done:
            sizes.append(target - done)
            done = target
    return sizes
