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
from fleet_reimage.plan.schedule import reason_group

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


# --- timeline ---------------------------------------------------------------------------


@dataclass(slots=True)
class WaveSpan:
    account: str
    pool: str
    wave: int  # 1-based ladder step
    of: int
    started_at: float
    completed_at: float | None = None
    pause_before: float | None = None  # since the previous wave of the pool completed
    held: bool = False  # a checkpoint held the pool after this wave
    nodes: int = 0

    @property
    def label(self) -> str:
        return f"{self.account}/{self.pool}"

    @property
    def took(self) -> float | None:
        return None if self.completed_at is None else self.completed_at - self.started_at

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "pool": self.pool,
            "wave": self.wave,
            "of": self.of,
            "nodes": self.nodes,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "duration_s": _round(self.took),
            "pause_before_s": _round(self.pause_before),
            "held_for_checkpoint": self.held,
        }


@dataclass(frozen=True, slots=True)
class Milestone:
    """A run event worth a line of its own (not a wave boundary)."""

    at: float
    kind: str
    pool: str | None  # "account/pool", when the event is about one
    text: str

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "event": self.kind, "pool": self.pool, "text": self.text}


@dataclass(slots=True)
class Timeline:
    waves: list[WaveSpan]
    milestones: list[Milestone]

    def as_json(self) -> dict[str, Any]:
        return {
            "waves": [w.as_json() for w in self.waves],
            "events": [m.as_json() for m in self.milestones],
        }


def timeline(events: Iterable[RunEvent], targets: Iterable[TargetRecord] = ()) -> Timeline:
    """Wave spans per pool and the other milestones, from the run's events (by time).

    A resumed run announces its current wave again: the first start is kept.
    """
    spans: dict[tuple[str, str, int], WaveSpan] = {}
    last_done: dict[tuple[str, str], float] = {}
    milestones: list[Milestone] = []
    for event in events:
        data = event.data
        pool_key = (event.account or "", event.pool or "")
        if event.kind == "wave_started" and event.pool:
            key = (*pool_key, int(data.get("wave", 0)))
            if key not in spans:
                previous = last_done.get(pool_key)
                spans[key] = WaveSpan(
                    *key,
                    of=int(data.get("of", 0)),
                    started_at=event.at,
                    pause_before=None if previous is None else event.at - previous,
                )
        elif event.kind == "wave_completed" and event.pool:
            key = (*pool_key, int(data.get("wave", 0)))
            wave = spans.get(key)
            if wave is not None:
                wave.completed_at = event.at
                wave.held = bool(data.get("held"))
            last_done[pool_key] = event.at
        else:
            milestones.append(_milestone(event))
    sizes: Counter[tuple[str, str, int]] = Counter((t.account, t.pool, t.wave + 1) for t in targets)
    for key, wave in spans.items():
        wave.nodes = sizes[key]
    ordered = sorted(spans.values(), key=lambda w: (w.account, w.pool, w.wave))
    return Timeline(ordered, milestones)


def _milestone(event: RunEvent) -> Milestone:
    data = event.data
    pool = f"{event.account}/{event.pool}" if event.pool else event.account
    kind = event.kind
    if kind == "pool_stopped":
        text = f"pool stopped: {data.get('reason')}"
    elif kind == "budget_exceeded":
        text = f"failure budget exceeded: {data.get('failed')} failed, budget {data.get('budget')}"
    elif kind == "run_stopping":
        text = f"run stopping ({data.get('kind')}): {data.get('reason')}"
    elif kind == "checkpoint":
        text = f"checkpoint after wave {data.get('wave')}: waiting for the operator"
    elif kind == "checkpoint_confirmed":
        text = "checkpoint confirmed: rollout continues"
    elif kind == "throttle_changed":
        text = (
            f"throttle: concurrency {data.get('concurrency')}, rate {data.get('rate')} "
            f"({data.get('reason')})"
        )
    else:
        detail = ", ".join(f"{k}={v}" for k, v in data.items())
        text = kind.replace("_", " ") + (f": {detail}" if detail else "")
    return Milestone(event.at, kind, pool, text)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- the run as a whole -----------------------------------------------------------------


def resume_command(run: RunRecord, location: str) -> str | None:
    """The exact command that continues the run, when it can be continued."""
    if not run.status.resumable:
        return None
    return f"fleet-reimage resume {run.run_id} --journal {location}"


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
    }


def exclusion_counts(exclusions: Iterable[Exclusion]) -> Counter[str]:
    """Excluded nodes by kind of reason, as ``plan`` counts them."""
    return Counter(reason_group(e.reason) for e in exclusions)
