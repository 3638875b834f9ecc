"""Clocks for the emulator: the real one, and a manual one tests move by hand.

Two readings are needed: ``monotonic()`` orders and schedules transitions (never jumps),
``wall()`` gives epoch seconds for the timestamps a client sees (lastBootTime, ...).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class RealClock:
    """The process clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told; wall time moves in step with monotonic time."""

    def __init__(
        self, wall_start: float = 1_790_000_000.0, monotonic_start: float = 1000.0
    ) -> None:
        self._monotonic = monotonic_start
        self._offset = wall_start - monotonic_start

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._monotonic + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._monotonic += seconds
