"""Rates and the ETA of a live run (pure; time is passed in).

A rate extrapolated from the last minute says little about a rollout: during the canary
one node moves at a time, and the last wave moves ``max_unavailable`` at a time, so early
on it overstates the time left several-fold (the rehearsal's 35m45s for a 5-minute run).
The ETA here follows what the executor will do instead:

* each pool walks the rest of its ladder: the current wave's queued nodes, then each later
  wave after ``pause_between_waves``;
* at most ``slots`` nodes of a pool are down at once (``max_unavailable`` less the nodes
  down for other reasons), each for the **measured** recovery time: the median time from
  dispatch to done of the latest nodes that ended well in this process (``RecoveryMeter``);
* nodes in progress hold their slot for the rest of that time;
* pools roll side by side: the run's ETA is its slowest pool's.

Until a node has recovered there is nothing measured, and no ETA ("-").

The rate counts the nodes that went through the action (healthy, done, failed), not the
ones that ended without it (skipped, gone): a pool stopped with 128 nodes skipped at once
did not reimage 128 nodes in a second.
"""

from __future__ import annotations

import heapq
import statistics
from collections import deque
from collections.abc import Sequence
from typing import Any

RATE_WINDOW = 60.0  # seconds of history behind the rate: recent enough to follow the waves
MIN_RATE_SPAN = 3.0  # no rate before this much history: the first seconds are noise
RECOVERIES_KEPT = 50  # the median of this many latest recoveries
RECOVERED = ("node_healthy", "node_done_unverified")


class RateMeter:
    """Nodes finished per minute over the last ``window`` seconds (time is passed in)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> None:
        self._samples.append((now, finished))
        # Keep one sample at or before the window's start, so the window is always full.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def per_minute(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, f0), (t1, f1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_RATE_SPAN:
            return None
        return max(f1 - f0, 0) * 60.0 / (t1 - t0)

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more nodes finish at the current rate (None: unknown)."""
        if remaining <= 0:
            return 0.0
        rate = self.per_minute()
        if not rate:
            return None
        return remaining * 60.0 / rate


class RecoveryMeter:
    """A run observer that measures how long nodes take, from dispatch to done.

    Reads the ``duration_s`` of ``node_healthy``/``node_done_unverified`` events (nodes
    dispatched by an earlier process have none). Cheap: one append per node.
    """

    def __init__(self, kept: int = RECOVERIES_KEPT) -> None:
        self._latest: deque[float] = deque(maxlen=kept)

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind in RECOVERED:
            duration = fields.get("duration_s")
            if isinstance(duration, int | float) and duration >= 0:
                self._latest.append(float(duration))

    def add(self, seconds: float) -> None:
        self._latest.append(seconds)

    def typical(self) -> float | None:
        """The median recovery of the latest nodes, None before the first one."""
        return statistics.median(self._latest) if self._latest else None


def ladder_eta(
    *,
    queued: int,
    in_progress: Sequence[float],
    later_waves: Sequence[int],
    slots: int,
    recovery: float,
    pause: float,
    wait: float = 0.0,
) -> float | None:
    """Seconds until a pool's last node is done, following its ladder (pure).

    ``queued``: nodes of the current wave not started yet; ``in_progress``: seconds left for
    each node started and not done; ``later_waves``: the sizes of the waves after this one;
    ``slots``: nodes that may be down at once; ``recovery``: seconds a node takes; ``pause``:
    between waves; ``wait``: seconds before the current wave may start (a pause running).
    None when no node can ever start (no slot).
    """
    if queued <= 0 and not in_progress and not any(later_waves):
        return 0.0
    if slots < 1 and (queued > 0 or any(later_waves)):
        return None
    busy = [max(0.0, left) for left in in_progress]
    end = _wave_end(busy, queued, max(slots, 1), recovery, start=max(wait, 0.0))
    for size in later_waves:
        if size > 0:
            end = _wave_end([], size, slots, recovery, start=end + pause)
    return end


def _wave_end(busy: list[float], nodes: int, slots: int, recovery: float, start: float) -> float:
    """When a wave ends: ``nodes`` more, each starting as soon as fewer than ``slots`` nodes
    are down (and not before ``start``), each down for ``recovery``."""
    # With b nodes down and s slots, the first new node starts when b - s + 1 of them are
    # back: the slots free up at the latest s finishing times (or at once, if b < s).
    ordered = sorted(busy)
    free = ordered[max(0, len(ordered) - slots) :] + [start] * max(0, slots - len(ordered))
    heapq.heapify(free)
    end = max(ordered, default=start)
    for _ in range(nodes):
        done = max(heapq.heappop(free), start) + recovery
        heapq.heappush(free, done)
        end = max(end, done)
    return end
