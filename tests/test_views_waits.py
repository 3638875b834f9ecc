"""Gates and soaks in words (pure): the live table's note on a waiting pool, the timeline's
lines, the pools soaking now and the gate that stopped a run, from recorded events."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fleet_reimage.journal.model import RunEvent
from fleet_reimage.rollout.nextwave import NextWaveRules, NextWaveWaits
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.views.frame import pool_note
from fleet_reimage.views.waitwords import last_gate_failure, soaking_now, wait_event_text


def event(name: str, at: float, pool: str | None = "p", **data: Any) -> RunEvent:
    return RunEvent("r1", at, name, "acct" if pool else None, pool, data)


def pool_with(rules: NextWaveRules) -> Any:
    rollout = PoolRollout([[1], [2]], max_unavailable=1, waits=NextWaveWaits(rules))
    return SimpleNamespace(rollout=rollout, awaiting={}, blocked_since=None)


def test_the_live_table_says_a_pool_asks_its_gates_then_soaks() -> None:
    pool = pool_with(NextWaveRules(soak=30.0, gated=True))
    assert pool_note(pool, 0.0) == "asking the gates before wave 1"
    pool.rollout.waits.gate_passed(0)
    assert pool.rollout.take_next(0.0) == 1
    pool.rollout.settle(1, 10.0)
    assert pool_note(pool, 15.0) == "soaking wave 1: 25s left"
    assert pool_note(pool, 41.0) == "soaking wave 1: ends with the next poll"
    pool.rollout.waits.end_soak()
    assert pool_note(pool, 42.0) == "asking the gates before wave 2"


def test_soaking_now_ends_with_the_soak_a_stop_or_a_resume() -> None:
    events = [
        event("soak_started", 1.0, wave=1, seconds=600, nodes=3),
        event("soak_started", 2.0, pool="q", wave=2, seconds=600, nodes=5),
        event("soak_ended", 3.0, pool="q", wave=2, nodes=5, failed=0),
    ]
    assert list(soaking_now(events)) == ["acct/p"]
    assert soaking_now([*events, event("run_stopping", 4.0, pool=None, kind="gate")]) == {}
    assert wait_event_text(events[0]) == "soak of wave 1 started: 3 nodes for 10m00s"
    assert wait_event_text(events[2]) == "soak of wave 2 ended: every node stayed up"
    failed = event("soak_ended", 5.0, wave=1, nodes=3, failed=1)
    assert wait_event_text(failed) == "soak of wave 1 ended: 1 node degraded (failed)"


def test_the_last_gate_failure_with_its_output_until_the_gate_passes() -> None:
    failed = event(
        "gate_failed", 1.0, gate="slo", wave=2, exit_code=4, timed_out=False, seconds=0.2,
        why="exit 4", output=["checking", "3 alerts firing"], when="before_wave",
    )  # fmt: skip
    failure = last_gate_failure([failed])
    assert failure is not None
    assert failure.pool == "acct/p" and failure.text == "'slo' before wave 2 failed (exit 4)"
    assert failure.output == ("checking", "3 alerts firing")
    passed = event("gate_passed", 2.0, gate="slo", wave=2, exit_code=0, seconds=0.25)
    assert last_gate_failure([failed, passed]) is None
    assert wait_event_text(passed) == "gate 'slo' before wave 2 passed (250ms)"
    after = event("gate_failed", 3.0, pool=None, gate="smoke", why="timed out after 60.0s")
    assert wait_event_text(after) == "gate 'smoke' after the run failed (timed out after 60.0s)"
