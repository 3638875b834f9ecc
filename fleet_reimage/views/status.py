"""``fleet-reimage status``: the runs of a journal, or where one run is (pure rendering).

The text is for a tired operator at a terminal: what the run is doing, what is stuck (the
nodes in flight the longest come first), what failed grouped by cause, the waves so far,
and the next command to type. ``--output json`` carries the same facts for scripts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_reimage.journal.model import RunRecord, RunStatus, TargetRecord, TargetState
from fleet_reimage.units import count
from fleet_reimage.views.drains import drain_counts, drain_lines
from fleet_reimage.views.hints import Hint, run_hint
from fleet_reimage.views.replaceview import replace_section, replace_summaries
from fleet_reimage.views.report import failure_lines, one_line, totals_lines
from fleet_reimage.views.runchanges import blocked_now, overrides_phrase
from fleet_reimage.views.runview import (
    RunData,
    attempts_by_target,
    clock,
    counts_json,
    counts_phrase,
    doubt_counts,
    failure_groups,
    in_flight,
    iso,
    narrowed,
    pool_counts,
    run_json,
    runner_alive,
    span,
    status_phrase,
    total_counts,
    when,
)
from fleet_reimage.views.textgrid import grid
from fleet_reimage.views.timeline import Timeline, timeline, timeline_lines
from fleet_reimage.views.waitwords import (
    GateFailure,
    last_gate_failure,
    soaking_now,
    wait_event_text,
)

IN_FLIGHT_SHOWN = 10


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run and its target counts, for the list of runs."""

    run: RunRecord
    counts: Counter[TargetState]


# --- the list of runs -------------------------------------------------------------------


def runs_text(summaries: Sequence[RunSummary], location: str, more: int) -> str:
    if not summaries:
        return (
            f"no run in {location} yet: start one with "
            f"`fleet-reimage run PLAN --journal {location}`"
        )
    headers = ("run", "name", "plan", "status", "started", "ended", "took", "nodes", "outcomes")
    rows = [_run_row(s) for s in summaries]
    lines = [f"Runs in {location}, newest first", ""]
    lines += grid(headers, lambda: rows, right={6, 7})
    if more:
        lines.append(f"... and {more} older runs (--limit N shows more)")
    lines += ["", f"details of one run: fleet-reimage status RUN_ID --journal {location}"]
    return "\n".join(lines)


def _run_row(summary: RunSummary) -> tuple[str, ...]:
    run = summary.run
    end = run.ended_at
    return (
        run.run_id,
        run.name,
        Path(run.plan_path).name,
        _short_status(run),
        when(run.created_at),
        clock(end, run.created_at) if end else "-",
        span((end or run.updated_at) - run.created_at),
        str(sum(summary.counts.values())),
        counts_phrase(summary.counts),
    )


def _short_status(run: RunRecord) -> str:
    if run.status is RunStatus.RUNNING and runner_alive(run) is False:
        return "running (runner gone)"
    return run.status.value


def runs_json(summaries: Sequence[RunSummary], location: str) -> dict[str, Any]:
    return {
        "journal": location,
        "runs": [{**run_json(s.run), "counts": counts_json(s.counts)} for s in summaries],
    }


# --- one run ----------------------------------------------------------------------------


def run_text(data: RunData, now: float, following: float | None = None) -> str:
    """One run in words; ``following``: the refresh interval of ``status --follow``."""
    run = data.run
    pools = pool_counts(data.targets)
    by_target = attempts_by_target(data.attempts)
    line = timeline(data.events, data.targets, data.attempts)
    lines = [
        f"run {run.run_id}: plan {run.name} ({run.plan_path}), {run.action}",
        f"  status   {status_phrase(run)}",
    ]
    if run.reason and run.status is not RunStatus.RUNNING:  # a running run's is "resumed"
        lines.append(f"  reason   {one_line(run.reason)}")
    if narrowed(run):
        lines.append(f"  narrowed {narrowed(run)}")
    if overrides_phrase(run):
        lines.append(f"  overrides {overrides_phrase(run)} (set on resume)")
    ended = clock(run.ended_at, run.created_at) if run.ended_at else "-"
    lines.append(
        f"  started  {when(run.created_at)}   last write {clock(run.updated_at, run.created_at)} "
        f"({span(now - run.updated_at)} ago)   ended {ended}"
    )
    if line.restarts:
        lines.append(f"  restarts {_restarts_phrase(line)}")
    lines += ["", "Nodes per pool", *("  " + line for line in totals_lines(pools))]
    lines += replace_section(data.events, data.targets)
    doubts = doubt_counts(data.targets, by_target).phrase()
    if doubts:
        lines += ["", doubts]
    lines += ["", *_in_flight_lines(data.targets, run, now)]
    lines += _blocked_lines(data, now) + _wait_lines(data, now)
    drains = drain_lines(data.events)
    lines += ["", *drains] if drains else []
    failures = failure_groups(data.targets, by_target)
    lines += ["", "Not done (by error code, else reason)"]
    lines += ["  " + line for line in failure_lines(failures)] or ["  none"]
    lines += ["", "Waves and events (UTC)"]
    lines += ["  " + text for text in timeline_lines(line, run.created_at)]
    hint = run_hint(run, data.location, data.events, now)
    lines += ["", *next_steps(hint, run, data.location, following)]
    return "\n".join(lines)


def _restarts_phrase(line: Timeline) -> str:
    crashes = sum(1 for r in line.restarts if r.crashed)
    stops = len(line.restarts) - crashes
    what = [count(n, word) for n, word in ((crashes, "crash"), (stops, "stop")) if n]
    return (
        f"resumed {count(len(line.restarts), 'time')} (after {' and '.join(what)}); "
        f"not running for {span(line.down)} in all"
    )


def in_flight_clock(run: RunRecord, now: float) -> float:
    """The instant "waiting" is measured to: now while the run goes, else when it ended.

    A stopped run's requests wait for nothing: the time they had waited when it stopped is
    what tells, not a timer that keeps counting while nobody runs the run.
    """
    if run.status is RunStatus.RUNNING and runner_alive(run) is not False:
        return now
    return run.ended_at or run.updated_at


def _in_flight_lines(targets: Sequence[TargetRecord], run: RunRecord, now: float) -> list[str]:
    active = in_flight(targets)
    if not active:
        return ["In flight now: none"]
    day = run.created_at
    until = in_flight_clock(run, now)
    live = until == now
    # A replaced node's removal is accepted while it leaves (tasks finishing, with
    # taskcompletion) and while its replacement boots: "awaiting health" would mislead.
    accepted = "being replaced" if run.action == "replace" else "awaiting health"
    rows = []
    for t in active[:IN_FLIGHT_SHOWN]:
        since = t.last_sent_at or t.accepted_at
        state = accepted if t.state is TargetState.ACCEPTED else "request in flight"
        rows.append(
            (
                f"{t.account}/{t.pool}",
                t.node_id,
                state,
                str(t.attempts),
                clock(since, day) if since else "",
                span(until - since) if since else "",
                t.last_code or "",
            )
        )
    waited = "waiting" if live else "had waited"
    headers = ("pool", "node", "state", "tries", "sent", waited, "last code")
    if live:
        lines = [f"In flight now: {len(active)} (longest waiting first)"]
    else:
        lines = [
            f"Left in flight when the run stopped at {clock(until, day)}: {len(active)} "
            "(resume reads each node before anything is sent again)"
        ]
    lines += ["  " + line for line in grid(headers, lambda: rows, right={3, 5})]
    if len(active) > IN_FLIGHT_SHOWN:
        lines.append(f"  ... and {len(active) - IN_FLIGHT_SHOWN} more (--output json lists all)")
    return lines


def _blocked_lines(data: RunData, now: float) -> list[str]:
    """The pools a running run has waiting for room (max_unavailable) right now, and why."""
    if in_flight_clock(data.run, now) != now:
        return []
    waiting = blocked_now(data.events)
    day = data.run.created_at
    return (
        [
            "",
            f"Waiting for room now: {count(len(waiting), 'pool')}",
            *(f"  {w.pool} since {clock(w.since, day)}: {w.text}" for w in waiting),
        ]
        if waiting
        else []
    )


def _wait_lines(data: RunData, now: float) -> list[str]:
    """The pools soaking now (a running run), and the gate that stopped the run."""
    lines: list[str] = []
    soaking = soaking_now(data.events) if in_flight_clock(data.run, now) == now else {}
    if soaking:
        lines += ["", f"Soaking now: {count(len(soaking), 'pool')}"]
        lines += [f"  {pool}: {wait_event_text(event)}" for pool, event in soaking.items()]
    failure = _gate_failure(data)
    if failure is not None:
        where = f" ({failure.pool})" if failure.pool else ""
        lines += ["", f"Gate failed{where}: {failure.text}"]
        lines += [f"  | {line}" for line in failure.output] or ["  (it printed nothing)"]
    return lines


def next_steps(
    hint: Hint | None, run: RunRecord, location: str, following: float | None = None
) -> list[str]:
    """What to type next, given the run's status and the command that continues it.

    ``following``: the refresh interval when this is ``status --follow`` already."""
    report = f"fleet-reimage report {run.run_id} --journal {location}"
    command = hint.command if hint else None
    why = [f"  ({line})" for line in hint.why] if hint else []
    if run.status is RunStatus.RUNNING:
        alive = runner_alive(run)
        if alive and following is not None:
            return [
                f"It is running now: shown again every {span(following)} "
                "(Ctrl-C stops watching, not the run)"
            ]
        if alive:
            return [
                "It is running now. Watch it live: "
                f"fleet-reimage status {run.run_id} --journal {location} --follow"
            ]
        if alive is None:
            return [f"If the process on {run.host} is gone, continue it with: {command}", *why]
        return [f"To continue: {command}", *why]
    if command:
        return [f"To continue: {command}", *why, f"Details: {report}"]
    return [f"Details: {report} --format markdown"]


def _gate_failure(data: RunData) -> GateFailure | None:
    """The gate that stopped the run (a finished run's last gates passed)."""
    if data.run.status is RunStatus.FINISHED:
        return None
    return last_gate_failure(data.events)


def _gate_failure_json(data: RunData) -> dict[str, Any] | None:
    failure = _gate_failure(data)
    if failure is None:
        return None
    return {"pool": failure.pool, "what": failure.text, "output": list(failure.output)}


def _command(hint: Hint | None) -> str | None:
    return hint.command if hint else None


def run_status_json(data: RunData, now: float) -> dict[str, Any]:
    run = data.run
    pools = pool_counts(data.targets)
    by_target = attempts_by_target(data.attempts)
    alive = runner_alive(run) if run.status is RunStatus.RUNNING else None
    until = in_flight_clock(run, now)
    return {
        "run": {**run_json(run), "runner_alive": alive},
        "waiting_for_room": [
            {"pool": w.pool, "since": iso(w.since), "why": w.text}
            for w in (blocked_now(data.events) if in_flight_clock(run, now) == now else [])
        ],
        "soaking": sorted(soaking_now(data.events)) if until == now else [],
        "gate_failed": _gate_failure_json(data),
        "totals": counts_json(total_counts(pools)),
        "pools": [pool.as_json() for pool in pools],
        "replace": [s.as_json() for s in replace_summaries(data.events, data.targets)],
        "reconciled": doubt_counts(data.targets, by_target).as_json(),
        "in_flight": [
            {
                "account": t.account,
                "pool": t.pool,
                "node": t.node_id,
                "state": t.state.value,
                "attempts": t.attempts,
                "last_sent_at": iso(t.last_sent_at),
                "waiting_s": None if t.last_sent_at is None else round(until - t.last_sent_at, 3),
                "last_code": t.last_code,
            }
            for t in in_flight(data.targets)
        ],
        "failures": [g.as_json() for g in failure_groups(data.targets, by_target)],
        "timeline": timeline(data.events, data.targets, data.attempts).as_json(),
        "drains": drain_counts(data.events),
        "resume": _command(run_hint(run, data.location, data.events, now)),
    }
