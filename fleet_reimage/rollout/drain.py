"""Draining a node before its action: the pure decisions (``engine/drain.py`` acts on them).

A node that runs tasks when its turn comes is drained first: its scheduling is disabled
with ``taskcompletion`` (no new task lands, running ones go on), then the pool's polls tell
when its tasks have ended (``runningTasksCount``, never a GET per node). The action follows
with the plan's option if the node drained, or with the drain's ``then`` option if tasks
still ran when the timeout passed. Idle nodes skip the drain.

What a dead run left is read from the journal's attempts: a target whose latest attempt is a
``disablescheduling`` that may have landed was drained and never acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleet_reimage.journal.model import AttemptOutcome, AttemptRecord

DISABLE = "disablescheduling"
# The drain's own option: running tasks go on, nothing new lands.
DRAIN_OPTION = "taskcompletion"
# Outcomes after which the disable may have taken effect.
_MAYBE_LANDED = frozenset({AttemptOutcome.ACCEPTED, AttemptOutcome.IN_DOUBT, None})


@dataclass(frozen=True, slots=True)
class DrainEnd:
    timed_out: bool
    option: str  # the action's option
    duration: float  # seconds


def needs_drain(running_tasks: int | None) -> bool:
    """Drain only a node seen running tasks; an idle (or unlisted) node skips the drain."""
    return running_tasks is not None and running_tasks > 0


def drain_end(
    running_tasks: int | None,
    waited: float,
    timeout: float,
    *,
    plan_option: str,
    then: str,
) -> DrainEnd | None:
    """Whether a drain is over, given the running tasks the latest poll saw (None or 0: none)
    and how long it has waited; None while it should go on waiting."""
    if not running_tasks:
        return DrainEnd(timed_out=False, option=plan_option, duration=waited)
    if waited >= timeout:
        return DrainEnd(timed_out=True, option=then, duration=waited)
    return None


def left_drains(
    attempts: Iterable[AttemptRecord], undone_at: Mapping[int, float] | None = None
) -> set[int]:
    """Targets whose latest attempt is a disable that may have landed, not undone since
    (``undone_at``: when a stopping run enabled a target's node again): drained by a run
    that stopped (or died) before their action was sent."""
    undone = undone_at or {}
    latest: dict[int, AttemptRecord] = {}
    for attempt in attempts:
        known = latest.get(attempt.target_id)
        if known is None or attempt.attempt_no > known.attempt_no:
            latest[attempt.target_id] = attempt
    return {
        target_id
        for target_id, attempt in latest.items()
        if attempt.operation == DISABLE
        and attempt.outcome in _MAYBE_LANDED
        and undone.get(target_id, float("-inf")) < attempt.sent_at
    }


def ever_drained(attempts: Iterable[AttemptRecord]) -> set[int]:
    """Targets with a disable that may have landed, acted on since or not."""
    return {a.target_id for a in attempts if a.operation == DISABLE and a.outcome in _MAYBE_LANDED}
