"""What a resume changes in a run: its overrides, and a changed plan, applied and journaled.

``resume`` can change what a night needs changed, on the command line:

* ``--accept-failures`` forgives the failures so far, ``--failure-budget N`` sets the budget;
* ``--max-unavailable`` (a count or a percent) replaces each pool's limit, recomputed from the
  pool's nodes in the run, as the plan's was when the run was created;
* ``--concurrency`` and ``--per-account-concurrency`` replace the plan's ``execution`` values;
* ``--deadline`` gives the run a new window;
* ``--retry-skipped`` makes the skipped nodes pending again, so they are tried again;
* ``--force-plan`` takes a changed plan: ``plan/changes.py`` says which settings take effect
  (a new ``max_unavailable`` is recomputed per pool here, like an override).

Each override is kept in the run's options (``overrides``; the budget and the deadline in
their own keys), so a later resume and every runner that joins use it too, until it is given
again; each is journaled as an ``override`` event, and the plan's changes as one
``plan_changed`` event, which ``status`` and ``report`` show.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from fleet_reimage.errors import InputError
from fleet_reimage.journal.model import (
    Journal,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetChange,
    TargetRecord,
    TargetState,
)
from fleet_reimage.plan.changes import PlanChange, check_resumable, effective_plan, plan_changes
from fleet_reimage.plan.load import parse_plan
from fleet_reimage.plan.model import Plan
from fleet_reimage.units import Amount, parse_amount

OVERRIDES = "overrides"  # run.options: {"max_unavailable": "30%", "concurrency": 8, ...}
# Each override: the option that sets it, and the plan's key it stands in for.
OPTIONS = {
    "max_unavailable": ("--max-unavailable", "rollout.max_unavailable"),
    "concurrency": ("--concurrency", "execution.concurrency"),
    "per_account_concurrency": ("--per-account-concurrency", "execution.per_account_concurrency"),
    "failure_budget": ("--failure-budget", "rollout.failure_budget"),
    "deadline": ("--deadline", "rollout.deadline"),
}


class OverrideRefused(ValueError):
    """An override that cannot apply (the message says why)."""


@dataclass(frozen=True, slots=True)
class ResumeOptions:
    """What the operator asked of this resume (None: not given)."""

    accept_failures: bool = False
    failure_budget: int | None = None
    retry_skipped: bool = False
    max_unavailable: Amount | None = None
    concurrency: int | None = None
    per_account_concurrency: int | None = None
    deadline: float | None = None  # wall clock
    plan_changes: Sequence[PlanChange] = ()
    plan_deadline: float | None = None  # a changed plan's deadline, when that change applies
    ladder: Sequence[str] | None = None  # the run's own ladder, when the plan's changed

    def plan_changed(self, key: str) -> bool:
        """The changed plan changes ``key``, and that takes effect."""
        return any(c.key == key and c.applies for c in self.plan_changes)

    def given(self) -> dict[str, Any]:
        """The overrides given on this resume, as the run's options keep them."""
        values = {
            "max_unavailable": None if self.max_unavailable is None else str(self.max_unavailable),
            "concurrency": self.concurrency,
            "per_account_concurrency": self.per_account_concurrency,
            "failure_budget": self.failure_budget,
            "deadline": self.deadline,
        }
        return {key: value for key, value in values.items() if value is not None}


def stored_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides earlier resumes left in the run's options (a budget set by a resume
    before overrides were kept together is one too)."""
    stored = dict(options.get(OVERRIDES) or {})
    if options.get("failure_budget") is not None:
        stored.setdefault("failure_budget", options["failure_budget"])
    return stored


def overridden_keys(options: Mapping[str, Any], resume: ResumeOptions) -> dict[str, str]:
    """Plan keys an override stands in for -> the option, as "--max-unavailable 30%"."""
    overrides = {**stored_overrides(options), **resume.given()}
    return {
        OPTIONS[key][1]: f"{OPTIONS[key][0]} {shown(key, value)}"
        for key, value in overrides.items()
        if key in OPTIONS
    }


def shown(key: str, value: object) -> str:
    """An override's value as a person reads it (a deadline as a UTC time)."""
    if key == "deadline" and isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def plan_with_overrides(plan: Plan, options: Mapping[str, Any]) -> Plan:
    """The plan with the run's own ladder (if a changed plan has another) and its execution
    overrides in place (``OverrideRefused`` when they do not fit together)."""
    if options.get("ladder"):
        waves = tuple(parse_amount(step) for step in options["ladder"])
        plan = dataclasses.replace(plan, rollout=dataclasses.replace(plan.rollout, waves=waves))
    overrides = options.get(OVERRIDES) or {}
    execution = plan.execution
    concurrency = int(overrides.get("concurrency", execution.concurrency))
    capped = min(execution.per_account_concurrency, concurrency)
    per_account = int(overrides.get("per_account_concurrency", capped))
    if per_account > concurrency:
        raise OverrideRefused(
            f"per-account concurrency {per_account} is more than the run's concurrency "
            f"{concurrency}: lower --per-account-concurrency, or raise --concurrency"
        )
    if (concurrency, per_account) == (execution.concurrency, execution.per_account_concurrency):
        return plan
    changed = dataclasses.replace(
        execution, concurrency=concurrency, per_account_concurrency=per_account
    )
    return dataclasses.replace(plan, execution=changed)


def pool_limits(
    options: Mapping[str, Any],
    records: Sequence[TargetRecord],
    plan: Plan,
    resume: ResumeOptions,
) -> dict[str, list[int]] | None:
    """Each pool's ``[max_unavailable, baseline]`` recomputed when a resume changes the
    limit (an override, or a plan whose ``max_unavailable`` changed and takes effect);
    None when the run keeps the limits it has."""
    amount = resume.max_unavailable
    if amount is None and resume.plan_changed("rollout.max_unavailable"):
        amount = plan.rollout.max_unavailable
    if amount is None:
        return None
    sizes = Counter(f"{r.account}/{r.pool}" for r in records)
    known = options.get("pool_limits") or {}
    return {
        label: [max(1, amount.of(size)), int(known.get(label, [0, 0])[1])]
        for label, size in sizes.items()
    }


async def take_up(
    run: RunRecord,
    journal: Journal,
    records: list[TargetRecord],
    resume: ResumeOptions,
    *,
    resuming: bool,
    limits: Mapping[str, list[int]] | None,
) -> RunRecord:
    """A resumed or joined run: running again, with the resume's changes in its options
    (joined runners read them from there) and in its events."""
    options = dict(run.options)
    if resume.accept_failures:  # joined runners read it from the run, so all forgive the same
        options["forgiven_failures"] = sum(r.state is TargetState.FAILED for r in records)
    given = resume.given()
    if given:
        options[OVERRIDES] = {**(options.get(OVERRIDES) or {}), **given}
    for key in ("failure_budget", "deadline"):  # where the run has always kept these two
        if key in given:
            options[key] = given[key]
    if resume.deadline is None and resume.plan_changed("rollout.deadline"):
        options["deadline"] = resume.plan_deadline
    if resume.ladder is not None and not options.get("ladder"):
        options["ladder"] = list(resume.ladder)
    if limits is not None:
        options["pool_limits"] = {**(options.get("pool_limits") or {}), **limits}
    retried = await _retry_skipped(run, journal, records) if resume.retry_skipped else 0
    status = "resumed" if resuming else "running"
    now = time.time()
    await journal.set_run_status(run.run_id, RunStatus.RUNNING, status, now, options)
    await _record(run, journal, resume, resuming, retried, run.options, limits)
    return dataclasses.replace(run, options=options)


async def _retry_skipped(run: RunRecord, journal: Journal, records: list[TargetRecord]) -> int:
    """Skipped targets become pending again (the journal first, then the records)."""
    skipped = [r for r in records if r.state is TargetState.SKIPPED]
    now = time.time()
    async with anyio.create_task_group() as group:
        for record in skipped:
            change = TargetChange(run.run_id, record.target_id, TargetState.PENDING, now)
            group.start_soon(journal.target_changed, change)
    for record in skipped:
        record.state, record.reason, record.finished_at = TargetState.PENDING, None, None
    return len(skipped)


async def _record(
    run: RunRecord,
    journal: Journal,
    resume: ResumeOptions,
    resuming: bool,
    retried: int,
    before: Mapping[str, Any],
    limits: Mapping[str, list[int]] | None,
) -> None:
    """The resume's events: who resumed (or joined), each override, the plan's changes."""
    now = time.time()
    data: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "accept_failures": resume.accept_failures,
        "failure_budget": resume.failure_budget,
    }
    if retried:
        data["retried_skipped"] = retried
    events = [RunEvent(run.run_id, now, "run_resumed" if resuming else "runner_joined", data=data)]
    was = stored_overrides(before)
    for key, value in resume.given().items():
        detail = {"setting": key, "option": OPTIONS[key][0], "value": value}
        if key in was:
            detail["was"] = was[key]
        if key == "max_unavailable" and limits is not None:
            detail["per_pool"] = {label: limit[0] for label, limit in limits.items()}
            old = before.get("pool_limits") or {}
            detail["was_per_pool"] = {label: old[label][0] for label in limits if label in old}
        events.append(RunEvent(run.run_id, now, "override", data=detail))
    if resume.plan_changes:
        changed: dict[str, Any] = {"changes": [c.as_json() for c in resume.plan_changes]}
        if limits is not None and resume.max_unavailable is None:
            changed["max_unavailable_per_pool"] = {k: v[0] for k, v in limits.items()}
        events.append(RunEvent(run.run_id, now, "plan_changed", data=changed))
    for event in events:
        await journal.record_event(event)


def accept_changed_plan(
    run: RunRecord, text: str, path: Path, resume: ResumeOptions
) -> tuple[Plan, ResumeOptions]:
    """The plan ``text`` (``resume --force-plan``) as the run can take it, and the resume
    with its changes (``plan/changes.py``); ``PlanChangeRefused`` when it cannot continue
    the run."""
    new = parse_plan(text, path)
    try:
        old = parse_plan(run.plan_text, path)
    except InputError:  # e.g. a key file it named is gone: nothing to compare with
        return new, dataclasses.replace(resume, plan_changes=(_UNREADABLE,))
    accounts = {label.partition("/")[0] for label in run.options.get("pool_limits") or {}}
    check_resumable(old, new, accounts)
    changes = plan_changes(old, new, overridden=overridden_keys(run.options, resume))
    deadline = new.rollout.deadline.timestamp() if new.rollout.deadline else None
    ladder = None
    if any(c.key == "rollout.waves" for c in changes):
        ladder = [str(step) for step in old.rollout.waves]
    resume = dataclasses.replace(
        resume, plan_changes=tuple(changes), plan_deadline=deadline, ladder=ladder
    )
    return effective_plan(old, new), resume


_UNREADABLE = PlanChange(
    "plan",
    "as the run started",
    "as it is now",
    True,
    "the run's earlier plan no longer validates here (a file it named is gone?), so the "
    "changes cannot be listed one by one: every setting is read from the plan as it is now",
)


def parse_max_unavailable(text: str) -> Amount:
    """``--max-unavailable``: a count of at least 1, or a percent above 0%."""
    amount = parse_amount(text)
    if amount.value <= 0:
        raise ValueError("must be at least 1 node, or more than 0%")
    return amount
