"""May a pool's next wave start? The waits besides the pause: soak and gates (pure).

After a wave completes, the rollout policy (``policy.py``) already holds the pool for its
pause and checkpoint. Two more conditions come from the plan:

- **Soak** (``rollout.soak``): the completed wave's nodes must stay healthy this long before
  the pool's next wave starts. The soak runs beside the pause (the next wave waits for the
  longer of the two) and ends only when a health poll made after its time is up has seen the
  nodes (``end_soak``), so its last moments are checked too. The last wave has no next wave
  and is not soaked.
- **Gates** (``rollout.gates``, ``when: before_wave``): a wave's first node may start only
  once the gates have passed for that wave, in this process. A resumed run asks them again
  before the wave it stopped at.

``NextWaveWaits`` is one pool's memory of both; ``decide`` asks ``blocks`` after the pause.
Time is passed in (the caller's monotonic clock); nothing here runs a command or reads a node.
``soak_verdict`` says whether a soaking node degraded, from what a poll saw of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Waiting = Literal["soak", "gate"]


@dataclass(frozen=True, slots=True)
class NextWaveRules:
    soak: float = 0.0  # seconds; 0: no soak
    gated: bool = False  # before_wave gates must pass before each wave's first start


class NextWaveWaits:
    """One pool's soak and gate state (see the module docstring)."""

    def __init__(self, rules: NextWaveRules) -> None:
        self.rules = rules
        self.soaking: int | None = None  # the completed wave being soaked (0-based)
        self.soak_until = 0.0
        self._passed: set[int] = set()  # waves whose gates passed in this process

    def blocks(self, wave: int) -> Waiting | None:
        """Why ``wave`` may not start its first node now (None: it may)."""
        if self.soaking is not None:
            return "soak"
        if self.gate_due(wave):
            return "gate"
        return None

    def wave_completed(self, wave: int, now: float, *, last: bool) -> bool:
        """A wave completed at ``now``; True when its soak starts."""
        if last or self.rules.soak <= 0:
            return False
        self.soaking, self.soak_until = wave, now + self.rules.soak
        return True

    def soak_due(self, now: float) -> bool:
        """The soak's time is up (a poll from now on may end it)."""
        return self.soaking is not None and now >= self.soak_until

    def end_soak(self) -> int | None:
        """End the soak; returns the wave that was soaked."""
        wave, self.soaking = self.soaking, None
        return wave

    def gate_passed(self, wave: int) -> None:
        self._passed.add(wave)

    def gate_due(self, wave: int) -> bool:
        return self.rules.gated and wave not in self._passed


def soak_verdict(
    state: str,
    last_boot_time: float | None,
    *,
    ready_states: frozenset[str],
    healthy_boot: float | None,
    soak_started: float,
) -> str | None:
    """Why a soaking node degraded (None: it is still healthy), from what a poll saw.

    Times are epoch seconds. ``healthy_boot``: its lastBootTime when it was judged healthy
    (None when that was in an earlier process: then any boot after the soak started is a
    new one).
    """
    if state not in ready_states:
        return f"degraded during soak (state {state})"
    if last_boot_time is None:
        return None
    rebooted = (
        last_boot_time != healthy_boot
        if healthy_boot is not None
        else last_boot_time > soak_started
    )
    return "degraded during soak (rebooted again)" if rebooted else None
