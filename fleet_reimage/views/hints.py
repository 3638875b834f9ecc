"""The command that continues a run: one that works, not the one that refuses (pure).

A plain ``fleet-reimage resume RUN --journal J`` is not always enough:

* a run stopped by its **failure budget** stops again at once, since the failures still
  exceed the budget: the command carries ``--accept-failures`` (forgive the failures so far;
  ``--failure-budget N`` instead sets a new budget, and the hint says so);
* a run whose **deadline** has passed stops again at once: the command carries a new window,
  ``--deadline 1h`` (an ISO time, or a duration from now);
* a plan file that **changed** since the run started is refused: the refusal shows the diff
  and the command with ``--force-plan`` (never offered before the operator saw the diff).

Whether the budget is still spent is read from the run's events: a ``budget_exceeded`` or a
``run_stopping`` of kind ``budget`` spends it, a later ``run_resumed`` that forgave failures
or set a budget refills it; a resume refused at its start records no event, only its reason
("failure budget exceeded ..."), which is read too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fleet_reimage.journal.model import RunEvent, RunRecord, RunStatus

BUDGET_STOP = "failure budget exceeded"  # how the executor's budget stop reasons begin
NEW_WINDOW = "1h"


@dataclass(frozen=True, slots=True)
class Hint:
    """The command to type, and why it carries what it carries (lines for people)."""

    command: str
    why: tuple[str, ...] = ()


def continue_hint(
    run_id: str,
    location: str,
    *,
    budget_spent: bool = False,
    deadline_passed: bool = False,
    force_plan: bool = False,
) -> Hint:
    """The ``resume`` command that continues ``run_id`` given why it would be refused."""
    command = f"fleet-reimage resume {run_id} --journal {location}"
    why = []
    if force_plan:
        command += " --force-plan"
    if budget_spent:
        command += " --accept-failures"
        why.append(
            "the failures exceed the failure budget: --accept-failures forgives the ones so "
            "far and the budget applies to new ones; --failure-budget N sets a new budget instead"
        )
    if deadline_passed:
        command += f" --deadline {NEW_WINDOW}"
        why.append(
            f"the deadline has passed: --deadline gives a new window, {NEW_WINDOW} from now "
            "here; an ISO time such as 2026-11-27T06:00:00Z works too"
        )
    return Hint(command, tuple(why))


def run_hint(
    run: RunRecord, location: str, events: Iterable[RunEvent], now: float | None = None
) -> Hint | None:
    """How to continue a recorded run, None when it is finished.

    ``now``: to judge the deadline by (default: the run's last write).
    """
    if not run.status.resumable:
        return None
    deadline = run.options.get("deadline")
    at = run.updated_at if now is None else now
    return continue_hint(
        run.run_id,
        location,
        budget_spent=budget_spent(run, events),
        deadline_passed=isinstance(deadline, int | float) and deadline <= at,
    )


def budget_spent(run: RunRecord, events: Iterable[RunEvent]) -> bool:
    """Would the failure budget stop a plain ``resume`` of this run at once?"""
    spent = False
    for event in events:
        if event.kind == "budget_exceeded" or (
            event.kind == "run_stopping" and event.data.get("kind") == "budget"
        ):
            spent = True
        elif event.kind == "run_resumed" and (
            event.data.get("accept_failures") or event.data.get("failure_budget") is not None
        ):
            spent = False
    stopped_at_start = run.status is RunStatus.STOPPED and (run.reason or "").startswith(
        BUDGET_STOP
    )
    return spent or stopped_at_start
