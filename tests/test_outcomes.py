"""What an answer means for a node (pure decisions)."""

from __future__ import annotations

import pytest

from fleet_reimage.batch.errors import (
    AuthFailed,
    BadRequest,
    NodeStateConflict,
    NotFound,
    OperationNotSupported,
    PoolStateConflict,
    RequestInDoubt,
    RequestNotSent,
    Throttled,
    TransientServerError,
    UnexpectedResponse,
)
from fleet_reimage.batch.models import NodeInfo
from fleet_reimage.batch.retry import RetryCounters, RetryPolicy
from fleet_reimage.journal.model import TargetState
from fleet_reimage.rollout.outcomes import (
    Accepted,
    NodeRetryContext,
    ReconcileLater,
    RetryLater,
    Settle,
    StopPool,
    StopRun,
    after_action_error,
    after_reconcile,
    health_verdict,
)

POLICY = RetryPolicy(max_attempts=3, max_connect_failures=3, initial_backoff=1.0, max_backoff=8.0)


def ctx(
    error: Exception,
    *,
    maybe_applied: bool = False,
    busy_for: float | None = None,
    prior: RetryCounters | None = None,
) -> NodeRetryContext:
    counters = (prior or RetryCounters()).after(error)  # type: ignore[arg-type]
    return NodeRetryContext("reimage", counters, maybe_applied, busy_for, 600.0, POLICY)


def decide(error: Exception, **kwargs: object) -> object:
    return after_action_error(error, ctx(error, **kwargs), 0.5)  # type: ignore[arg-type]


def test_in_doubt_and_unexpected_success_are_reconciled_never_resent() -> None:
    assert isinstance(decide(RequestInDoubt("timeout")), ReconcileLater)
    assert isinstance(decide(UnexpectedResponse(200)), ReconcileLater)
    assert isinstance(decide(UnexpectedResponse(418)), Settle)


def test_not_found_is_gone_and_missing_pool_stops_the_pool() -> None:
    step = decide(NotFound(404, code="NodeNotFound"))
    assert isinstance(step, Settle) and step.state is TargetState.GONE
    assert isinstance(decide(NotFound(404, code="PoolNotFound")), StopPool)


def test_unsupported_pool_stops_with_the_reason_value() -> None:
    error = OperationNotSupported(
        409,
        code="OperationNotValidOnNode",
        values={
            "Reason": "Operation reimage can be invoked only on pools created with "
            "cloudServiceConfiguration"
        },
    )
    step = decide(error)
    assert isinstance(step, StopPool)
    assert "cloudServiceConfiguration" in step.reason


def test_auth_stops_the_run_and_bad_request_fails_the_node() -> None:
    assert isinstance(decide(AuthFailed(403, code="AuthenticationFailed")), StopRun)
    step = decide(BadRequest(400, code="InvalidRequestBody", message="bad body"))
    assert isinstance(step, Settle) and step.state is TargetState.FAILED
    assert "bad body" in step.reason


def test_busy_for_our_own_in_doubt_request_is_accepted() -> None:
    error = NodeStateConflict(409, code="NodeBeingReimaged")
    assert isinstance(decide(error, maybe_applied=True), Accepted)
    step = decide(error, maybe_applied=False, busy_for=0.0)
    assert isinstance(step, RetryLater) and step.busy


def test_busy_for_others_until_the_deadline_then_skipped() -> None:
    error = PoolStateConflict(409, code="PoolBeingResized")
    step = decide(error, busy_for=599.0)
    assert isinstance(step, RetryLater) and step.delay <= 1.001 + 0.001
    step = decide(error, busy_for=600.0)
    assert isinstance(step, Settle) and step.state is TargetState.SKIPPED
    assert "PoolBeingResized" in step.reason


def test_throttle_uses_server_delay_and_is_not_counted_as_failure() -> None:
    error = Throttled(429, code="TooManyRequests", retry_after=7.0)
    prior = RetryCounters(failures=3, throttles=50)  # failures already at max_attempts
    step = decide(error, prior=prior)
    assert isinstance(step, RetryLater) and step.throttled and step.delay == 7.0


def test_transient_errors_retry_then_give_up() -> None:
    error = TransientServerError(500, code="InternalError")
    step = decide(error, prior=RetryCounters(failures=1))
    assert isinstance(step, RetryLater) and 0 <= step.delay <= 2.0 and not step.throttled
    busy = decide(TransientServerError(503, code="ServerBusy"))
    assert isinstance(busy, RetryLater) and busy.throttled
    step = decide(error, prior=RetryCounters(failures=2))
    assert isinstance(step, Settle) and step.state is TargetState.FAILED


def test_connect_failures_are_counted_apart() -> None:
    error = RequestNotSent("refused")
    step = decide(error, prior=RetryCounters(failures=2, connect_failures=0))
    assert isinstance(step, RetryLater)  # answered failures do not use up connect retries
    step = decide(error, prior=RetryCounters(connect_failures=2))
    assert isinstance(step, Settle) and step.state is TargetState.FAILED


def node(state: str, boot: float | None) -> NodeInfo:
    return NodeInfo("n1", state, boot, 0)


@pytest.mark.parametrize("state", ["reimaging", "rebooting", "starting", "waitingforstarttask"])
def test_reconcile_recovering_states_mean_applied(state: str) -> None:
    assert isinstance(
        after_reconcile(node(state, 1.0), sent_at=100.0, now=101.0, server_timeout=30.0), Accepted
    )


def test_reconcile_boot_after_send_means_applied() -> None:
    assert isinstance(
        after_reconcile(node("idle", 100.5), sent_at=100.0, now=200.0, server_timeout=30.0),
        Accepted,
    )


def test_reconcile_untouched_node_waits_for_the_server_window_then_retries() -> None:
    step = after_reconcile(node("idle", 50.0), sent_at=100.0, now=110.0, server_timeout=30.0)
    assert isinstance(step, ReconcileLater) and step.delay == pytest.approx(22.0)
    step = after_reconcile(node("idle", 50.0), sent_at=100.0, now=133.0, server_timeout=30.0)
    assert isinstance(step, RetryLater)
    gone = after_reconcile(None, sent_at=100.0, now=133.0, server_timeout=30.0)
    assert isinstance(gone, Settle) and gone.state is TargetState.GONE


def test_health_verdicts() -> None:
    ready = frozenset({"idle", "running"})
    assert (
        health_verdict(node("idle", 101.0), sent_at=100.0, ready_states=ready).state
        is TargetState.HEALTHY
    )
    assert health_verdict(node("idle", 99.0), sent_at=100.0, ready_states=ready).state is None
    assert health_verdict(node("starting", 101.0), sent_at=100.0, ready_states=ready).state is None
    failed = health_verdict(node("starttaskfailed", 101.0), sent_at=100.0, ready_states=ready)
    assert failed.state is TargetState.FAILED and "starttaskfailed" in failed.reason
    assert health_verdict(None, sent_at=100.0, ready_states=ready).state is TargetState.GONE


def test_a_node_throttled_without_end_is_skipped_not_failed() -> None:
    """Given up after exactly ``max_throttles`` throttled tries, as ``max_attempts`` counts
    attempts: the limit is how many tries are made, not how many are made before the last."""
    error = Throttled(429, code="TooManyRequests", retry_after=1.0)
    policy = RetryPolicy(max_attempts=3, max_throttles=5)
    counters = RetryCounters(throttles=4).after(error)  # the 5th throttled try
    ctx = NodeRetryContext("reimage", counters, False, None, 600.0, policy)
    step = after_action_error(error, ctx, 0.5)
    assert isinstance(step, Settle) and step.state is TargetState.SKIPPED
    assert "throttled after 5" in step.reason
    ok = NodeRetryContext(
        "reimage", RetryCounters(throttles=3).after(error), False, None, 600.0, policy
    )
    assert isinstance(after_action_error(error, ok, 0.5), RetryLater)
