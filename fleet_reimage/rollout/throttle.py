"""Adaptive throttling for one Batch account, shared by all its pools (pure: time is passed in).

Two AIMD loops, in the spirit of TCP congestion control:

- **Concurrency**: the number of requests in flight for the account starts at the plan's
  ``per_account_concurrency``. Every 429/503 halves it (at most once per cooldown, so a burst
  of throttled answers to requests that were already in flight counts as one signal); every
  success adds ``1/limit`` (about +1 per round trip of the whole window).
- **Rate**: unpaced until the first throttle. Then requests are paced by a token bucket at
  ``0.7 x`` the success rate observed over the last second, growing back additively
  (a few percent of the cut rate per second). With a server that limits requests per
  second, concurrency alone cannot find the limit (one request in flight can still exceed
  it), which is why the rate loop exists.

And everyone waits: a throttle answer pauses *all* new requests of the account until the
server's Retry-After has passed, so one throttle never becomes a thundering herd of retries.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

RATE_WINDOW = 1.0  # seconds of successes used to estimate the account's achieved rate
MIN_RATE_WINDOW = 0.1
MIN_RATE = 1.0  # requests per second: never pace slower than this


@dataclass(frozen=True, slots=True)
class ThrottleChange:
    """A decision worth recording in the journal and the events stream."""

    concurrency: int
    rate: float | None  # requests/s pacing, None when unpaced
    paused_until: float
    reason: str


class AdaptiveThrottle:
    def __init__(
        self,
        max_concurrency: int,
        *,
        decrease: float = 0.5,
        rate_decrease: float = 0.7,
        rate_recovery: float = 0.03,
        default_pause: float = 1.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self._limit = float(max_concurrency)
        self._decrease = decrease
        self._rate_decrease = rate_decrease
        self._rate_recovery = rate_recovery
        self._default_pause = default_pause
        self.rate: float | None = None
        self._rate_step = 0.0  # requests/s added per second while recovering
        self._rate_time = 0.0
        self._tokens = 0.0
        self.paused_until = -math.inf
        self._last_cut = -math.inf
        self._successes: deque[float] = deque()
        self._first_start: float | None = None
        self.throttles = 0

    @property
    def concurrency(self) -> int:
        return max(1, int(self._limit))

    def wait_time(self, in_flight: int, now: float) -> float | None:
        """0 if a request may start now; seconds to wait; None if at the concurrency limit
        (wait for a request to finish instead)."""
        if now < self.paused_until:
            return self.paused_until - now
        if in_flight >= self.concurrency:
            return None
        if self.rate is None:
            return 0.0
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def started(self, now: float) -> None:
        if self._first_start is None:
            self._first_start = now
        if self.rate is not None:
            self._refill(now)
            self._tokens -= 1.0

    def on_success(self, now: float) -> None:
        self._limit = min(float(self.max_concurrency), self._limit + 1.0 / self._limit)
        self._successes.append(now)
        self._trim(now)

    def on_throttle(self, now: float, retry_after: float | None) -> ThrottleChange | None:
        """A 429/503 arrived. Returns the change when limits were cut (None within cooldown)."""
        self.throttles += 1
        pause = retry_after if retry_after is not None else self._default_pause
        self.paused_until = max(self.paused_until, now + pause)
        cooldown = max(pause, 0.2)
        if now - self._last_cut < cooldown:
            return None
        self._last_cut = now
        self._limit = max(1.0, self._limit * self._decrease)
        observed = self._observed_rate(now)
        if self.rate is not None:
            self._refill(now)
            observed = min(observed, self.rate) if observed > 0 else self.rate
        new_rate = max(MIN_RATE, observed * self._rate_decrease)
        self.rate, self._rate_time, self._tokens = new_rate, now, 0.0
        self._rate_step = max(0.5, new_rate * self._rate_recovery)
        return ThrottleChange(
            self.concurrency,
            round(new_rate, 1),
            self.paused_until,
            f"throttled; pausing {pause:.3g}s",
        )

    def _observed_rate(self, now: float) -> float:
        self._trim(now)
        if not self._successes:
            return MIN_RATE
        start = self._first_start if self._first_start is not None else now
        window = min(RATE_WINDOW, max(MIN_RATE_WINDOW, now - start))
        return len(self._successes) / window

    def _trim(self, now: float) -> None:
        while self._successes and self._successes[0] < now - RATE_WINDOW:
            self._successes.popleft()

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        elapsed = max(0.0, now - self._rate_time)
        self._rate_time = now
        self.rate += self._rate_step * elapsed  # additive recovery
        burst = max(1.0, self.rate * 0.05)
        self._tokens = min(burst, self._tokens + elapsed * self.rate)
