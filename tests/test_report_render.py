"""status/report rendering from journal records (pure): grouping, timeline, the four formats."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator

import pytest

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
from fleet_reimage.views import report as report_module
from fleet_reimage.views.report import CSV_COLUMNS, write_report
from fleet_reimage.views.runview import (
    RunData,
    attempts_by_target,
    failure_groups,
    in_flight,
    span,
)
from fleet_reimage.views.status import RunSummary, run_status_json, run_text, runs_text
from fleet_reimage.views.timeline import timeline

T0 = 1_795_730_000.0  # 2026-11-25T20:33:20Z
RUN = "r20261125-203320-abcdef"


def run_record(status: RunStatus = RunStatus.FINISHED, reason: str | None = None) -> RunRecord:
    ended = None if status is RunStatus.RUNNING else T0 + 600
    return RunRecord(
        RUN, "patch-night", "reimage", "/plans/patch.yaml", "", "ab" * 32, {}, T0, T0 + 600,
        ended, status, reason, "nohost.invalid", 1,
    )  # fmt: skip


def target(tid: int, pool: str, state: TargetState, **extra: object) -> TargetRecord:
    record = TargetRecord(tid, RUN, "prod", pool, f"node-{tid}", 0, tid, state)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def attempt(tid: int, no: int, outcome: AttemptOutcome, **extra: object) -> AttemptRecord:
    fields: dict[str, object] = {
        "status": 202 if outcome is AttemptOutcome.ACCEPTED else None,
        "request_id": f"req-{tid}-{no}",
        "error_code": None,
        "error_message": None,
    }
    fields.update(extra)
    return AttemptRecord(
        RUN, tid, no, "reimage", f"crid-{tid}-{no}", T0 + tid + no, T0 + tid + no + 0.2,
        outcome, fields["status"], fields["request_id"], fields["error_code"],  # type: ignore[arg-type]
        fields["error_message"], 12.5,  # type: ignore[arg-type]
    )  # fmt: skip


def sample() -> RunData:
    """A run with every kind of ending: healthy, retried, refused, broken, skipped, in flight."""
    targets = [
        target(1, "a", TargetState.HEALTHY, attempts=1, first_sent_at=T0 + 2, finished_at=T0 + 40),
        target(2, "a", TargetState.HEALTHY, attempts=2, first_sent_at=T0 + 3, finished_at=T0 + 50),
        target(3, "a", TargetState.FAILED, attempts=1, reason="node came back starttaskfailed"),
        target(4, "a", TargetState.FAILED, attempts=1, reason="node came back starttaskfailed"),
        target(5, "b", TargetState.FAILED, attempts=1, reason="refused: 409 NodeNotReady rid x"),
        target(6, "b", TargetState.SKIPPED, reason="cannot reimage (OperationNotValidOnNode)"),
        target(7, "b", TargetState.ACCEPTED, attempts=1, last_sent_at=T0 + 500, wave=1),
        target(8, "b", TargetState.IN_FLIGHT, attempts=1, last_sent_at=T0 + 400, wave=1),
        target(9, "b", TargetState.PENDING, wave=1),
    ]  # fmt: skip
    attempts = [
        attempt(1, 1, AttemptOutcome.ACCEPTED),
        attempt(2, 1, AttemptOutcome.REJECTED, status=429, error_code="ServerBusy",
                error_message="slow down"),
        attempt(2, 2, AttemptOutcome.ACCEPTED),
        attempt(3, 1, AttemptOutcome.ACCEPTED),
        attempt(4, 1, AttemptOutcome.ACCEPTED),
        attempt(5, 1, AttemptOutcome.REJECTED, status=409, error_code="NodeNotReady",
                error_message="the node is not ready"),
        attempt(7, 1, AttemptOutcome.ACCEPTED),
        attempt(8, 1, None),  # type: ignore[arg-type]  # sent, no answer recorded yet
    ]  # fmt: skip
    events = [
        RunEvent(RUN, T0 + 1, "wave_started", "prod", "a", {"wave": 1, "of": 2}),
        RunEvent(RUN, T0 + 60, "wave_completed", "prod", "a", {"wave": 1, "held": False}),
        RunEvent(RUN, T0 + 90, "wave_started", "prod", "a", {"wave": 2, "of": 2}),
        RunEvent(RUN, T0 + 95, "wave_started", "prod", "a", {"wave": 2, "of": 2}),  # resumed
        RunEvent(RUN, T0 + 5, "pool_stopped", "prod", "b", {"reason": "cannot reimage"}),
        RunEvent(RUN, T0 + 99, "budget_exceeded", None, None, {"failed": 3, "budget": 2}),
    ]
    exclusions = [Exclusion("prod", "a", "node-x", "state offline is not one of idle, running")]
    return RunData(run_record(), targets, attempts, events, exclusions, "patch.db")


def test_failures_group_by_code_else_reason_with_at_most_three_examples() -> None:
    data = sample()
    groups = failure_groups(data.targets, attempts_by_target(data.attempts))
    summary = [(g.outcome.value, g.code, g.count, g.examples) for g in groups]
    assert summary == [
        ("failed", None, 2, ["node-3", "node-4"]),  # accepted, came back broken: by reason
        ("failed", "NodeNotReady", 1, ["node-5"]),  # refused: by the code
        ("skipped", "OperationNotValidOnNode", 1, ["node-6"]),  # the code its reason ends with
    ]
    many = [target(i, "a", TargetState.FAILED, reason="node came back unusable") for i in range(10)]
    (group,) = failure_groups(many, {})
    assert group.count == 10 and group.examples == ["node-0", "node-1", "node-2"]


def test_in_flight_lists_the_longest_waiting_first() -> None:
    assert [t.node_id for t in in_flight(sample().targets)] == ["node-8", "node-7"]


def test_timeline_keeps_the_first_start_and_measures_pauses() -> None:
    data = sample()
    line = timeline(data.events, data.targets)
    waves = [(w.pool, w.wave, w.started_at - T0, w.took, w.pause_before) for w in line.waves]
    assert waves == [("a", 1, 1.0, 59.0, None), ("a", 2, 90.0, None, 30.0)]
    assert [w.nodes for w in line.waves] == [6 - 2, 0]  # pool a: 4 targets in wave 1
    assert [m.kind for m in line.milestones] == ["pool_stopped", "budget_exceeded"]
    assert "3 failed, budget 2" in line.milestones[1].text


def test_span_reads_well() -> None:
    assert [span(s) for s in (0, 0.25, 3.04, 42, 245, 7500)] == [
        "0s", "250ms", "3.0s", "42s", "4m05s", "2h05m",
    ]  # fmt: skip


def render(data: RunData, fmt: str) -> str:
    out = io.StringIO()
    write_report(data, fmt, out)
    return out.getvalue()


def test_json_and_csv_hold_the_same_nodes_and_every_attempt() -> None:
    data = sample()
    doc = json.loads(render(data, "json"))
    rows = list(csv.DictReader(io.StringIO(render(data, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert (
        [n["node"] for n in doc["nodes"]]
        == [r["node"] for r in rows]
        == [f"node-{i}" for i in range(1, 10)]
    )
    assert [n["outcome"] for n in doc["nodes"]] == [r["outcome"] for r in rows]
    retried = doc["nodes"][1]
    assert [a["client_request_id"] for a in retried["attempt_log"]] == ["crid-2-1", "crid-2-2"]
    assert rows[1]["client_request_ids"] == "crid-2-1;crid-2-2"
    assert rows[1]["request_ids"] == "req-2-1;req-2-2"
    # It ended healthy: the 429 of its first attempt is in the attempt log, not on the node.
    assert retried["attempt_log"][0]["error_code"] == "ServerBusy"
    assert retried["last_error_code"] is None and rows[1]["last_error_code"] == ""
    assert retried["last_error_message"] is None and rows[1]["last_error_message"] == ""
    refused = doc["nodes"][4]  # failed: its error stays on its row
    assert refused["last_error_code"] == rows[4]["last_error_code"] == "NodeNotReady"
    assert doc["totals"]["selected"] == 9 and doc["totals"]["failed"] == 3
    assert doc["run"]["run_id"] == RUN and doc["resume"] is None  # finished
    assert [g["count"] for g in doc["failures"]] == [2, 1, 1]
    assert doc["excluded"][0]["node"] == "node-x"


def test_markdown_is_a_ticket_and_caps_the_node_table(monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample()
    text = render(data, "markdown")
    assert text.startswith("# Reimage report: patch-night\n")
    assert f"| Run | `{RUN}` |" in text and "| Status | finished |" in text
    for heading in ("## Totals", "## Failures", "## Timeline (UTC)", "## Nodes"):
        assert heading in text
    assert "| **Total** | 9 |" in text
    assert "| crid-2-1 |" in text  # the earlier attempt has a row of its own
    monkeypatch.setattr(report_module, "MARKDOWN_NODE_LIMIT", 3)
    capped = render(data, "markdown")
    nodes = capped.split("## Nodes")[1]
    assert "9 nodes: the first 3 are listed" in nodes and "--format csv" in nodes
    listed = [line.split(" | ")[1] for line in nodes.splitlines() if line.startswith("| prod/")]
    assert listed == ["node-3", "node-4", "node-5"]  # not healthy first


def test_table_has_totals_failures_timeline_and_nodes() -> None:
    text = render(sample(), "table")
    assert "Totals" in text and "total" in text and "Nodes (9)" in text
    assert "NodeNotReady: refused" in text and "node came back starttaskfailed" in text
    assert "budget exceeded" in text and "prod/a" in text


def test_status_text_of_a_running_run_shows_what_is_in_flight_and_what_to_do() -> None:
    data = sample()
    running = RunData(
        run_record(RunStatus.RUNNING), data.targets, data.attempts, data.events, [], "j.db"
    )
    text = run_text(running, now=T0 + 700)
    assert "In flight now: 2 (longest waiting first)" in text
    assert text.index("node-8") < text.index("node-7")
    assert "5m00s" in text  # node-8 waits since T0 + 400
    # The recorded runner is on another host: the command is offered with a condition.
    assert f"continue it with: fleet-reimage resume {RUN} --journal j.db" in text
    doc = run_status_json(running, now=T0 + 700)
    assert [n["node"] for n in doc["in_flight"]] == ["node-8", "node-7"]
    # Its failures exceed the budget (budget_exceeded): a plain resume would stop at once.
    assert doc["resume"] == f"fleet-reimage resume {RUN} --journal j.db --accept-failures"


def test_status_of_a_replace_says_being_replaced_since_the_removal_was_accepted() -> None:
    """A replaced node's removal was accepted; it has no request of its own in flight."""
    record = dataclasses.replace(run_record(RunStatus.RUNNING), action="replace")
    removed = target(7, "b", TargetState.ACCEPTED, accepted_at=T0 + 400, wave=1)
    text = run_text(RunData(record, [removed], [], [], [], "j.db"), now=T0 + 700)
    [row] = [line for line in text.splitlines() if "node-7" in line]
    assert "being replaced" in row and "awaiting health" not in row
    assert "5m00s" in row  # since the removal was accepted


def test_runs_listing() -> None:
    data = sample()
    counts = {TargetState.HEALTHY: 2, TargetState.FAILED: 3}
    from collections import Counter

    text = runs_text([RunSummary(data.run, Counter(counts))], "j.db", more=4)
    assert RUN in text and "2 healthy, 3 failed" in text and "finished" in text
    assert "4 older runs" in text
    assert "start one with" in runs_text([], "j.db", more=0)


def big_run(nodes: int) -> RunData:
    def targets() -> Iterator[TargetRecord]:
        for i in range(nodes):
            yield TargetRecord(
                i, RUN, "prod", f"pool-{i % 20}", f"tvm-{i:06d}", i % 4, i, TargetState.HEALTHY,
                "back idle with a new boot", T0, T0 + i, T0 + i, T0 + i + 1, T0 + i + 60, 1, "202",
            )  # fmt: skip

    def attempts() -> Iterator[AttemptRecord]:
        for i in range(nodes):
            yield AttemptRecord(
                RUN, i, 1, "reimage", f"{i:08d}-crid", T0 + i, T0 + i + 0.1,
                AttemptOutcome.ACCEPTED, 202, f"{i:08d}-rid", None, None, 20.0,
            )  # fmt: skip

    return RunData(run_record(), list(targets()), list(attempts()), [], [], "big.db")


def test_a_big_run_renders_every_node_in_every_format() -> None:
    """30,000 nodes (how long that takes is a figure of bench/bench_bigrun.py)."""
    data = big_run(30_000)
    for fmt in ("csv", "json", "table", "markdown"):
        text = render(data, fmt)
        assert "tvm-029999" in text or fmt == "markdown"
    assert len(json.loads(render(data, "json"))["nodes"]) == 30_000
    assert len(list(csv.DictReader(io.StringIO(render(data, "csv"))))) == 30_000


def test_a_running_run_whose_process_died_is_called_so_with_the_command_to_resume() -> None:
    import dataclasses
    import socket
    import subprocess
    import sys

    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait(timeout=30)
    here = dataclasses.replace(
        run_record(RunStatus.RUNNING), host=socket.gethostname(), pid=dead_pid.pid
    )
    data = sample()
    text = run_text(RunData(here, data.targets, data.attempts, [], [], "j.db"), now=T0 + 700)
    assert f"its process (pid {dead_pid.pid}) is gone" in text
    assert f"To continue: fleet-reimage resume {RUN} --journal j.db" in text
    alive = dataclasses.replace(here, pid=os.getpid())
    text = run_text(RunData(alive, data.targets, data.attempts, [], [], "j.db"), now=T0 + 700)
    assert f"running (pid {os.getpid()})" in text and "It is running now" in text
