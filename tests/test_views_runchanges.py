"""What resumes changed and which pools wait, in words (pure): timeline lines, the pools a
running run has waiting for room, and the overrides in force."""

from __future__ import annotations

from datetime import UTC, datetime

from fleet_reimage.journal.model import RunEvent, RunRecord, RunStatus
from fleet_reimage.views.runchanges import blocked_now, event_text, overrides_phrase

AT = datetime(2026, 11, 25, 22, 40, tzinfo=UTC).timestamp()


def event(kind: str, data: dict[str, object], at: float = AT, pool: str | None = "etl") -> RunEvent:
    return RunEvent("r1", at, kind, "prod" if pool else None, pool, data)


def test_a_blocked_pool_in_words_until_it_moves_again_or_stops() -> None:
    blocked = event(
        "pool_blocked",
        {"reason": "3 nodes down for other reasons: max_unavailable is 3", "pending": 9,
         "stops_at": AT + 1200},
    )  # fmt: skip
    assert event_text(blocked) == (
        "pool blocked: 3 nodes down for other reasons: max_unavailable is 3; waiting for nodes "
        "to come back until 23:00:00, then it stops (resumable, 9 nodes kept pending)"
    )
    moving = event("pool_unblocked", {"after_s": 95.0}, AT + 95)
    assert event_text(moving) == "pool moving again (it was blocked for 1m35s)"
    other = event("pool_blocked", {"reason": "1 node down"}, AT, pool="render")
    assert [w.pool for w in blocked_now([blocked, other])] == ["prod/etl", "prod/render"]
    assert [w.pool for w in blocked_now([blocked, other, moving])] == ["prod/render"]
    stop = event("run_stopping", {"kind": "deadline"}, AT + 99, pool=None)
    assert blocked_now([blocked, other, stop]) == []


def test_overrides_and_plan_changes_in_words() -> None:
    override = event(
        "override",
        {"setting": "max_unavailable", "option": "--max-unavailable", "value": "30%",
         "per_pool": {"prod/etl": 4}, "was_per_pool": {"prod/etl": 2}},
        pool=None,
    )  # fmt: skip
    assert event_text(override) == (
        "override on resume: --max-unavailable 30%; max_unavailable per pool: prod/etl 2 -> 4"
    )
    deadline = event("override", {"setting": "deadline", "value": AT, "was": AT - 3600}, pool=None)
    assert event_text(deadline) == (
        "override on resume: --deadline 2026-11-25T22:40:00Z (was 2026-11-25T21:40:00Z)"
    )
    changed = event(
        "plan_changed",
        {"changes": [{"setting": "rollout.waves", "was": "[1, 100%]", "now": "[2, 100%]",
                      "applies": False, "why": "the run keeps its ladder"},
                     {"setting": "option", "was": "requeue", "now": "taskcompletion",
                      "applies": True, "why": "for the nodes not sent yet"}]},
        pool=None,
    )  # fmt: skip
    assert event_text(changed) == (
        "plan changed on resume (--force-plan), 2 settings: rollout.waves [1, 100%] -> "
        "[2, 100%] (does not take effect: the run keeps its ladder); option requeue -> "
        "taskcompletion (takes effect)"
    )


def test_the_overrides_in_force_in_the_order_resume_lists_them() -> None:
    run = RunRecord(
        "r1", "night", "reimage", "/p.yaml", "", "",
        {"overrides": {"concurrency": 8, "max_unavailable": "30%"},
         "pool_limits": {"prod/etl": [4, 0], "prod/render": [9, 1]}},
        AT, AT, None, RunStatus.STOPPED, None, "ops-1", 1,
    )  # fmt: skip
    assert overrides_phrase(run) == "max_unavailable 30% (prod/etl 4, prod/render 9), concurrency 8"
