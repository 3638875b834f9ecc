"""``action: replace`` end to end on the emulator over TCP; the emulator's stats are the
oracle: removals per old node (exactly 1), the fewest ready nodes seen against the limit,
the final target against T, and the new nodes' states."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from replacehelpers import FAST, live_ids, pool_ops, removals, replace_all, replace_plan
from runhelpers import (
    KEY,
    KEY_ENV,
    Recorder,
    emulator,
    journal_events,
    journal_targets,
    resume,
    run,
    run_with,
)

from fleet_reimage import api
from fleet_reimage.emulator.server import RunningEmulator
from fleet_reimage.engine.executor import Executor
from fleet_reimage.journal import RunStatus, TargetState

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


POOL = [{"id": "p", "nodes": 6, "running_tasks": 0}]


@pytest.mark.parametrize(("surge", "limit"), [("2", 6), ("0", 4)])
async def test_replace_removes_each_old_node_once_and_keeps_capacity(
    tmp_path: Path, surge: str, limit: int
) -> None:
    """With surge 2 ready capacity never drops below T = 6; without, below T - 2 = 4."""
    async with emulator(POOL, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, surge=surge, max_unavailable="2")
        pool = (await replace_all(emu, plan, tmp_path / "j.db"))["pools"]["p"]
        assert pool["min_ready"] == limit
        assert (pool["target_dedicated"], pool["target_low_priority"]) == (6, 0)
        fresh = live_ids(emu, "p")
        assert not fresh & old and len(fresh) == 6
        assert pool["added_states"] == {"idle": 6}
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets} == {TargetState.HEALTHY}


async def _grow(emu: RunningEmulator, dedicated: int, low_priority: int) -> None:
    """Give the pool a mix of kinds before the run (the emulator's own resize), and wait
    until every node is idle (the emulator's clock moves as it is read)."""
    state = emu.state
    state.pool_ops.resize("p", dedicated, low_priority, 300.0, "requeue")
    wanted = {"idle": dedicated + low_priority}
    with anyio.fail_after(10):
        for _ in range(1000):
            if emu.stats("p")["pools"]["p"]["states"] == wanted:
                break
            await anyio.sleep(0.02)
    pool = state.pools["p"]
    pool.min_ready = pool.ready_count  # the fewest ready nodes are counted from the run on


@pytest.mark.parametrize("surge", ["3", "0"])
async def test_replace_keeps_dedicated_and_low_priority_apart(tmp_path: Path, surge: str) -> None:
    async with emulator([{"id": "p", "nodes": 4, "running_tasks": 0}], timings=FAST) as emu:
        await _grow(emu, 4, 3)
        before = [n for n in emu.stats()["nodes"] if not n["removed"]]
        old = {n["id"] for n in before}
        plan = replace_plan(tmp_path, emu.url, surge=surge, max_unavailable="3")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        assert result.status is RunStatus.FINISHED, result.reason
        stats = emu.stats()
        pool = stats["pools"]["p"]
        assert removals(emu, "p", old) == dict.fromkeys(old, 1)
        assert (pool["target_dedicated"], pool["target_low_priority"]) == (4, 3)
        assert (pool["current_dedicated"], pool["current_low_priority"]) == (4, 3)
        fresh = [n for n in stats["nodes"] if not n["removed"]]
        assert sum(n["dedicated"] for n in fresh) == 4 and all(n["added"] for n in fresh)
        assert pool["min_ready"] == (7 if surge != "0" else 4)


@pytest.mark.parametrize("option", ["requeue", "taskcompletion"])
async def test_replace_removal_in_doubt_is_reconciled_not_repeated(
    tmp_path: Path, option: str
) -> None:
    """Every removenodes is applied but its answer lost: the run lists the pool, sees the
    nodes leaving (or, with taskcompletion, still running their tasks while the pool's
    target already dropped), and never sends the removal again."""
    faults = {"seed": 5, "remove_nodes": {"reset_after": 1.0}}
    pools = [{"id": "p", "nodes": 6, "running_tasks": 1, "task_duration": "300ms"}]
    async with emulator(pools, timings=FAST, faults=faults) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="3", option=option)
        stats = await replace_all(emu, plan, tmp_path / "j.db")
        assert stats["requests"]["faults"]["reset_after"] == 2  # two steps of three
        tasks = stats["pools"]["p"]["tasks"]
        if option == "taskcompletion":  # the old nodes' tasks were left to finish
            assert (tasks["requeued"], tasks["terminated"]) == (0, 0), tasks
        assert stats["pools"]["p"]["min_ready"] == 3
    ops = await pool_ops(tmp_path / "j.db")
    outcomes = [op.outcome for op in ops if op.operation == "removenodes"]
    assert outcomes == ["reconciled_applied", "reconciled_applied"]


async def test_replace_quota_failure_stops_the_pool_with_the_services_message(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 6, "running_tasks": 0, "core_quota": {"dedicated": 12}}]
    async with emulator(pools, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, surge="2", max_unavailable="1")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        pool = emu.stats()["pools"]["p"]
        assert result.status is RunStatus.STOPPED
        assert "AccountCoreQuotaReached" in (result.reason or "")
        assert set(removals(emu, "p", old).values()) == {0}  # nothing removed there
        assert pool["min_ready"] == 6 and pool["current_dedicated"] == 6
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets} == {TargetState.PENDING}  # resume continues


async def test_replace_refuses_an_auto_scaled_pool_unless_allowed(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 6, "running_tasks": 0,
              "auto_scale": {"target_dedicated": 6, "interval": "100ms"}}]  # fmt: skip
    async with emulator(pools, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, max_unavailable="2")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        assert "auto-scaled" in (result.reason or ""), result.reason
        assert set(removals(emu, "p", old).values()) == {0}
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets} == {TargetState.SKIPPED}


async def test_replace_allowed_on_an_auto_scaled_pool_waits_for_the_formula(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 6, "running_tasks": 0,
              "auto_scale": {"target_dedicated": 6, "interval": "100ms"}}]  # fmt: skip
    async with emulator(pools, timings=FAST) as emu:
        plan = replace_plan(
            tmp_path, emu.url, max_unavailable="2", surge="1", extra="autoscale: allow"
        )
        stats = await replace_all(emu, plan, tmp_path / "j.db")
        pool = stats["pools"]["p"]
        assert pool["min_ready"] >= 4 and pool["target_dedicated"] == 6
        assert stats["requests"]["by_operation"].get("resize", 0) == 0


async def test_replace_new_nodes_failing_count_against_the_budget(tmp_path: Path) -> None:
    """Every new node comes up starttaskfailed: the first step's failures spend the budget,
    and no more old nodes leave."""
    async with emulator(POOL, timings=FAST, outcomes={"starttaskfailed": 1.0}) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="2", budget="1")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        stats = emu.stats()
        assert result.stop_kind == "budget", result.reason
        removed = removals(emu, "p", old)
        assert sum(removed.values()) == 2 and set(removed.values()) == {0, 1}
        assert stats["pools"]["p"]["min_ready"] == 4
        assert stats["pools"]["p"]["added_states"] == {"starttaskfailed": 2}
    targets = await journal_targets(tmp_path / "j.db")
    assert sorted(t.state.value for t in targets).count("failed") == 2


async def test_surge_keeps_old_nodes_whose_replacements_failed_beyond_the_room(
    tmp_path: Path,
) -> None:
    """Surge 2, max_unavailable 1, every new node broken: the first step removes one old
    node (the room allows one), keeps the other in service; the second removes none (the
    failed one holds the room); the budget (2) then stops the run. Capacity never goes
    below T - 1."""
    async with emulator(POOL, timings=FAST, outcomes={"starttaskfailed": 1.0}) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, surge="2", max_unavailable="1", budget="2")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        pool = emu.stats()["pools"]["p"]
        assert result.stop_kind == "budget", result.reason
        assert sum(removals(emu, "p", old).values()) == 1
        assert pool["min_ready"] == 5
        assert pool["target_dedicated"] == 9  # T 6, + 1 kept, + 2 of the second step
        assert pool["states"]["starttaskfailed"] == 4


async def test_a_stop_mid_step_states_the_target_and_resume_continues_to_t(
    tmp_path: Path,
) -> None:
    """Stopped (as Ctrl-C or the deadline would) right after the first removal: the run
    ends stopped with the pool at T - 2, says so (``replace_stopped``), and resume brings
    it back to T, every old node removed once."""
    recorder = Recorder()
    executors: list[Executor] = []
    recorder.callbacks["nodes_removed"] = lambda _: executors[0].request_stop(
        "interrupted", "the operator pressed Ctrl-C"
    )
    hooks = api.RunHooks(observer=recorder, on_executor=executors.append)
    async with emulator(POOL, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="2")
        with anyio.fail_after(60):
            stopped = await run_with(plan, tmp_path / "j.db", hooks)
        pool = emu.stats()["pools"]["p"]
        [said] = recorder.kinds("replace_stopped")
        assert stopped.status is RunStatus.INTERRUPTED
        assert said["target"] == [6, 0] and said["final_target"] == [4, 0]
        assert pool["target_dedicated"] == 4 and pool["min_ready"] == 4
        with anyio.fail_after(60):
            resumed = await resume(tmp_path / "j.db")
        pool = emu.stats()["pools"]["p"]
        assert resumed.status is RunStatus.FINISHED, resumed.reason
        assert removals(emu, "p", old) == dict.fromkeys(old, 1)
        assert (pool["target_dedicated"], pool["min_ready"]) == (6, 4)


async def test_a_step_of_more_than_100_nodes_goes_in_removals_of_at_most_100(
    tmp_path: Path,
) -> None:
    async with emulator([{"id": "p", "nodes": 120, "running_tasks": 0}], timings=FAST) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="110")
        stats = await replace_all(emu, plan, tmp_path / "j.db")
        assert stats["requests"]["by_operation"]["remove_nodes"] == 3  # 100 + 10, then 10
        assert stats["pools"]["p"]["min_ready"] == 10
    ops = await pool_ops(tmp_path / "j.db")
    assert [len(op.node_ids) for op in ops if op.operation == "removenodes"] == [100, 10, 10]


@pytest.mark.parametrize("answer", [True, False])
async def test_a_checkpoint_asks_once_every_pool_is_held(tmp_path: Path, answer: bool) -> None:
    asked: list[str] = []

    async def confirm(message: str) -> bool:
        asked.append(message)
        return answer

    async with emulator(POOL, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(tmp_path, emu.url, waves='[2, "100%"]', extra="confirm_after_wave: 1")
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db", confirm=confirm)
        removed = sum(removals(emu, "p", old).values())
    assert len(asked) == 1 and "wave 1" in asked[0]
    if answer:
        assert result.status is RunStatus.FINISHED and removed == 6
    else:
        assert result.stop_kind == "checkpoint" and removed == 2


async def test_a_resize_in_doubt_is_read_back_not_sent_twice(tmp_path: Path) -> None:
    faults = {"seed": 5, "resize": {"reset_after": 1.0}}
    async with emulator(POOL, timings=FAST, faults=faults) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="2", max_unavailable="2")
        stats = await replace_all(emu, plan, tmp_path / "j.db")
        assert stats["requests"]["by_operation"]["resize"] == 3  # one a step
        assert stats["pools"]["p"]["min_ready"] == 6
    ops = await pool_ops(tmp_path / "j.db")
    assert {op.outcome for op in ops if op.operation == "resize"} == {"reconciled_applied"}


async def test_gates_are_asked_before_each_wave_and_after_the_run(tmp_path: Path) -> None:
    """The plan's gates hold a replace's waves as a reimage's; a failing one stops the run."""
    marker = tmp_path / "asked.txt"
    gate = '{name: g, command: ["sh", "-c", "echo {wave} >> ' + str(marker) + '"], timeout: 10s}'
    after = '{name: after, command: ["true"], timeout: 10s, when: after_run}'
    async with emulator(POOL, timings=FAST) as emu:
        old = live_ids(emu, "p")
        plan = replace_plan(
            tmp_path, emu.url, waves='[2, "100%"]', extra=f"gates: [{gate}, {after}]"
        )
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        assert result.status is RunStatus.FINISHED, result.reason
        assert removals(emu, "p", old) == dict.fromkeys(old, 1)
    assert marker.read_text().split() == ["1", "2"]
    events = await journal_events(tmp_path / "j.db")
    passed = [e.data.get("when") for e in events if e.kind == "gate_passed"]
    assert passed == ["before_wave", "before_wave", "after_run"]


async def test_without_the_health_gate_targets_are_done_unverified(tmp_path: Path) -> None:
    async with emulator(POOL, timings=FAST) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="3")
        text = plan.read_text().replace("wait: true", "wait: false")
        plan.write_text(text)
        await replace_all(emu, plan, tmp_path / "j.db")
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets} == {TargetState.DONE_UNVERIFIED}
