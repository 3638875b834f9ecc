"""Retry decisions (pure): backoff, Retry-After parsing, and what each error leads to."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from fleet_reimage.batch.errors import (
    AuthFailed,
    BadRequest,
    BatchError,
    BatchHTTPError,
    Conflict,
    NodeStateConflict,
    NotFound,
    OperationNotSupported,
    PoolStateConflict,
    RequestInDoubt,
    RequestNotSent,
    Throttled,
    TransientServerError,
    UnexpectedResponse,
    error_class_for,
)
from fleet_reimage.batch.retry import (
    MAX_SERVER_RETRY_AFTER,
    GiveUp,
    Reconcile,
    RetryAfter,
    RetryCounters,
    RetryDecision,
    RetryPolicy,
    backoff_delay,
    decide_retry,
    is_retryable,
    parse_retry_after,
)

NOW = 1_800_000_000.0
POLICY = RetryPolicy(max_attempts=4, max_connect_failures=3, initial_backoff=1.0, max_backoff=8.0)

# --- backoff ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(1, 10_000),
    initial=st.floats(0.0, 100.0, allow_nan=False),
    maximum=st.floats(0.0, 1000.0, allow_nan=False),
    jitter=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_full_jitter_bounds(
    attempt: int, initial: float, maximum: float, jitter: float
) -> None:
    delay = backoff_delay(attempt, initial, maximum, jitter)
    assert 0.0 <= delay <= min(maximum, initial * 2.0 ** min(attempt - 1, 1000))
    # Full jitter: exactly jitter * ceiling (the exponent is capped at 62 against overflow).
    ceiling = min(maximum, initial * 2.0 ** min(attempt - 1, 62))
    assert math.isclose(delay, ceiling * jitter, rel_tol=1e-9, abs_tol=1e-300)


@settings(max_examples=100, deadline=None)
@given(
    initial=st.floats(0.001, 10.0),
    maximum=st.floats(0.001, 600.0),
    attempts=st.lists(st.integers(1, 200), min_size=2, max_size=10),
)
def test_backoff_ceiling_is_monotone(initial: float, maximum: float, attempts: list[int]) -> None:
    almost_one = math.nextafter(1.0, 0.0)
    ceilings = [backoff_delay(n, initial, maximum, almost_one) for n in sorted(attempts)]
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] <= maximum


def test_backoff_values() -> None:
    assert backoff_delay(1, 1.0, 60.0, 0.5) == 0.5
    assert backoff_delay(3, 1.0, 60.0, 0.5) == 2.0
    assert backoff_delay(10, 1.0, 60.0, 0.5) == 30.0  # capped at 60, then jittered
    assert backoff_delay(10**9, 1.0, 60.0, 0.999) == pytest.approx(59.94)  # no overflow
    assert backoff_delay(4, 1.0, 60.0, 0.0) == 0.0
    assert backoff_delay(4, 1.0, 60.0, 7.0) == 8.0  # jitter clamped into [0, 1]
    assert backoff_delay(4, 1.0, 60.0, -1.0) == 0.0
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 60.0, 0.5)


# --- Retry-After ---------------------------------------------------------------------------


def h(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({name.replace("_", "-"): value for name, value in values.items()})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (h(Retry_After="7"), 7.0),
        (h(Retry_After=" 1.5 "), 1.5),
        (h(Retry_After="0"), 0.0),
        (h(Retry_After="-5"), 0.0),
        (h(Retry_After="99999"), MAX_SERVER_RETRY_AFTER),
        (h(Retry_After="inf"), MAX_SERVER_RETRY_AFTER),
        (h(Retry_After="nan"), 0.0),
        (h(Retry_After="soon"), None),
        (h(Retry_After=""), None),
        (h(retry_after_ms="250"), 0.25),
        (h(x_ms_retry_after_ms="1500"), 1.5),
        (h(retry_after_ms="-1"), 0.0),
        (h(retry_after_ms="9999999"), MAX_SERVER_RETRY_AFTER),
        (h(retry_after_ms="abc"), None),
        (h(retry_after_ms="abc", x_ms_retry_after_ms="40"), 0.04),
        # Precedence as azure-core: Retry-After, then retry-after-ms, then x-ms-retry-after-ms.
        (h(Retry_After="3", retry_after_ms="100", x_ms_retry_after_ms="200"), 3.0),
        (h(retry_after_ms="100", x_ms_retry_after_ms="200"), 0.1),
        # A Retry-After we cannot read does not hide a usable ms header.
        (h(Retry_After="garbage", retry_after_ms="100"), 0.1),
        (h(RETRY_AFTER="2"), 2.0),
        (h(), None),
    ],
)
def test_parse_retry_after(headers: CIMultiDict[str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


def test_parse_retry_after_plain_dict_either_spelling() -> None:
    assert parse_retry_after({"Retry-After": "4"}, NOW) == 4.0
    assert parse_retry_after({"retry-after": "4"}, NOW) == 4.0


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after(h(Retry_After=formatdate(NOW + 30, usegmt=True)), NOW) == 30.0
    assert parse_retry_after(h(Retry_After=formatdate(NOW - 30, usegmt=True)), NOW) == 0.0
    far = formatdate(NOW + 86_400, usegmt=True)
    assert parse_retry_after(h(Retry_After=far), NOW) == MAX_SERVER_RETRY_AFTER
    assert parse_retry_after(h(Retry_After="Mon, 99 Foo 2026 99:99:99 GMT"), NOW) is None


@pytest.fixture
def not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local time zone far from UTC, so "local vs GMT" mistakes show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("not_utc")
@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:47 GMT",  # IMF-fixdate
        "Sun, 06 Nov 1994 08:49:47 -0000",  # no zone claimed: still GMT
        "Sun Nov  6 08:49:47 1994",  # asctime, which HTTP recipients must accept
    ],
)
def test_http_dates_are_gmt_whatever_the_local_zone(text: str) -> None:
    now = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
    assert parse_retry_after(h(Retry_After=text), now) == 10.0


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["Retry-After", "retry-after-ms", "x-ms-retry-after-ms", "Other"]),
        st.text(max_size=40),
    )
)
def test_parse_retry_after_never_raises_and_stays_in_range(headers: dict[str, str]) -> None:
    seconds = parse_retry_after(CIMultiDict(headers), NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_SERVER_RETRY_AFTER


# --- error classes and decisions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "InvalidQueryParameterValue", BadRequest),
        (400, None, BadRequest),
        (401, "AuthenticationFailed", AuthFailed),
        (403, "InsufficientAccountPermissions", AuthFailed),
        (404, "NodeNotFound", NotFound),
        (404, "PoolNotFound", NotFound),
        (409, "NodeBeingReimaged", NodeStateConflict),
        (409, "NodeStateUnusable", NodeStateConflict),
        (409, "OperationInvalidForCurrentState", NodeStateConflict),
        (409, "PoolBeingResized", PoolStateConflict),
        (409, "OperationNotValidOnNode", OperationNotSupported),
        (409, "SomethingNew", Conflict),
        (429, "TooManyRequests", Throttled),
        (408, None, TransientServerError),
        (500, "InternalError", TransientServerError),
        (502, None, TransientServerError),
        (503, "ServerBusy", TransientServerError),
        (504, None, TransientServerError),
        (200, None, UnexpectedResponse),
        (302, None, UnexpectedResponse),
        (418, None, UnexpectedResponse),
    ],
)
def test_error_class_for(status: int, code: str | None, cls: type[BatchHTTPError]) -> None:
    assert error_class_for(status, code) is cls


def http_error(status: int, code: str | None = None, retry_after: float | None = None) -> Exception:
    return error_class_for(status, code)(status, code=code, retry_after=retry_after)


def decide(
    error: BatchError, counters: RetryCounters | None = None, jitter: float = 0.5
) -> tuple[RetryCounters, RetryDecision]:
    counters = (counters or RetryCounters()).after(error)
    return counters, decide_retry(error, counters, POLICY, jitter)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "MissingRequiredQueryParameter"),
        (400, "InvalidRequestBody"),
        (401, None),
        (403, "AuthenticationFailed"),
        (404, "NodeNotFound"),
        (409, "NodeBeingReimaged"),
        (409, "OperationNotValidOnNode"),
        (409, "PoolBeingDeleted"),
        (200, None),
    ],
)
def test_never_retried(status: int, code: str | None) -> None:
    error = http_error(status, code, retry_after=1.0)  # even when the server says "retry"
    assert isinstance(error, BatchError)
    assert not is_retryable(error)
    _, decision = decide(error)
    assert isinstance(decision, GiveUp)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retried_with_backoff(status: int) -> None:
    error = http_error(status)
    assert isinstance(error, BatchError) and is_retryable(error)
    counters, decision = decide(error, jitter=0.5)
    assert isinstance(decision, RetryAfter)
    assert decision.delay == 0.5 and not decision.server_asked  # attempt 1: uniform(0, 1)
    if status == 429:
        assert (counters.throttles, counters.failures) == (1, 0)
    else:
        assert (counters.throttles, counters.failures) == (0, 1)


@pytest.mark.parametrize("status", [429, 503])
def test_server_retry_after_wins_over_backoff(status: int) -> None:
    error = http_error(status, retry_after=12.5)
    assert isinstance(error, BatchError)
    _, decision = decide(error)
    assert decision == RetryAfter(12.5, str(error), server_asked=True)


def test_answered_failures_give_up_at_max_attempts() -> None:
    counters = RetryCounters()
    decisions = []
    for _ in range(POLICY.max_attempts):
        error = http_error(500, "InternalError")
        assert isinstance(error, BatchError)
        counters, decision = decide(error, counters, jitter=0.999)
        decisions.append(decision)
    assert all(isinstance(d, RetryAfter) for d in decisions[:-1])
    assert isinstance(decisions[-1], GiveUp) and "4 attempts" in decisions[-1].reason
    # The backoff grew with the failure count: ~1, ~2, ~4 (jitter ~1).
    delays = [d.delay for d in decisions[:-1] if isinstance(d, RetryAfter)]
    assert delays == sorted(delays) and delays[-1] > 3.9


def test_throttles_do_not_count_toward_max_attempts() -> None:
    counters = RetryCounters()
    for _ in range(50):
        error = Throttled(429, code="TooManyRequests", retry_after=0.1)
        counters, decision = decide(error, counters)
        assert isinstance(decision, RetryAfter) and decision.server_asked
    assert counters == RetryCounters(failures=0, connect_failures=0, throttles=50)
    # Many throttles leave the whole failure budget for real failures.
    for _ in range(POLICY.max_attempts - 1):
        counters, decision = decide(TransientServerError(503), counters)
        assert isinstance(decision, RetryAfter)
    # A throttle's own backoff (no Retry-After) uses the throttle count, capped.
    _, decision = decide(Throttled(429), counters, jitter=0.999)
    assert isinstance(decision, RetryAfter) and decision.delay <= POLICY.max_backoff


def test_connect_failures_are_counted_apart() -> None:
    counters = RetryCounters(failures=POLICY.max_attempts - 1)  # one answered failure left
    for n in range(1, POLICY.max_connect_failures):
        counters, decision = decide(RequestNotSent("refused"), counters, jitter=0.999)
        assert isinstance(decision, RetryAfter) and not decision.server_asked
        assert counters.connect_failures == n and counters.failures == POLICY.max_attempts - 1
    counters, decision = decide(RequestNotSent("refused"), counters)
    assert isinstance(decision, GiveUp) and "could not connect after 3" in decision.reason
    # And the answered-failure budget was untouched by all that.
    _, decision = decide(TransientServerError(500), RetryCounters(failures=0))
    assert isinstance(decision, RetryAfter)


def test_in_doubt_means_reconcile_then_give_up() -> None:
    error = RequestInDoubt("connection lost", client_request_id="c", sent_at=NOW)
    counters, decision = decide(error)
    assert decision == Reconcile(str(error)) and counters.failures == 1
    counters = RetryCounters(failures=POLICY.max_attempts - 1)
    counters, decision = decide(error, counters)
    assert isinstance(decision, GiveUp) and "no answer after 4 attempts" in decision.reason


def test_in_doubt_after_other_failures_shares_their_budget() -> None:
    counters = RetryCounters()
    for _ in range(POLICY.max_attempts - 1):
        counters, _ = decide(TransientServerError(502), counters)
    _, decision = decide(RequestInDoubt("timeout"), counters)
    assert isinstance(decision, GiveUp)


def test_counters_are_immutable() -> None:
    start = RetryCounters()
    after = start.after(TransientServerError(500))
    assert start == RetryCounters() and after.failures == 1
    with pytest.raises(AttributeError):
        after.failures = 5  # type: ignore[misc]
