"""Drains and the plan's notify, as pure logic: the plan's validation (file:line errors), the
drain decisions, and what a dead run left (read from attempts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.errors import InputError
from fleet_reimage.journal.model import AttemptOutcome, AttemptRecord, RunEvent
from fleet_reimage.plan import parse_plan
from fleet_reimage.plan.drain import DrainSpec, NotifySpec
from fleet_reimage.plan.model import Plan
from fleet_reimage.rollout.drain import drain_end, ever_drained, left_drains, needs_drain
from fleet_reimage.views.drains import drain_counts, drain_lines

PLAN = """\
version: 1
name: t
accounts:
  - name: west
    endpoint: https://acct.westus2.batch.azure.com
    auth: {type: shared-key, account: acct, key_env: BATCH_KEY}
    pools: [{match: "*"}]
"""


def parse(text: str, **environ: str) -> Plan:
    return parse_plan(text, Path("/plans/p.yaml"), environ={"BATCH_KEY": "x", **environ})


def test_a_drain_and_webhooks_in_the_plan() -> None:
    plan = parse(PLAN + "rollout:\n  drain: {timeout: 30m, then: terminate}\n"
                 "notify:\n  - url_env: TEAMS_WEBHOOK\n", TEAMS_WEBHOOK="https://t/x")  # fmt: skip
    assert plan.rollout.drain == DrainSpec(timeout=1800.0, then="terminate")
    assert plan.notify == (NotifySpec("TEAMS_WEBHOOK"),)
    assert parse(PLAN).rollout.drain is None


@pytest.mark.parametrize(
    ("tail", "line", "path", "words"),
    [
        ("rollout:\n  drain: {timeout: 30m, then: wait}\n", 9, "rollout.drain.then",
         "Allowed: requeue, terminate"),
        ("rollout:\n  drain: {timeout: 30, then: requeue}\n", 9, "rollout.drain.timeout",
         "a bare number has no unit"),
        ("rollout:\n  drain: {then: requeue}\n", 9, "rollout.drain",
         "missing required key 'timeout'"),
        ("rollout:\n  drain: {timeout: 2d, then: requeue}\n", 9, "rollout.drain.timeout",
         "must be from"),
        ("rollout:\n  health: {wait: false}\n  drain: {timeout: 1m, then: requeue}\n", 10,
         "rollout.drain", "a drain needs health.wait: true"),
        ("notify:\n  - url_env: https://hooks.slack.com/x\n", 9, "notify[0].url_env",
         "not an environment variable name"),
        ("notify:\n  - url: https://hooks.slack.com/x\n", 9, "notify[0].url",
         "a webhook URL is a secret and never goes in the plan"),
        ("notify:\n  - {}\n", 9, "notify[0]", "missing required key 'url_env'"),
        ("notify: []\n", 8, "notify", "the list is empty"),
        ("notify:\n  - url_env: UNSET_HOOK\n", 9, "notify[0].url_env",
         "environment variable UNSET_HOOK is not set"),
    ],
)  # fmt: skip
def test_bad_drains_and_webhooks_are_one_clear_error(
    tail: str, line: int, path: str, words: str
) -> None:
    with pytest.raises(InputError) as caught:
        parse(PLAN + tail)
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert len(errors) == 1, [p.render() for p in errors]
    assert (errors[0].file, errors[0].line, errors[0].path) == ("/plans/p.yaml", line, path)
    assert words in errors[0].message
    assert "hooks.slack.com" not in errors[0].render()  # never echoed


def test_idle_nodes_skip_the_drain() -> None:
    assert needs_drain(2) and not needs_drain(0) and not needs_drain(None)


@given(
    running=st.integers(0, 50),
    waited=st.floats(0, 1e4, allow_nan=False),
    timeout=st.floats(0.001, 1e4, allow_nan=False),
)
def test_a_drain_ends_when_the_tasks_end_or_the_timeout_passes(
    running: int, waited: float, timeout: float
) -> None:
    end = drain_end(running, waited, timeout, plan_option="taskcompletion", then="requeue")
    if running == 0:
        assert end is not None and not end.timed_out and end.option == "taskcompletion"
    elif waited >= timeout:
        assert end is not None and end.timed_out and end.option == "requeue"
    else:
        assert end is None


def attempt(
    target: int, no: int, op: str, outcome: AttemptOutcome | None, at: float = 0.0
) -> AttemptRecord:
    return AttemptRecord("r", target, no, op, f"c{target}-{no}", at, None, outcome, None, None,
                         None, None, None)  # fmt: skip


def test_what_a_dead_run_left_drained() -> None:
    attempts = [
        attempt(1, 1, "disablescheduling", AttemptOutcome.ACCEPTED),  # drained, never acted
        attempt(2, 1, "disablescheduling", AttemptOutcome.ACCEPTED),
        attempt(2, 2, "reimage", AttemptOutcome.ACCEPTED),  # drained and acted on
        attempt(3, 1, "disablescheduling", None),  # in flight when the run died
        attempt(4, 1, "disablescheduling", AttemptOutcome.REJECTED),  # never disabled
        attempt(5, 1, "reimage", AttemptOutcome.ACCEPTED),  # idle: no drain
        attempt(6, 1, "disablescheduling", AttemptOutcome.IN_DOUBT, at=5.0),  # undone at 9
    ]
    assert left_drains(attempts, {6: 9.0}) == {1, 3}
    assert left_drains(attempts) == {1, 3, 6}
    assert ever_drained(attempts) == {1, 2, 3, 6}


def test_drains_in_words_from_a_runs_events() -> None:
    def event(kind: str, target: int, **data: object) -> RunEvent:
        return RunEvent("r", 0.0, kind, "a", "p", {"target": target, "node": f"n{target}", **data})

    events = [
        event("drain_started", 1), event("drain_started", 2), event("drain_started", 3),
        event("drain_ended", 1, timed_out=False, duration_s=4.0),
        event("drain_ended", 2, timed_out=True, duration_s=90.0),
        event("scheduling_enabled", 1),
    ]  # fmt: skip
    counts = drain_counts(events)
    assert counts == {"started": 3, "drained": 1, "timed_out": 1, "undone": 0,
                      "longest_s": 90.0, "draining": ["n3"]}  # fmt: skip
    assert drain_lines(events) == [
        "3 drains: 1 drained in time, 1 timed out; longest 1m30s; "
        "draining now (or left by a stopped run): n3"
    ]
    undone = [*events, event("drain_ended", 3, undone=True, timed_out=False)]
    assert drain_lines(undone) == [
        "3 drains: 1 drained in time, 1 timed out, 1 undone (stopped before the action); "
        "longest 1m30s"
    ]
    assert drain_lines([event("wave_started", 0)]) == []
