"""What ``status`` and ``report`` show about one run, derived from its journal records (pure).

Everything here is a function of the records a read-only journal returns (run, targets,
attempts, events, exclusions) and is linear in their number: attempts are grouped by target
once (``attempts_by_target``), so a 100,000-node report never searches a list per node.
Rendering (text, JSON, CSV, Markdown) lives in ``status`` and ``report``.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleet_reimage.journal.model import (
    AttemptOutcome,
    AttemptRecord,
    Exclusion,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetRecord,
    TargetState,
)
from fleet_reimage.plan.narrow import describe
from fleet_reimage.plan.schedule import reason_group
from fleet_reimage.units import count

# Outcome columns in the order an operator reads them: what is left, what moves, what ended.
STATES: tuple[TargetState, ...] = (
    TargetState.PENDING,
    TargetState.IN_FLIGHT,
    TargetState.ACCEPTED,
    TargetState.HEALTHY,
    TargetState.DONE_UNVERIFIED,
    TargetState.FAILED,
    TargetState.GONE,
    TargetState.SKIPPED,
)
STATE_LABELS: dict[TargetState, str] = {
    TargetState.PENDING: "pending",
    TargetState.IN_FLIGHT: "in flight",
    TargetState.ACCEPTED: "awaiting health",
    TargetState.HEALTHY: "healthy",
    TargetState.DONE_UNVERIFIED: "done (unverified)",
    TargetState.FAILED: "failed",
    TargetState.GONE: "gone",
    TargetState.SKIPPED: "skipped",
}
NOT_DONE = (TargetState.FAILED, TargetState.GONE, TargetState.SKIPPED)
ACTIVE = (TargetState.IN_FLIGHT, TargetState.ACCEPTED)
EXAMPLES_PER_GROUP = 3


@dataclass(frozen=True, slots=True)
class RunData:
    """The journal's records of one run, as read (read-only) for a view."""

    run: RunRecord
    targets: list[TargetRecord]
    attempts: list[AttemptRecord]
    events: list[RunEvent]
    exclusions: list[Exclusion]
    location: str  # the journal, as the user named it (for the resume command)


# --- times ------------------------------------------------------------------------------


def iso(at: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, for JSON and CSV (None stays None)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def when(at: float | None) -> str:
    """UTC date and time to the second, for people."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(at: float, day_of: float | None = None) -> str:
    """UTC time of day; with the date when it is not the day of ``day_of`` (runs cross 0h)."""
    moment = datetime.fromtimestamp(at, UTC)
    if day_of is not None and moment.date() != datetime.fromtimestamp(day_of, UTC).date():
        return moment.strftime("%m-%d %H:%M:%S")
    return moment.strftime("%H:%M:%S")


def span(seconds: float | None) -> str:
    """A duration for people: 850ms, 12.5s, 4m05s, 2h07m."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --- counts -----------------------------------------------------------------------------


@dataclass(slots=True)
class PoolCounts:
    account: str
    pool: str
    counts: Counter[TargetState] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return f"{self.account}/{self.pool}"

    @property
    def selected(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "pool": self.pool,
            "selected": self.selected,
            **{state.value: self.counts[state] for state in STATES},
        }


def pool_counts(targets: Iterable[TargetRecord]) -> list[PoolCounts]:
    """Counts per outcome per pool, pools in the order the run lists them."""
    pools: dict[tuple[str, str], PoolCounts] = {}
    for target in targets:
        key = (target.account, target.pool)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = PoolCounts(target.account, target.pool)
        pool.counts[target.state] += 1
    return list(pools.values())


def total_counts(pools: Iterable[PoolCounts]) -> Counter[TargetState]:
    total: Counter[TargetState] = Counter()
    for pool in pools:
        total.update(pool.counts)
    return total


def counts_json(counts: Mapping[TargetState, int]) -> dict[str, int]:
    return {
        "selected": sum(counts.values()),
        **{state.value: counts.get(state, 0) for state in STATES},
    }


def counts_phrase(counts: Mapping[TargetState, int]) -> str:
    """``"50 healthy, 1 failed, 8 skipped"``: the non-zero outcomes."""
    parts = [f"{counts[s]} {STATE_LABELS[s]}" for s in STATES if counts.get(s)]
    return ", ".join(parts) or "no nodes"


# --- attempts per node ------------------------------------------------------------------


def attempts_by_target(attempts: Iterable[AttemptRecord]) -> dict[int, list[AttemptRecord]]:
    """Each target's attempts by attempt number (one pass; the journal sorts by time)."""
    grouped: dict[int, list[AttemptRecord]] = defaultdict(list)
    for attempt in attempts:
        grouped[attempt.target_id].append(attempt)
    for rows in grouped.values():
        if len(rows) > 1:
            rows.sort(key=lambda a: a.attempt_no)
    return grouped


def last_error(attempts: Sequence[AttemptRecord]) -> AttemptRecord | None:
    """The latest attempt that did not succeed and says why (code or message)."""
    for attempt in reversed(attempts):
        if attempt.outcome is not AttemptOutcome.ACCEPTED and (
            attempt.error_code or attempt.error_message
        ):
            return attempt
    return None


SUCCEEDED = frozenset({TargetState.HEALTHY, TargetState.DONE_UNVERIFIED})


def node_error(target: TargetRecord, attempts: Sequence[AttemptRecord]) -> AttemptRecord | None:
    """The error a node's row shows: its last error, unless the node ended well.

    The journal keeps every attempt's answer (the attempt log shows them all), but a node
    that ended healthy after a retried 429 has no error: the 429 belongs to that attempt,
    not to the node.
    """
    if target.state in SUCCEEDED:
        return None
    return last_error(attempts)


@dataclass(frozen=True, slots=True)
class DoubtCounts:
    """Requests sent without a clear answer, and what reading the node later found."""

    applied: int = 0  # the node showed the request took effect: not sent again
    not_applied: int = 0  # it did not: sent again
    unresolved: int = 0  # still in doubt (the run stopped before the node was read)

    @property
    def total(self) -> int:
        return self.applied + self.not_applied + self.unresolved

    def as_json(self) -> dict[str, int]:
        return {
            "in_doubt": self.total,
            "applied": self.applied,
            "not_applied": self.not_applied,
            "unresolved": self.unresolved,
        }

    def phrase(self) -> str | None:
        """One sentence for people, or None when no request was in doubt."""
        if not self.total:
            return None
        parts = [
            f"{self.applied} applied (not sent again)",
            f"{self.not_applied} not applied (sent again)",
        ]
        if self.unresolved:
            parts.append(f"{self.unresolved} not read yet (resume reads them)")
        return (
            f"{count(self.total, 'request')} in doubt (sent, no clear answer), reconciled "
            f"by reading the node: {', '.join(parts)}"
        )


def doubt_counts(
    targets: Iterable[TargetRecord], by_target: Mapping[int, Sequence[AttemptRecord]]
) -> DoubtCounts:
    """Count the requests that were in doubt, however they were settled.

    In the run, a request in doubt is read back and its attempt marked reconciled. A request
    still in doubt when the run stopped or crashed (or left with no answer at all by a
    crash) is read back by ``resume``, which settles the node (not the attempt): a later
    attempt means it was not applied, an accepted node that it was. One still without an
    answer on a node in flight is unresolved (or on the wire now).
    """
    applied = not_applied = unresolved = 0
    for target in targets:
        attempts = by_target.get(target.target_id, ())
        for index, attempt in enumerate(attempts):
            outcome = attempt.outcome
            if outcome is AttemptOutcome.RECONCILED_APPLIED:
                applied += 1
            elif outcome is AttemptOutcome.RECONCILED_NOT_APPLIED:
                not_applied += 1
            elif outcome not in _UNSETTLED:
                continue  # an answer: never in doubt
            elif index < len(attempts) - 1:
                not_applied += 1  # resume read the node, found it untouched, sent again
            elif target.state in _APPLIED_AFTER_RESUME:
                applied += 1
            elif outcome is AttemptOutcome.IN_DOUBT:
                unresolved += 1
    return DoubtCounts(applied, not_applied, unresolved)


# An attempt with no clear answer: in doubt, or sent with nothing recorded after (a crash).
_UNSETTLED = frozenset({AttemptOutcome.IN_DOUBT, None})


_APPLIED_AFTER_RESUME = frozenset(
    {TargetState.ACCEPTED, TargetState.HEALTHY, TargetState.DONE_UNVERIFIED, TargetState.FAILED}
)


_TRAILING_CODE = re.compile(r"\(([A-Z][A-Za-z]+)\)$")


def final_code(target: TargetRecord, attempts: Sequence[AttemptRecord]) -> str | None:
    """The Batch error code that ended the node, if any.

    That is the code its last attempt was refused with, else a code its reason ends with: a
    pool stopped by one node's error skips the others with "... (OperationNotValidOnNode)",
    and they belong in that node's group. A node that was accepted and then came back broken
    has no code (its last attempt succeeded): its reason tells it.
    """
    if attempts:
        last = attempts[-1]
        if last.outcome is AttemptOutcome.REJECTED and last.error_code:
            return last.error_code
    match = _TRAILING_CODE.search(target.reason or "")
    return match.group(1) if match else None


# --- failures ---------------------------------------------------------------------------


@dataclass(slots=True)
class FailureGroup:
    outcome: TargetState  # failed, gone or skipped
    code: str | None  # the Batch error code, when there is one
    reason: str  # the first node's reason (or the code's message)
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.code or self.reason

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "code": self.code,
            "reason": self.reason,
            "count": self.count,
            "examples": self.examples,
        }


def failure_groups(
    targets: Iterable[TargetRecord], by_target: Mapping[int, Sequence[AttemptRecord]]
) -> list[FailureGroup]:
    """Failed, gone and skipped nodes grouped by error code (else reason), biggest first."""
    groups: dict[tuple[TargetState, str], FailureGroup] = {}
    for target in targets:
        if target.state not in NOT_DONE:
            continue
        code = final_code(target, by_target.get(target.target_id, ()))
        reason = target.reason or "no reason recorded"
        key = (target.state, code or reason)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(target.state, code, reason)
        group.count += 1
        if len(group.examples) < EXAMPLES_PER_GROUP:
            group.examples.append(target.node_id)
    order = {state: index for index, state in enumerate(NOT_DONE)}
    return sorted(groups.values(), key=lambda g: (order[g.outcome], -g.count, g.key))


# --- in flight --------------------------------------------------------------------------


def in_flight(targets: Iterable[TargetRecord]) -> list[TargetRecord]:
    """Targets sent and not settled, the longest waiting first (the likeliest to be stuck)."""
    active = [t for t in targets if t.state in ACTIVE]
    active.sort(key=lambda t: (t.last_sent_at or 0.0, t.target_id))
    return active


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- the run as a whole -----------------------------------------------------------------


def runner_alive(run: RunRecord) -> bool | None:
    """Is the process recorded as running this run alive? None when it is on another host.

    A hint only (pids are reused), but it tells "running now" from "the runner died".
    """
    if run.status is not RunStatus.RUNNING:
        return False
    if run.host != socket.gethostname():
        return None
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_phrase(run: RunRecord) -> str:
    """The run's status as one phrase, saying whether a "running" run really is."""
    if run.status is not RunStatus.RUNNING:
        return run.status.value
    alive = runner_alive(run)
    if alive is None:
        return f"running (on {run.host}, pid {run.pid})"
    if alive:
        return f"running (pid {run.pid})"
    return f"running, but its process (pid {run.pid}) is gone: it was killed or crashed"


def run_json(run: RunRecord) -> dict[str, Any]:
    ended = run.ended_at
    return {
        "run_id": run.run_id,
        "name": run.name,
        "action": run.action,
        "plan": run.plan_path,
        "plan_sha256": run.plan_sha256,
        "status": run.status.value,
        "reason": run.reason,
        "started_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "ended_at": iso(ended),
        "duration_s": _round((ended or run.updated_at) - run.created_at),
        "host": run.host,
        "pid": run.pid,
        "narrowing": run.options.get("narrowing"),
        "overrides": run.options.get("overrides") or None,
    }


def narrowed(run: RunRecord) -> str | None:
    """How the command line narrowed the plan's selection for this run, in words."""
    return describe(run.options.get("narrowing"))


def exclusion_counts(exclusions: Iterable[Exclusion]) -> Counter[str]:
    """Excluded nodes by kind of reason, as ``plan`` counts them."""
    return Counter(reason_group(e.reason) for e in exclusions)
