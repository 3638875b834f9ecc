"""``fleet-reimage report``: one row per node, totals and the timeline (pure rendering).

Four formats, written to a text stream by ``write_report`` (blocking: callers run it on a
worker thread):

* ``table``: for a terminal; run header, totals, failures, timeline, then the node table.
* ``json``: one document; ``nodes`` carries every attempt (``attempt_log``). Written as it
  goes, node by node, so a 100,000-node run never holds its whole text in memory.
* ``csv``: the node rows only (one header line), streamed; attempt ids are ``;``-joined in
  attempt order, ``-`` standing for an attempt without a request id.
* ``markdown``: for a change ticket; the node table is capped (``MARKDOWN_NODE_LIMIT``) with a
  note, listing the nodes that did not end healthy first. JSON and CSV are always complete.

Every pass over the nodes is linear: attempts are grouped by target once.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from fleet_reimage.journal.model import AttemptRecord, TargetRecord, TargetState
from fleet_reimage.units import count
from fleet_reimage.views.drains import drain_counts, drain_lines
from fleet_reimage.views.hints import run_hint
from fleet_reimage.views.replaceview import replace_section, replace_summaries, summary_lines
from fleet_reimage.views.runchanges import overrides_phrase
from fleet_reimage.views.runview import (
    STATE_LABELS,
    STATES,
    FailureGroup,
    PoolCounts,
    RunData,
    attempts_by_target,
    clock,
    counts_json,
    doubt_counts,
    exclusion_counts,
    failure_groups,
    iso,
    narrowed,
    node_error,
    pool_counts,
    run_json,
    span,
    status_phrase,
    total_counts,
    when,
)
from fleet_reimage.views.textgrid import grid, md_cell, md_table
from fleet_reimage.views.timeline import Timeline, timeline, timeline_lines, wave_times

FORMATS = ("table", "json", "csv", "markdown")
MARKDOWN_NODE_LIMIT = 500
CSV_COLUMNS = (
    "account",
    "pool",
    "node",
    "wave",
    "outcome",
    "reason",
    "attempts",
    "first_sent_at",
    "finished_at",
    "duration_s",
    "last_error_code",
    "last_error_message",
    "client_request_ids",
    "request_ids",
)
NODE_HEADERS = (
    "pool",
    "node",
    "wave",
    "outcome",
    "tries",
    "first sent",
    "finished",
    "took",
    "client-request-id",
    "request-id",
    "code",
    "reason / error",
)
_RIGHT = {2, 4, 7}


class Report:
    """The derived views of one run, computed once and shared by every format."""

    def __init__(self, data: RunData, now: float | None = None) -> None:
        self.data = data
        self.now = now  # when the report is made (judges a deadline for the resume command)
        self.run = data.run
        self.by_target = attempts_by_target(data.attempts)
        self.pools = pool_counts(data.targets)
        self.totals = total_counts(self.pools)
        self.failures = failure_groups(data.targets, self.by_target)
        self.timeline = timeline(data.events, data.targets, data.attempts)
        self.doubts = doubt_counts(data.targets, self.by_target)

    def attempts_of(self, target: TargetRecord) -> Sequence[AttemptRecord]:
        return self.by_target.get(target.target_id, ())


def write_report(data: RunData, fmt: str, out: TextIO, now: float | None = None) -> None:
    """Write the report of ``data`` in ``fmt`` (one of ``FORMATS``) to ``out``.

    ``now``: when the report is made (default: as of the run's last write).
    """
    if fmt == "csv":
        # CSV needs no totals or timeline: skip computing them for a big run.
        write_csv(data, out)
        return
    report = Report(data, now)
    writers = {"table": write_table, "json": write_json, "markdown": write_markdown}
    writers[fmt](report, out)


# --- csv --------------------------------------------------------------------------------


_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def one_line(text: str) -> str:
    """Text with its line breaks folded into spaces: a CSV row or a table cell is one line.

    Batch error messages carry "RequestId:..." and "Time:..." on lines of their own; a
    quoted newline is valid CSV, but every line-based tool (``wc -l``, ``grep``, a
    spreadsheet import with the wrong option) would then count one node as three.
    """
    return _LINE_BREAKS.sub(" ", text).strip() if text else text


def write_csv(data: RunData, out: TextIO) -> None:
    by_target = attempts_by_target(data.attempts)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for target in data.targets:
        attempts = by_target.get(target.target_id, ())
        error = node_error(target, attempts)
        writer.writerow(
            (
                target.account,
                target.pool,
                target.node_id,
                target.wave + 1,
                target.state.value,
                one_line(target.reason or ""),
                target.attempts,
                iso(target.first_sent_at) or "",
                iso(target.finished_at) or "",
                _duration(target) if target.finished_at else "",
                _code(error) or "",
                one_line(error.error_message or "") if error else "",
                ";".join(a.client_request_id for a in attempts),
                ";".join(a.request_id or "-" for a in attempts),
            )
        )


def _duration(target: TargetRecord) -> float | None:
    if target.first_sent_at is None or target.finished_at is None:
        return None
    return round(target.finished_at - target.first_sent_at, 3)


def _code(attempt: AttemptRecord | None) -> str | None:
    """What went wrong, shortest first: the Batch error code, the HTTP status, the outcome."""
    if attempt is None:
        return None
    if attempt.error_code:
        return attempt.error_code
    if attempt.status:
        return str(attempt.status)
    return attempt.outcome.value if attempt.outcome else None


# --- json -------------------------------------------------------------------------------


def report_header_json(report: Report) -> dict[str, Any]:
    """Everything but the nodes: run, totals per pool, failures, timeline, exclusions."""
    data = report.data
    return {
        "run": run_json(report.run),
        "resume": _resume(report),
        "totals": counts_json(report.totals),
        "pools": [pool.as_json() for pool in report.pools],
        "replace": [s.as_json() for s in replace_summaries(data.events, data.targets)],
        "failures": [group.as_json() for group in report.failures],
        "reconciled": report.doubts.as_json(),
        "timeline": report.timeline.as_json(),
        "drains": drain_counts(data.events),
        "excluded": [
            {"account": e.account, "pool": e.pool, "node": e.node_id, "reason": e.reason}
            for e in data.exclusions
        ],
    }


def _resume(report: Report) -> str | None:
    hint = run_hint(report.run, report.data.location, report.data.events, report.now)
    return hint.command if hint else None


def node_json(target: TargetRecord, attempts: Sequence[AttemptRecord]) -> dict[str, Any]:
    error = node_error(target, attempts)
    return {
        "account": target.account,
        "pool": target.pool,
        "node": target.node_id,
        "wave": target.wave + 1,
        "outcome": target.state.value,
        "reason": target.reason,
        "attempts": target.attempts,
        "first_sent_at": iso(target.first_sent_at),
        "finished_at": iso(target.finished_at),
        "duration_s": _duration(target),
        "last_error_code": _code(error),
        "last_error_message": error.error_message if error else None,
        "attempt_log": [
            {
                "attempt": a.attempt_no,
                "operation": a.operation,
                "client_request_id": a.client_request_id,
                "request_id": a.request_id,
                "sent_at": iso(a.sent_at),
                "finished_at": iso(a.finished_at),
                "outcome": a.outcome.value if a.outcome else None,
                "status": a.status,
                "error_code": a.error_code,
                "error_message": a.error_message,
                "latency_ms": a.latency_ms,
            }
            for a in attempts
        ],
    }


def write_json(report: Report, out: TextIO) -> None:
    header = json.dumps(report_header_json(report), indent=2)
    out.write(header[:-2])  # reopen the object: the nodes follow, one per line
    out.write(',\n  "nodes": [')
    separator = "\n    "
    for target in report.data.targets:
        out.write(separator)
        out.write(json.dumps(node_json(target, report.attempts_of(target)), separators=(",", ":")))
        separator = ",\n    "
    out.write("\n  ]\n}\n")


# --- table (terminal) -------------------------------------------------------------------


def write_table(report: Report, out: TextIO) -> None:
    run = report.run
    lines = [
        f"Report of run {run.run_id}: plan {run.name} ({run.plan_path}), {run.action}",
        f"  status   {status_phrase(run)}",
        f"  started  {when(run.created_at)}   ended {when(run.ended_at)}   "
        f"took {run_duration(report)}",
    ]
    if run.reason:
        lines.append(f"  reason   {one_line(run.reason)}")
    if narrowed(run):
        lines.append(f"  narrowed {narrowed(run)}")
    if overrides_phrase(run):
        lines.append(f"  overrides {overrides_phrase(run)} (set on resume)")
    resume = _resume(report)
    if resume:
        lines.append(f"  resume   {resume}")
    lines += ["", "Totals", *("  " + line for line in totals_lines(report.pools))]
    lines += replace_section(report.data.events, report.data.targets)
    doubts = report.doubts.phrase()
    if doubts:
        lines += ["", doubts]
    drains = drain_lines(report.data.events)
    lines += ["", *drains] if drains else []
    lines += ["", "Not done (by error code, else reason)"]
    lines += ["  " + line for line in failure_lines(report.failures)] or ["  none"]
    lines += ["", "Timeline (UTC)"]
    lines += ["  " + line for line in timeline_lines(report.timeline, run.created_at)]
    excluded = exclusion_counts(report.data.exclusions)
    if excluded:
        lines += ["", "Excluded by the plan's selection: " + _excluded_phrase(excluded)]
    lines += ["", f"Nodes ({len(report.data.targets)})", ""]
    out.write("\n".join(lines) + "\n")
    rows = functools.partial(_node_rows, report, report.data.targets)  # called twice
    for line in grid(NODE_HEADERS, rows, right=_RIGHT):
        out.write(line + "\n")


def run_duration(report: Report) -> str:
    """How long the run took, and how much of that nothing was running (crashes, stops)."""
    run = report.run
    took = span((run.ended_at or run.updated_at) - run.created_at)
    down = report.timeline.down
    if not report.timeline.restarts:
        return took
    starts = count(len(report.timeline.restarts) + 1, "start")
    return f"{took} ({starts}; not running for {span(down)} of it)"


def totals_lines(pools: Sequence[PoolCounts]) -> list[str]:
    """The per-pool outcome table with a total row; all-zero outcome columns left out."""
    totals = total_counts(pools)
    states = [s for s in STATES if totals.get(s)]
    headers = ("pool", "selected", *(STATE_LABELS[s] for s in states))
    rows: list[tuple[str, ...]] = [
        (p.label, str(p.selected), *(str(p.counts[s]) for s in states)) for p in pools
    ]
    rows.append(("total", str(sum(totals.values())), *(str(totals[s]) for s in states)))
    return list(grid(headers, lambda: rows, right=set(range(1, len(headers)))))


def failure_lines(groups: Sequence[FailureGroup]) -> list[str]:
    lines = []
    for group in groups:
        what = f"{group.code}: {group.reason}" if group.code else group.reason
        examples = ", ".join(group.examples) + (" ..." if group.count > len(group.examples) else "")
        lines.append(f"{group.outcome.value:<7} {group.count:>6} x {what}")
        lines.append(f"{'':<17}e.g. {examples}")
    return lines


def _excluded_phrase(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {group}" for group, count in sorted(counts.items()))


def _node_rows(report: Report, targets: Iterable[TargetRecord]) -> Iterator[tuple[str, ...]]:
    """One row per node (its last attempt's ids), then a row per earlier attempt."""
    day = report.run.created_at
    for target in targets:
        attempts = report.attempts_of(target)
        last = attempts[-1] if attempts else None
        error = node_error(target, attempts)
        yield (
            f"{target.account}/{target.pool}",
            target.node_id,
            str(target.wave + 1),
            target.state.value,
            str(target.attempts),
            clock(target.first_sent_at, day) if target.first_sent_at else "",
            clock(target.finished_at, day) if target.finished_at else "",
            span(_duration(target)) if target.finished_at else "",
            last.client_request_id if last else "",
            (last.request_id or "") if last else "",
            _code(error) or "",
            _reason_and_error(target, error),
        )
        for earlier in attempts[:-1]:
            yield _attempt_row(earlier, day)


def _attempt_row(attempt: AttemptRecord, day: float) -> tuple[str, ...]:
    return (
        "",
        "",
        "",
        f"  attempt {attempt.attempt_no}",
        "",
        clock(attempt.sent_at, day),
        clock(attempt.finished_at, day) if attempt.finished_at else "",
        span(attempt.latency_ms / 1000) if attempt.latency_ms is not None else "",
        attempt.client_request_id,
        attempt.request_id or "",
        _code(attempt) or "",
        one_line(attempt.error_message or ""),
    )


def _reason_and_error(target: TargetRecord, error: AttemptRecord | None) -> str:
    reason = one_line(target.reason or "")
    if error is None or not error.error_message:
        return reason
    message = one_line(error.error_message)
    if message in reason:
        return reason
    return f"{reason} (last error: {message})" if reason else message


# --- markdown ---------------------------------------------------------------------------


def write_markdown(report: Report, out: TextIO) -> None:
    run = report.run
    facts = [
        ("Run", f"`{run.run_id}`"),
        (
            "Plan",
            f"{md_cell(run.name)} (`{md_cell(run.plan_path)}`, sha256 `{run.plan_sha256[:12]}`)",
        ),
        ("Action", run.action),
        ("Status", md_cell(status_phrase(run))),
        ("Started", when(run.created_at)),
        ("Ended", when(run.ended_at)),
        ("Duration", md_cell(run_duration(report))),
    ]
    if run.reason:
        facts.append(("Reason", md_cell(run.reason)))
    if narrowed(run):
        facts.append(("Narrowed to", f"`{md_cell(narrowed(run))}`"))
    if overrides_phrase(run):
        facts.append(("Overrides (on resume)", md_cell(overrides_phrase(run) or "")))
    resume = _resume(report)
    if resume:
        facts.append(("To continue", f"`{resume}`"))
    parts = [
        f"# {run.action.capitalize()} report: {md_cell(run.name)}",
        "",
        *md_table(("", ""), facts),
        "",
        "## Totals",
        "",
        *_md_totals(report.pools),
    ]
    replaced = summary_lines(replace_summaries(report.data.events, report.data.targets))
    if replaced:
        parts += ["", "## Replace per pool", "", *("- " + md_cell(line) for line in replaced)]
    doubts = report.doubts.phrase()
    if doubts:
        parts += ["", md_cell(doubts) + "."]
    excluded = exclusion_counts(report.data.exclusions)
    if excluded:
        parts += ["", f"Excluded by the plan's selection: {_excluded_phrase(excluded)}."]
    drains = drain_lines(report.data.events)
    parts += ["", md_cell(drains[0]) + "."] if drains else []
    parts += ["", "## Failures", "", *_md_failures(report.failures)]
    parts += ["", "## Timeline (UTC)", "", *_md_timeline(report.timeline, run.created_at)]
    out.write("\n".join(parts) + "\n\n")
    _md_nodes(report, out)


def _md_totals(pools: Sequence[PoolCounts]) -> list[str]:
    totals = total_counts(pools)
    states = [s for s in STATES if totals.get(s)]
    headers = ("Pool", "Selected", *(STATE_LABELS[s].capitalize() for s in states))
    rows = [(md_cell(p.label), str(p.selected), *(str(p.counts[s]) for s in states)) for p in pools]
    rows.append(("**Total**", str(sum(totals.values())), *(str(totals[s]) for s in states)))
    return md_table(headers, rows)


def _md_failures(groups: Sequence[FailureGroup]) -> list[str]:
    if not groups:
        return ["None: every node that was sent a request ended healthy (or is still going)."]
    rows = [
        (
            g.outcome.value,
            f"`{g.code}`: {md_cell(g.reason)}" if g.code else md_cell(g.reason),
            str(g.count),
            ", ".join(f"`{md_cell(n)}`" for n in g.examples),
        )
        for g in groups
    ]
    return md_table(("Outcome", "Code / reason", "Nodes", "Examples"), rows)


def _md_timeline(line: Timeline, day: float) -> list[str]:
    if not line.waves and not line.milestones:
        return ["No wave has started."]
    rows = [(md_cell(w.label), f"{w.wave} of {w.of}", *wave_times(w, day)) for w in line.waves]
    headers = ("Pool", "Wave", "Nodes", "Started", "Completed", "Took", "Pause before")
    parts = md_table(headers, rows) if rows else []
    if line.milestones:
        parts += ["", "Events:", ""]
        parts += [
            f"- {clock(m.at, day)} " + (f"{md_cell(m.pool)}: " if m.pool else "") + md_cell(m.text)
            for m in line.milestones
        ]
    return parts


def _md_nodes(report: Report, out: TextIO) -> None:
    targets = report.data.targets
    out.write("## Nodes\n\n")
    shown: Iterable[TargetRecord] = targets
    if len(targets) > MARKDOWN_NODE_LIMIT:
        # A ticket needs the exceptions: list the nodes that did not end healthy first.
        unhealthy = [t for t in targets if t.state is not TargetState.HEALTHY]
        healthy = (t for t in targets if t.state is TargetState.HEALTHY)
        shown = list(itertools.islice(itertools.chain(unhealthy, healthy), MARKDOWN_NODE_LIMIT))
        out.write(
            f"{count(len(targets), 'node')}: the first {MARKDOWN_NODE_LIMIT} are listed, the "
            f"{len(unhealthy)} that did not end healthy first. Every node is in "
            f"`fleet-reimage report {report.run.run_id} --journal {report.data.location} "
            "--format csv`.\n\n"
        )
    headers = tuple(h.capitalize() for h in NODE_HEADERS)
    rows = [tuple(md_cell(cell) for cell in row) for row in _node_rows(report, shown)]
    for line in md_table(headers, rows):
        out.write(line + "\n")
