"""Adaptive throttling for one Batch account, shared by all its pools (pure: time is passed in).

Everyone waits: any 429/503 pauses *all* new requests of the account until the server's
Retry-After has passed, so one throttle never becomes a thundering herd of retries. Then two
AIMD loops, in the spirit of TCP congestion control:

- **Concurrency** (429 and 503): the account's requests in flight start at the plan's
  ``per_account_concurrency``; a throttle halves it, at most once per cooldown (a burst of
  throttled answers to requests already in flight is one signal); each success adds
  ``1/limit`` (about +1 per round trip of the whole window).
- **Rate** (429 only, the service's per-account request-rate quota): unpaced until 429s
  make up a real share of the answers (``RATE_CUT_SHARE`` of at least ``RATE_MIN_ANSWERS``
  answers in the last second, so a stray 429 does not slow a healthy run; once paced, any
  429 cuts the pace again, at most once per cooldown). Then requests
  are paced by a token bucket at 0.9 x the success rate the server allowed over the last
  second, growing back additively (5% of the cut rate per second). One request in flight
  can exceed a rate quota when the service answers fast, which is why concurrency alone is
  not enough.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

RATE_WINDOW = 1.0  # seconds of answers used to estimate what the server admits
MIN_RATE_WINDOW = 0.1
MIN_RATE = 1.0  # requests per second: never pace slower than this
RATE_CUT_SHARE = 0.1  # share of 429s among recent answers that means "over the quota"
RATE_MIN_ANSWERS = 20  # answers in the window before the share means anything
CUT_COOLDOWN = 1.0  # seconds: at most one cut per this (or per Retry-After, if longer)


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
        rate_recovery: float = 0.05,
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
        self._last_rate_cut = -math.inf
        self._successes: deque[float] = deque()
        self._rate_limited: deque[float] = deque()
        self._first_start: float | None = None
        self.throttles = 0

    @property
    def concurrency(self) -> int:
        return max(1, int(self._limit))

    def set_max_concurrency(self, maximum: int) -> None:
        """A new ceiling (a shared run splits an account's concurrency between runners)."""
        self.max_concurrency = max(1, maximum)
        self._limit = min(self._limit, float(self.max_concurrency))

    def pause_until(self, until: float) -> None:
        """Wait until ``until`` (monotonic) before any new request, e.g. another runner's
        Retry-After."""
        self.paused_until = max(self.paused_until, until)

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

    def on_throttle(
        self, now: float, retry_after: float | None, rate_limited: bool = True
    ) -> ThrottleChange | None:
        """A 429 (``rate_limited``) or 503 arrived. Returns the change when limits were cut."""
        self.throttles += 1
        pause = retry_after if retry_after is not None else self._default_pause
        self.paused_until = max(self.paused_until, now + pause)
        if rate_limited:
            self._rate_limited.append(now)
        self._trim(now)
        cooldown = max(pause, CUT_COOLDOWN)
        changed = False
        if now - self._last_cut >= cooldown:
            self._last_cut, changed = now, True
            self._limit = max(1.0, self._limit * self._decrease)
        # Once paced, any 429 means the pace is too fast; before, only a real share of them.
        over_quota = self.rate is not None or self._rate_limited_share() >= RATE_CUT_SHARE
        if rate_limited and now - self._last_rate_cut >= cooldown and over_quota:
            self._last_rate_cut, changed = now, True
            admitted = self._observed_rate(now)
            if self.rate is not None:
                self._refill(now)
                admitted = min(admitted, self.rate)
            new_rate = max(MIN_RATE, admitted * self._rate_decrease)
            self.rate, self._rate_time, self._tokens = new_rate, now, 0.0
            self._rate_step = max(1.0, new_rate * self._rate_recovery)
        if not changed:
            return None
        return ThrottleChange(
            self.concurrency,
            None if self.rate is None else round(self.rate, 1),
            self.paused_until,
            f"throttled; pausing {pause:.3g}s",
        )

    def _rate_limited_share(self) -> float:
        answers = len(self._successes) + len(self._rate_limited)
        if len(self._rate_limited) >= RATE_MIN_ANSWERS // 2:
            return 1.0  # a burst of 429s is a quota whatever else came back
        return len(self._rate_limited) / answers if answers >= RATE_MIN_ANSWERS else 0.0

    def _observed_rate(self, now: float) -> float:
        self._trim(now)
        if not self._successes:
            return MIN_RATE
        start = self._first_start if self._first_start is not None else now
        window = min(RATE_WINDOW, max(MIN_RATE_WINDOW, now - start))
        return len(self._successes) / window

    def _trim(self, now: float) -> None:
        for times in (self._successes, self._rate_limited):
            while times and times[0] < now - RATE_WINDOW:
                times.popleft()

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        elapsed = max(0.0, now - self._rate_time)
        self._rate_time = now
        self.rate += self._rate_step * elapsed  # additive recovery
        burst = max(1.0, self.rate * 0.05)
        self._tokens = min(burst, self._tokens + elapsed * self.rate)
