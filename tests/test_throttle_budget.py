"""Adaptive throttle (AIMD) and the failure budget (pure)."""

from __future__ import annotations

import pytest

from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.throttle import AdaptiveThrottle


def test_unthrottled_account_is_limited_only_by_concurrency() -> None:
    throttle = AdaptiveThrottle(4)
    assert throttle.wait_time(in_flight=3, now=0.0) == 0.0
    assert throttle.wait_time(in_flight=4, now=0.0) is None
    assert throttle.rate is None


def test_a_stray_throttle_halves_concurrency_but_pauses_nobody_else() -> None:
    throttle = AdaptiveThrottle(32)
    for i in range(100):
        throttle.started(i * 0.001)
        throttle.on_success(i * 0.001)
    change = throttle.on_throttle(0.1, retry_after=2.0)
    assert change is not None and throttle.concurrency == 16
    assert throttle.wait_time(0, 0.5) == 0.0  # only the throttled request waits (its retry)
    assert throttle.rate is None  # one 429 among 100 answers is not a rate quota


def test_real_throttling_pauses_everyone_for_retry_after() -> None:
    throttle = AdaptiveThrottle(32)
    for i in range(10):
        throttle.on_throttle(1.0 + i * 0.001, retry_after=2.0)
    assert throttle.wait_time(0, 1.5) == pytest.approx(1.509)  # the whole account waits
    assert throttle.rate is not None


def test_paused_time_does_not_count_as_a_slow_server() -> None:
    throttle = AdaptiveThrottle(64)
    now = 0.0
    for _ in range(100):  # 200/s admitted for half a second
        throttle.started(now)
        throttle.on_success(now)
        now += 0.005
    throttle.pause_until(now + 0.4)  # then another runner's Retry-After pause
    now += 0.4
    for _ in range(40):
        throttle.on_throttle(now, retry_after=0.01)
    assert throttle.rate is not None and throttle.rate > 100  # not 100/s diluted by the pause


def test_a_burst_of_throttles_counts_as_one_signal() -> None:
    throttle = AdaptiveThrottle(32)
    first = throttle.on_throttle(1.0, retry_after=0.5)
    others = [throttle.on_throttle(1.0 + i * 0.01, retry_after=0.5) for i in range(1, 9)]
    assert first is not None and all(o is None for o in others)  # cut once; not real yet
    assert throttle.concurrency == 16
    assert throttle.throttles == 9
    assert throttle.rate is None  # too few answers yet to call it a rate quota


def test_additive_increase_after_success() -> None:
    throttle = AdaptiveThrottle(8)
    throttle.on_throttle(0.0, retry_after=0.0)
    assert throttle.concurrency == 4
    for i in range(200):
        throttle.on_success(1.0 + i * 0.01)
    assert throttle.concurrency == 8  # grew back, capped at the maximum


def test_rate_pacing_spaces_requests_and_recovers() -> None:
    throttle = AdaptiveThrottle(64)
    now = 0.0
    for _ in range(50):  # 50 successes in 0.5 s: 100/s admitted
        throttle.started(now)
        throttle.on_success(now)
        now += 0.01
    for _ in range(20):  # then a run of 429s: over the quota
        throttle.on_throttle(now, retry_after=0.0)
        now += 0.001
    rate = throttle.rate
    assert rate is not None and 40 <= rate <= 95  # 0.9 x what the server admitted
    # Start as fast as allowed for 10 s and count starts: close to the paced rate.
    starts, t = 0, now
    while t < now + 10.0:
        wait = throttle.wait_time(0, t)
        if wait == 0.0:
            throttle.started(t)
            starts += 1
            t += 0.0001
        else:
            t += wait if wait else 0.001
    assert 10 * rate * 0.95 <= starts <= 10 * (rate + 10 * max(1.0, rate * 0.05)) * 1.05
    assert throttle.rate > rate  # additive recovery while no throttle arrives


def test_ten_429s_in_a_second_are_a_quota_even_without_other_answers() -> None:
    throttle = AdaptiveThrottle(32)
    for i in range(10):
        throttle.on_throttle(1.0 + i * 0.001, retry_after=0.01)
    assert throttle.rate is not None


def test_stray_429s_do_not_pace_a_healthy_account() -> None:
    throttle = AdaptiveThrottle(16)
    now = 0.0
    for i in range(1000):
        throttle.started(now)
        throttle.on_success(now)
        if i % 50 == 0:
            throttle.on_throttle(now, retry_after=0.01)
        now += 0.005
    assert throttle.rate is None
    assert throttle.concurrency >= 8


def test_failure_budget_edges() -> None:
    budget = FailureBudget(limit=2)
    assert not budget.record_failure()
    assert not budget.record_failure()
    assert not budget.exceeded  # exactly at the budget: the run goes on
    assert budget.record_failure()  # past it: stop
    assert budget.exceeded
    assert not budget.record_failure()  # reported once


def test_zero_budget_stops_at_first_failure_and_forgiveness() -> None:
    budget = FailureBudget(limit=0)
    assert budget.record_failure()
    resumed = FailureBudget(limit=0, failures=1, forgiven=1)
    assert not resumed.exceeded
    assert resumed.record_failure()
