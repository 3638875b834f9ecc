"""Views that tell the truth plainly (issue 16, section 8): pure rendering of journal records.

No Python literals in any output, throttle changes summarised with units, counts with the
right plural, healthy nodes without an error, one CSV line per node, reconciled requests
counted, crashes and restarts marked with their downtime, no timer that keeps counting on a
stopped run, and `status` of a running run pointing at --follow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import socket

import pytest
from test_report_render import RUN, T0, attempt, render, run_record, sample, target

from fleet_reimage.journal.model import AttemptOutcome, RunEvent, RunStatus, TargetState
from fleet_reimage.units import count, plural
from fleet_reimage.views.runview import RunData, clock
from fleet_reimage.views.status import run_status_json, run_text
from fleet_reimage.views.timeline import timeline

PYTHON_LITERALS = re.compile(r"\b(None|True|False)\b|\{'|\['|': |=None|=True|=False")
WRONG_PLURAL = re.compile(
    r"(?<![\d.])1 (nodes|pools|requests|tasks|retries|tries|attempts|crashes|stops|times|runs)\b"
)


def eventful() -> RunData:
    """The sample run, with every kind of event the timeline words (and odd values in them)."""
    data = sample()
    events = [
        *data.events,
        *(
            RunEvent(RUN, T0 + 200 + i / 8, "throttle_changed", "prod", None,
                     {"concurrency": 16 >> min(i, 3), "rate": None if i < 5 else 40.0 - i,
                      "reason": "throttled; pausing 0.5s"})
            for i in range(8)
        ),  # a burst: 8 changes in one second
        RunEvent(RUN, T0 + 500, "throttle_changed", "prod", None,
                 {"concurrency": 3, "rate": None, "reason": "throttled; this request waits"}),
        RunEvent(RUN, T0 + 300, "run_stopping", None, None,
                 {"kind": "deadline", "reason": "the maintenance window's deadline passed"}),
        RunEvent(RUN, T0 + 420, "run_resumed", None, None,
                 {"host": "ops-1", "pid": 4242, "accept_failures": False, "failure_budget": None}),
        RunEvent(RUN, T0 + 430, "runner_joined", None, None, {"host": "ops-2", "pid": 7}),
        RunEvent(RUN, T0 + 440, "something_new", "prod", "a",
                 {"flag": True, "nothing": None, "nested": {"a": 1}, "items": [1, 2]}),
    ]  # fmt: skip
    events.sort(key=lambda e: e.at)
    return dataclasses.replace(data, events=events)


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv"])
def test_no_python_literal_reaches_a_person(fmt: str) -> None:
    data = eventful()
    text = render(data, fmt)
    assert not PYTHON_LITERALS.search(text), PYTHON_LITERALS.search(text)
    assert not WRONG_PLURAL.search(text), WRONG_PLURAL.search(text)


def test_no_python_literal_in_status() -> None:
    data = eventful()
    for status in (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.RUNNING):
        text = run_text(dataclasses.replace(data, run=run_record(status)), now=T0 + 900)
        assert not PYTHON_LITERALS.search(text), (status, PYTHON_LITERALS.search(text))
        assert not WRONG_PLURAL.search(text), (status, WRONG_PLURAL.search(text))
    assert "something new: flag yes, nested a 1, items 1, 2" in text  # unknown kinds, in words


def test_throttle_changes_are_summarised_with_units() -> None:
    line = timeline(eventful().events)
    throttles = [m for m in line.milestones if m.kind == "throttle_changed"]
    assert len(throttles) == 2  # the burst of 8 in one second, then one more minutes later
    burst, later = throttles
    assert burst.events == 8 and burst.at == T0 + 200
    assert burst.text == (
        "throttled by the service, 8 adjustments in 875ms: now 2 requests at once, "
        "paced at 33 requests/s"
    )
    assert later.text == (
        "throttled by the service: now 3 requests at once, not paced (this request waits)"
    )
    status = run_text(eventful(), now=T0 + 900)
    assert status.count("throttled by the service") == 2


def test_plural_words() -> None:
    assert [count(n, "node") for n in (0, 1, 2)] == ["0 nodes", "1 node", "2 nodes"]
    assert count(1, "retry") == "1 retry" and count(3, "retry") == "3 retries"
    assert count(2, "crash") == "2 crashes" and count(2, "running node") == "2 running nodes"
    assert plural("is", 1) == "is" and plural("is", 4) == "are"


def test_healthy_nodes_show_no_error_in_any_format() -> None:
    data = sample()  # node-2 ended healthy after a 429 ServerBusy
    markdown = render(data, "markdown")
    healthy_row = next(line for line in markdown.splitlines() if "| node-2 |" in line)
    assert "ServerBusy" not in healthy_row and "slow down" not in healthy_row
    attempt_row = next(line for line in markdown.splitlines() if "| crid-2-1 |" in line)
    assert "ServerBusy" in attempt_row  # the attempt keeps its answer
    table = render(data, "table")
    assert "ServerBusy" not in next(line for line in table.splitlines() if " node-2 " in line)
    failed_row = next(line for line in markdown.splitlines() if "| node-5 |" in line)
    assert "NodeNotReady" in failed_row  # a node that did not end well keeps its error


def test_csv_has_exactly_one_line_per_node() -> None:
    data = sample()
    message = "The request was throttled.\nRequestId:0f1e\r\nTime:2026-11-25T20:40:00.0000000Z\n"
    data.attempts.append(
        attempt(5, 2, AttemptOutcome.REJECTED, status=409, error_code="NodeNotReady",
                error_message=message)
    )  # fmt: skip
    data.targets[4].reason = "refused:\nno good"
    text = render(data, "csv")
    assert text.count("\n") == len(data.targets) + 1  # `wc -l`: the header and one per node
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(data.targets)
    assert rows[4]["last_error_message"] == (
        "The request was throttled. RequestId:0f1e Time:2026-11-25T20:40:00.0000000Z"
    )
    assert rows[4]["reason"] == "refused: no good"
    assert json.loads(render(data, "json"))["nodes"][4]["last_error_message"] == message


def reconciled() -> RunData:
    data = sample()
    targets = [
        target(20 + i, "c", state, attempts=n, first_sent_at=T0 + 5, finished_at=T0 + 60)
        for i, (state, n) in enumerate(
            [(TargetState.HEALTHY, 1), (TargetState.HEALTHY, 1), (TargetState.HEALTHY, 2),
             (TargetState.HEALTHY, 2), (TargetState.IN_FLIGHT, 1)]
        )
    ]  # fmt: skip
    attempts = [
        attempt(20, 1, AttemptOutcome.RECONCILED_APPLIED),
        attempt(21, 1, AttemptOutcome.RECONCILED_APPLIED),
        attempt(22, 1, AttemptOutcome.RECONCILED_NOT_APPLIED),
        attempt(22, 2, AttemptOutcome.ACCEPTED),
        attempt(23, 1, None),  # type: ignore[arg-type]  # a crash left it; resume: not applied
        attempt(23, 2, AttemptOutcome.ACCEPTED),
        attempt(24, 1, AttemptOutcome.IN_DOUBT),  # not read yet
    ]
    return dataclasses.replace(
        data, targets=data.targets + targets, attempts=data.attempts + attempts
    )


def test_reconciled_requests_are_counted_in_status_and_markdown() -> None:
    data = reconciled()
    said = (
        "5 requests in doubt (sent, no clear answer), reconciled by reading the node: "
        "2 applied (not sent again), 2 not applied (sent again), 1 not read yet"
    )
    assert said in run_text(data, now=T0 + 900)
    assert said in render(data, "markdown")
    assert said in render(data, "table")
    doc = json.loads(render(data, "json"))
    assert doc["reconciled"] == {"in_doubt": 5, "applied": 2, "not_applied": 2, "unresolved": 1}
    assert run_status_json(data, now=T0 + 900)["reconciled"] == doc["reconciled"]
    assert "in doubt" not in run_text(sample(), now=T0 + 900)  # nothing to say: nothing said


def crashed_and_resumed() -> RunData:
    """Started at T0; attempts until T0+100; killed; resumed at T0+400; stopped at the
    deadline at T0+500; resumed at T0+800."""
    data = sample()
    events = [
        RunEvent(RUN, T0 + 1, "wave_started", "prod", "a", {"wave": 1, "of": 2}),
        RunEvent(RUN, T0 + 400, "run_resumed", None, None, {"host": "ops-1", "pid": 11}),
        RunEvent(RUN, T0 + 500, "run_stopping", None, None,
                 {"kind": "deadline", "reason": "the maintenance window's deadline passed"}),
        RunEvent(RUN, T0 + 800, "run_resumed", None, None,
                 {"host": "ops-2", "pid": 12, "accept_failures": True, "failure_budget": 9}),
    ]  # fmt: skip
    attempts = [a for a in data.attempts if a.sent_at < T0 + 100]
    attempts.append(attempt(9, 1, AttemptOutcome.ACCEPTED))  # sent T0 + 10
    attempts.append(dataclasses.replace(attempt(9, 2, AttemptOutcome.ACCEPTED),
                                        sent_at=T0 + 450, finished_at=T0 + 520))  # fmt: skip
    run = dataclasses.replace(run_record(), ended_at=T0 + 1000)
    return dataclasses.replace(data, run=run, events=events, attempts=attempts)


def test_crashes_and_restarts_are_marked_with_their_downtime() -> None:
    data = crashed_and_resumed()
    line = timeline(data.events, data.targets, data.attempts)
    crash, stop = line.restarts
    # The last sign of life before the crash: attempt 1 of node-9, answered at T0 + 10.2.
    assert crash.crashed and crash.last_alive == pytest.approx(T0 + 10.2, abs=1e-3)
    assert not stop.crashed and stop.stop_kind == "deadline"
    assert stop.last_alive == pytest.approx(T0 + 520, abs=1e-3)  # answered after the stop
    assert line.down == pytest.approx((400 - 10.2) + (800 - 520), abs=1e-3)
    texts = [m.text for m in line.milestones]
    assert any(t.startswith("the runner's process ended without stopping") for t in texts)
    assert "run resumed on ops-1 (pid 11) after a crash: down 6m30s" in texts
    assert (
        "run resumed on ops-2 (pid 12) after a stop (deadline): down 4m40s; "
        "the failures so far forgiven, failure budget set to 9"
    ) in texts
    status = run_text(data, now=T0 + 2000)
    assert "restarts resumed 2 times (after 1 crash and 1 stop); not running for 11m10s" in status
    markdown = render(data, "markdown")
    assert "| Duration | 16m40s (3 starts; not running for 11m10s of it) |" in markdown
    doc = json.loads(render(data, "json"))
    assert doc["timeline"]["down_s"] == pytest.approx(669.8, abs=1e-3)
    assert [r["after"] for r in doc["timeline"]["restarts"]] == ["crash", "stop"]


def test_a_stopped_run_shows_no_timer_that_keeps_counting() -> None:
    data = dataclasses.replace(sample(), run=run_record(RunStatus.STOPPED))
    early, late = run_text(data, now=T0 + 700), run_text(data, now=T0 + 90_000)

    def left_in_flight(text: str) -> str:
        return text.split("Left in flight")[1].split("Not done", maxsplit=1)[0]

    assert left_in_flight(early) == left_in_flight(late)
    stopped_at = clock(T0 + 600)  # when the run ended
    assert f"Left in flight when the run stopped at {stopped_at}: 2" in early
    assert "3m20s" in left_in_flight(early)  # node-8 sent at T0 + 400: waited 200 s by then
    assert "had waited" in early and "In flight now" not in early
    doc = run_status_json(data, now=T0 + 90_000)
    assert [n["waiting_s"] for n in doc["in_flight"]] == [200.0, 100.0]


def test_status_of_a_running_run_suggests_follow() -> None:
    here = dataclasses.replace(
        run_record(RunStatus.RUNNING), host=socket.gethostname(), pid=os.getpid()
    )
    text = run_text(dataclasses.replace(sample(), run=here), now=T0 + 700)
    assert f"Watch it live: fleet-reimage status {RUN} --journal patch.db --follow" in text
    assert "In flight now: 2" in text
    # "reason resumed" under "status running": the restarts line says it, with numbers.
    resumed = dataclasses.replace(here, reason="resumed")
    assert "  reason   " not in run_text(dataclasses.replace(sample(), run=resumed), now=T0 + 700)
    # Already following (status --follow): the hint it gives is how to stop, not --follow.
    following = run_text(dataclasses.replace(sample(), run=here), now=T0 + 700, following=5.0)
    assert "--follow" not in following
    assert "It is running now: shown again every 5.0s (Ctrl-C stops watching, not the run)" in (
        following
    )


def test_the_console_leaves_out_fields_without_a_value() -> None:
    import structlog

    from fleet_reimage import logs

    saved = structlog.get_config()
    out = io.StringIO()
    try:
        logs.configure(log_format="console", stream=out)
        structlog.get_logger("t").info("node finished", reason=None, attempts=1, outcome="healthy")
        logs.flush()
        logs.configure(log_format="json", stream=out)
        structlog.get_logger("t").info("node finished", reason=None, attempts=2)
        logs.flush()
    finally:
        structlog.configure(**saved)
    console, as_json = out.getvalue().splitlines()
    assert "attempts=1" in console and "None" not in console and "reason" not in console
    assert json.loads(as_json)["reason"] is None  # JSON lines keep the key, as null


def test_in_doubt_requests_settled_by_a_resume_are_not_left_unread() -> None:
    """The rehearsal's finished run said "5 not read yet (resume reads them)": requests in
    doubt when a run stopped or crashed, which the resume read (the node, not the attempt)
    and settled. A later attempt means the node was found untouched and sent again; a node
    that was accepted or ended with no later attempt means the request took effect."""
    data = sample()
    targets = [
        target(30, "c", TargetState.HEALTHY, attempts=2, first_sent_at=T0 + 5, finished_at=T0 + 60),
        target(31, "c", TargetState.HEALTHY, attempts=3, first_sent_at=T0 + 5, finished_at=T0 + 60),
        target(32, "c", TargetState.HEALTHY, attempts=1, first_sent_at=T0 + 5, finished_at=T0 + 60),
        target(33, "c", TargetState.IN_FLIGHT, attempts=1, first_sent_at=T0 + 5),
    ]  # fmt: skip
    attempts = [
        attempt(30, 1, AttemptOutcome.IN_DOUBT),  # read on resume: untouched, sent again
        attempt(30, 2, AttemptOutcome.ACCEPTED),
        attempt(31, 1, AttemptOutcome.REJECTED, status=429, error_code="TooManyRequests"),
        attempt(31, 2, AttemptOutcome.IN_DOUBT),  # the same, after a throttled first try
        attempt(31, 3, AttemptOutcome.ACCEPTED),
        attempt(32, 1, AttemptOutcome.IN_DOUBT),  # read on resume: it took effect
        attempt(33, 1, AttemptOutcome.IN_DOUBT),  # the run stopped before it was read
    ]
    data = dataclasses.replace(
        data, targets=data.targets + targets, attempts=data.attempts + attempts
    )
    doc = json.loads(render(data, "json"))
    assert doc["reconciled"] == {"in_doubt": 4, "applied": 1, "not_applied": 2, "unresolved": 1}
    finished = dataclasses.replace(data, targets=data.targets[:-1], attempts=data.attempts[:-1])
    said = render(finished, "markdown")
    assert "3 requests in doubt" in said and "not read yet" not in said
