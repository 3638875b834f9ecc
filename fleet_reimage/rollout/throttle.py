"""Adaptive throttling for one Batch account, shared by all its pools (pure: time is passed in).

Two kinds of 429/503 look alike on the wire and need different answers:

- a **stray** throttle (a busy front end, a blip): only the throttled request waits its
  Retry-After (the executor schedules its retry); everything else goes on;
- **real throttling** (at least ``RATE_BURST`` 429s, making up ``RATE_CUT_SHARE`` of the
  latest ``SHARE_ANSWERS`` answers): the whole
  account pauses until the server's Retry-After has passed, so one throttle never becomes a
  thundering herd of retries, and requests are then paced.

On top of that, two AIMD loops in the spirit of TCP congestion control:

- **Concurrency** (any 429/503): the account's requests in flight start at the plan's
  ``per_account_concurrency``; a throttle halves it, at most once per ``CUT_COOLDOWN`` (a burst
  of throttled answers to requests already in flight is one signal); each success adds
  ``1/limit`` (about +1 per round trip of the whole window).
- **Rate** (real 429 throttling only, the service's per-account request-rate quota):
  requests are paced by a token bucket at ``rate_decrease`` x the success rate the server
  admitted over the latest ``RATE_SUCCESSES`` successes (time spent paused is not counted),
  growing back
  additively by ``rate_recovery`` of the cut rate per second. One request in flight can
  exceed a rate quota when the service answers fast, which is why concurrency alone is not
  enough.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

RATE_SUCCESSES = 200  # the admitted rate is measured over this many latest successes
MIN_RATE_WINDOW = 0.1
MIN_RATE = 1.0  # requests per second: never pace slower than this
RATE_CUT_SHARE = 0.25  # share of 429s among the latest answers that means "over the quota"
RATE_BURST = 10  # at least this many 429s among them: enough to tell a quota from a blip
SHARE_ANSWERS = 100  # the share of 429s is judged over this many latest answers ...
SHARE_MAX_AGE = 10.0  # ... no older than this (seconds); successes and pauses likewise
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
        rate_decrease: float = 0.9,
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
        self._pauses: deque[tuple[float, float]] = deque()  # recent (start, end) pauses
        self._last_cut = -math.inf
        self._last_rate_cut = -math.inf
        self._successes: deque[float] = deque(maxlen=RATE_SUCCESSES)  # for the admitted rate
        # The last answers (time, was it a 429), by count rather than by time: during a pause
        # no answer arrives, and a time window would then hold only the 429s that caused it.
        self._answers: deque[tuple[float, bool]] = deque(maxlen=SHARE_ANSWERS)
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
        if until > self.paused_until:
            self._pauses.append((max(self.paused_until, until - 3600.0), until))
            self.paused_until = until

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
        self._answers.append((now, False))
        self._trim(now)

    def on_throttle(
        self, now: float, retry_after: float | None, rate_limited: bool = True
    ) -> ThrottleChange | None:
        """A 429 (``rate_limited``) or 503 arrived. Returns the change when limits were cut."""
        self.throttles += 1
        pause = retry_after if retry_after is not None else self._default_pause
        if rate_limited:
            self._answers.append((now, True))
        self._trim(now)
        real = rate_limited and self._throttling_is_real()
        changed = False
        if real and now + pause > self.paused_until:
            self._pauses.append((max(now, self.paused_until), now + pause))
            self.paused_until = now + pause
            changed = True
        cooldown = max(pause, CUT_COOLDOWN)
        if now - self._last_cut >= cooldown:
            self._last_cut, changed = now, True
            self._limit = max(1.0, self._limit * self._decrease)
        if real and now - self._last_rate_cut >= cooldown:
            self._last_rate_cut, changed = now, True
            self._cut_rate(now)
        if not changed:
            return None
        what = f"pausing {pause:.3g}s" if real else "this request waits its Retry-After"
        rate = None if self.rate is None else round(self.rate, 1)
        return ThrottleChange(self.concurrency, rate, self.paused_until, f"throttled; {what}")

    def _cut_rate(self, now: float) -> None:
        admitted = self._observed_rate(now)
        if self.rate is not None:
            self._refill(now)
            admitted = min(admitted, self.rate)
        new_rate = max(MIN_RATE, admitted * self._rate_decrease)
        self.rate, self._rate_time, self._tokens = new_rate, now, 0.0
        self._rate_step = max(1.0, new_rate * self._rate_recovery)

    def _throttling_is_real(self) -> bool:
        """A real share of the latest answers are 429s, and enough of them to tell (a count
        alone would not do: 5% of a fast account's answers is many 429s a second, and still
        only a blip)."""
        throttled = sum(1 for _, was_429 in self._answers if was_429)
        return throttled >= RATE_BURST and throttled / len(self._answers) >= RATE_CUT_SHARE

    def _observed_rate(self, now: float) -> float:
        """Successes per second over the latest successes, not counting time spent paused."""
        self._trim(now)
        if not self._successes:
            return MIN_RATE
        start = self._successes[0]
        paused = sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in self._pauses)
        return len(self._successes) / max(MIN_RATE_WINDOW, now - start - paused)

    def _trim(self, now: float) -> None:
        while self._successes and self._successes[0] < now - SHARE_MAX_AGE:
            self._successes.popleft()
        while self._answers and self._answers[0][0] < now - SHARE_MAX_AGE:
            self._answers.popleft()
        while self._pauses and self._pauses[0][1] < now - SHARE_MAX_AGE:
            self._pauses.popleft()

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        elapsed = max(0.0, now - self._rate_time)
        self._rate_time = now
        self.rate += self._rate_step * elapsed  # additive recovery
        burst = max(1.0, self.rate * 0.05)
        self._tokens = min(burst, self._tokens + elapsed * self.rate)
