"""What a node's attempt and its next step are recorded as in the journal (pure).

``node_work.py`` decides; this turns an answer (a 202 or an error) and the step decided
from it into the ``AttemptEnd`` row and the target state the journal keeps.
"""

from __future__ import annotations

import time

from fleet_reimage.batch.client import Accepted as HttpAccepted
from fleet_reimage.batch.errors import (
    BatchError,
    BatchHTTPError,
    RequestInDoubt,
    RequestNotSent,
    UnexpectedResponse,
)
from fleet_reimage.engine.runstate import RunTarget
from fleet_reimage.journal.model import AttemptEnd, AttemptOutcome, TargetState
from fleet_reimage.rollout.outcomes import Accepted, NodeStep, Settle, StopPool, StopRun


def target_state_for(step: NodeStep, accepted: TargetState) -> TargetState:
    """The state a target is left in by ``step`` (``accepted``: the run's accepted state)."""
    if isinstance(step, Accepted):
        return accepted
    if isinstance(step, Settle):
        return step.state
    if isinstance(step, StopPool):
        return TargetState.SKIPPED
    if isinstance(step, StopRun):
        return TargetState.PENDING
    return TargetState.IN_FLIGHT


def step_reason(step: NodeStep) -> str | None:
    """Why the step leaves the target where it is (settled, skipped, ...), if it says."""
    return getattr(step, "reason", None)


def attempt_end(
    run_id: str,
    target: RunTarget,
    client_request_id: str,
    answer: HttpAccepted | BatchError,
    step: NodeStep,
    latency_ms: float,
    accepted_state: TargetState,
) -> AttemptEnd:
    """The journal row for an attempt's answer (or its absence) and the step it led to."""
    status = request_id = code = message = None
    if isinstance(answer, HttpAccepted):
        outcome, status, request_id = AttemptOutcome.ACCEPTED, answer.status, answer.request_id
    elif isinstance(answer, RequestNotSent):
        outcome, message = AttemptOutcome.NOT_SENT, str(answer)
    elif isinstance(answer, RequestInDoubt):
        outcome, message = AttemptOutcome.IN_DOUBT, str(answer)
    else:
        assert isinstance(answer, BatchHTTPError)
        in_doubt = isinstance(answer, UnexpectedResponse) and 200 <= answer.status < 300
        outcome = AttemptOutcome.IN_DOUBT if in_doubt else AttemptOutcome.REJECTED
        status, request_id, code, message = (
            answer.status,
            answer.request_id,
            answer.code,
            answer.message,
        )
    return AttemptEnd(
        run_id,
        target.id,
        client_request_id,
        time.time(),
        outcome,
        target_state_for(step, accepted_state),
        status,
        request_id,
        code,
        message,
        round(latency_ms, 2),
        step_reason(step),
    )
