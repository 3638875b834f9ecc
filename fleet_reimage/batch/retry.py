"""Retry decisions, as pure functions (no sleeping here; the caller sleeps).

In the style of stamina and azure-core's retry policy: a decision takes what happened and
returns "retry after N seconds", "reconcile first" or "give up". Connect failures (the
server never saw the request) are counted apart from answered failures and in-doubt
timeouts (which may have had an effect), and throttling is not counted as a failure at all:
it is paced by the server's Retry-After and the account's adaptive throttle instead.

Backoff is exponential with full jitter: ``uniform(0, min(max_backoff, initial * 2**(n-1)))``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from fleet_reimage.units import count

from .errors import (
    BadRequest,
    BatchError,
    RequestInDoubt,
    RequestNotSent,
    Throttled,
    TransientServerError,
)

MAX_SERVER_RETRY_AFTER = 600.0  # never believe a server that asks us to wait longer than this


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th retry (1-based).

    ``jitter`` is a uniform random number in [0, 1) supplied by the caller, so this stays pure.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    exponent = min(attempt - 1, 62)  # 2**62 is already past any sensible maximum
    ceiling = min(maximum, initial * math.ldexp(1.0, exponent))
    return max(0.0, ceiling) * min(max(jitter, 0.0), 1.0)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked us to wait, as azure-core reads it.

    ``Retry-After`` first (delta-seconds or an HTTP date), then ``retry-after-ms``, then
    ``x-ms-retry-after-ms``. Garbage is ignored (None); negative values become 0; values
    are capped at ``MAX_SERVER_RETRY_AFTER``.
    """
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if raw:
        seconds = _seconds_or_date(raw.strip(), now)
        if seconds is not None:
            return _clamp(seconds)
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = headers.get(name)
        if raw:
            try:
                return _clamp(float(raw.strip()) / 1000.0)
            except ValueError:
                continue
    return None


def _seconds_or_date(raw: str, now: float) -> float | None:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime dates and "-0000" carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


def _clamp(seconds: float) -> float:
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_SERVER_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8  # answered failures + in-doubt, per node
    max_connect_failures: int = 8  # never-sent failures, counted apart
    max_throttles: int = 100  # 429s are not failures, but a request throttled forever ends
    initial_backoff: float = 1.0
    max_backoff: float = 60.0


@dataclass(frozen=True, slots=True)
class RetryCounters:
    """What a node has been through so far. Immutable: ``after`` returns the next one."""

    failures: int = 0  # answered retryable failures and in-doubt attempts
    connect_failures: int = 0
    throttles: int = 0

    def after(self, error: BatchError) -> RetryCounters:
        if isinstance(error, RequestNotSent):
            return RetryCounters(self.failures, self.connect_failures + 1, self.throttles)
        if isinstance(error, Throttled):
            return RetryCounters(self.failures, self.connect_failures, self.throttles + 1)
        return RetryCounters(self.failures + 1, self.connect_failures, self.throttles)


@dataclass(frozen=True, slots=True)
class RetryAfter:
    delay: float
    reason: str
    server_asked: bool  # the delay came from Retry-After (throttle pacing), not our backoff


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The request may have been applied: read the node before deciding anything."""

    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


RetryDecision = RetryAfter | Reconcile | GiveUp


def is_retryable(error: BatchError) -> bool:
    """408, 429, 500, 502, 503, 504 and connect failures; never 400 and the rest."""
    return isinstance(error, (Throttled, TransientServerError, RequestNotSent))


def decide_retry(
    error: BatchError, counters: RetryCounters, policy: RetryPolicy, jitter: float
) -> RetryDecision:
    """What to do after ``error``; ``counters`` must already include this error."""
    if isinstance(error, RequestInDoubt):
        if counters.failures >= policy.max_attempts:
            return GiveUp(f"no answer after {count(counters.failures, 'attempt')}: {error}")
        return Reconcile(str(error))
    if isinstance(error, BadRequest) or not is_retryable(error):
        return GiveUp(str(error))
    if isinstance(error, RequestNotSent):
        if counters.connect_failures >= policy.max_connect_failures:
            tries = count(counters.connect_failures, "try")
            return GiveUp(f"could not connect after {tries}: {error}")
        delay = backoff_delay(
            counters.connect_failures, policy.initial_backoff, policy.max_backoff, jitter
        )
        return RetryAfter(delay, str(error), server_asked=False)
    if isinstance(error, Throttled) and counters.throttles >= policy.max_throttles:
        return GiveUp(f"still throttled after {count(counters.throttles, 'try')}: {error}")
    if not isinstance(error, Throttled) and counters.failures >= policy.max_attempts:
        return GiveUp(f"gave up after {count(counters.failures, 'attempt')}: {error}")
    server_delay = getattr(error, "retry_after", None)
    if server_delay is not None:
        return RetryAfter(server_delay, str(error), server_asked=True)
    nth = counters.throttles if isinstance(error, Throttled) else counters.failures
    delay = backoff_delay(nth, policy.initial_backoff, policy.max_backoff, jitter)
    return RetryAfter(delay, str(error), server_asked=False)
