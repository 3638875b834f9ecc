"""What a node's answer means for the rollout (pure decisions; the executor acts on them).

After each reimage/reboot attempt, a read of an in-doubt node, or a health poll, these
functions say what happens next:

====================================  ==============================================
answer                                next step
====================================  ==============================================
202                                   accepted (then the health gate, if any)
in doubt (timeout, reset), 2xx != 202 read the node first (reconcile), never re-POST
404 NodeNotFound                      ``gone``: the node left the pool, not a failure
404 PoolNotFound                      stop the pool
409 NodeBeing* etc., ours in doubt    accepted: the node is busy with our own request
409 NodeBeing*, PoolBeing*            busy for other reasons: retry until busy_timeout,
                                      then ``skipped``
409 OperationNotValidOnNode/Pool      stop the pool at once: it cannot do this action
401/403 (after one refresh)           stop the run: auth is not a node's problem
400, other 4xx, other 409             ``failed`` with the server's message
429, 408, 5xx, connect failure        retry with backoff / the server's Retry-After
====================================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from ..batch.errors import (
    AuthFailed,
    BatchError,
    BatchHTTPError,
    NodeStateConflict,
    NotFound,
    OperationNotSupported,
    PoolStateConflict,
    RequestInDoubt,
    Throttled,
    UnexpectedResponse,
)
from ..batch.explain import describe
from ..batch.models import RECOVERING_STATES, NodeInfo
from ..batch.retry import GiveUp, Reconcile, RetryCounters, RetryPolicy, backoff_delay, decide_retry
from ..journal.model import TargetState

BROKEN_STATES = frozenset({"starttaskfailed", "unusable"})
# After this long past the server-side timeout, an in-doubt request can no longer be applied.
IN_DOUBT_MARGIN = 2.0
_OWN_BUSY_CODES = {
    "reimage": frozenset({"NodeBeingReimaged", "NodeBeingStarted"}),
    "reboot": frozenset({"NodeBeingRebooted", "NodeBeingStarted"}),
}


@dataclass(frozen=True, slots=True)
class Accepted:
    reason: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay: float
    reason: str
    throttled: bool = False  # 429/503: tell the account's adaptive throttle
    busy: bool = False  # 409 busy for other reasons: counts toward busy_timeout


@dataclass(frozen=True, slots=True)
class ReconcileLater:
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class Settle:
    state: TargetState  # FAILED, GONE or SKIPPED
    reason: str


@dataclass(frozen=True, slots=True)
class StopPool:
    reason: str


@dataclass(frozen=True, slots=True)
class StopRun:
    reason: str


NodeStep = Accepted | RetryLater | ReconcileLater | Settle | StopPool | StopRun


@dataclass(frozen=True, slots=True)
class NodeRetryContext:
    """What the decision needs to know about the node's history in this run."""

    action: str  # reimage | reboot
    counters: RetryCounters  # already including the error being decided
    maybe_applied: bool  # an earlier attempt of ours was in doubt
    busy_for: float | None  # seconds since the node was first found busy, None if never
    busy_timeout: float
    policy: RetryPolicy


def after_action_error(error: BatchError, ctx: NodeRetryContext, jitter: float) -> NodeStep:
    """The next step after a reimage/reboot attempt failed with ``error``."""
    if isinstance(error, RequestInDoubt):
        return ReconcileLater(0.0, f"in doubt: {error}")
    if isinstance(error, UnexpectedResponse) and 200 <= error.status < 300:
        return ReconcileLater(0.0, f"unexpected success status: {error}")
    if isinstance(error, AuthFailed):
        return StopRun(f"authentication failed: {describe(error)}; no node is affected")
    if isinstance(error, NotFound):
        if error.code == "PoolNotFound":
            return StopPool(f"the pool no longer exists: {error}")
        return Settle(TargetState.GONE, f"the node left the pool: {error}")
    if isinstance(error, OperationNotSupported):
        reason = error.values.get("Reason") or error.message
        return StopPool(f"the pool cannot {ctx.action} its nodes: {reason} ({error.code})")
    if isinstance(error, (NodeStateConflict, PoolStateConflict)):
        return _busy_step(error, ctx, jitter)
    decision = decide_retry(error, ctx.counters, ctx.policy, jitter)
    if isinstance(decision, GiveUp):
        # Throttling is the service's doing, never the node's failure.
        state = TargetState.SKIPPED if isinstance(error, Throttled) else TargetState.FAILED
        return Settle(state, decision.reason)
    if isinstance(decision, Reconcile):  # pragma: no cover - in doubt handled above
        return ReconcileLater(0.0, decision.reason)
    throttled = isinstance(error, Throttled) or (
        isinstance(error, BatchHTTPError) and error.status == 503
    )
    return RetryLater(decision.delay, decision.reason, throttled=throttled)


def _busy_step(error: BatchHTTPError, ctx: NodeRetryContext, jitter: float) -> NodeStep:
    if ctx.maybe_applied and error.code in _OWN_BUSY_CODES.get(ctx.action, frozenset()):
        return Accepted(f"busy with our own earlier request ({error.code})")
    busy_for = ctx.busy_for or 0.0
    if busy_for >= ctx.busy_timeout:
        return Settle(
            TargetState.SKIPPED, f"node busy for other reasons for {busy_for:.0f}s: {error.code}"
        )
    rounds = max(1, ctx.counters.failures)
    delay = max(
        ctx.policy.initial_backoff,
        backoff_delay(rounds, ctx.policy.initial_backoff, ctx.policy.max_backoff, jitter),
    )
    return RetryLater(
        min(delay, max(0.0, ctx.busy_timeout - busy_for) + 0.001),
        f"node busy: {error.code}",
        busy=True,
    )


def after_reconcile(
    node: NodeInfo | None, *, sent_at: float, now: float, server_timeout: float
) -> NodeStep:
    """The next step for an in-doubt node, from what a read of it showed.

    ``sent_at`` and ``now`` are wall-clock epoch seconds. The request can no longer be
    applied once the server-side ``timeout`` has passed since it was sent; before that, a
    node that looks untouched is read again later rather than sent a second request.
    """
    if node is None:
        return Settle(TargetState.GONE, "the node left the pool")
    if node.state in RECOVERING_STATES:
        return Accepted(f"the in-doubt request took effect (node is {node.state})")
    if node.last_boot_time is not None and node.last_boot_time > sent_at:
        return Accepted("the in-doubt request took effect (node booted since it was sent)")
    window_end = sent_at + server_timeout + IN_DOUBT_MARGIN
    if now < window_end:
        return ReconcileLater(window_end - now, "the server may still apply the request")
    return RetryLater(0.0, "the in-doubt request was not applied")


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    state: TargetState | None  # HEALTHY, FAILED, GONE; None while still recovering
    reason: str


def health_verdict(
    node: NodeInfo | None, *, sent_at: float, ready_states: frozenset[str]
) -> HealthVerdict:
    """Is an accepted node back? Ready with a lastBootTime after our request means yes."""
    if node is None:
        return HealthVerdict(TargetState.GONE, "the node left the pool while recovering")
    booted = node.last_boot_time is not None and node.last_boot_time > sent_at
    if node.state in ready_states and booted:
        return HealthVerdict(TargetState.HEALTHY, f"back {node.state} with a new boot")
    if node.state in BROKEN_STATES:
        return HealthVerdict(TargetState.FAILED, f"node came back {node.state}")
    return HealthVerdict(None, node.state)
