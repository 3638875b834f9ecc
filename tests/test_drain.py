"""Drain with a deadline (issue 17, section 1) against the emulator over real TCP.

The oracle is the emulator's own record of what happened to each node and its tasks
(``/_emulator/stats``: scheduling disables and enables, reimages, tasks completed and
requeued, scheduling state now), and the journal's attempts and events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pgserver
import pytest
from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage, wait_for_events
from runhelpers import KEY, KEY_ENV, Recorder, emulator, resume, run_with, write_plan

from fleet_reimage import api
from fleet_reimage.engine.executor import Executor
from fleet_reimage.journal import RunStatus, open_journal

pytestmark = pytest.mark.anyio

TIMINGS = {"reimaging": "50ms", "starting": "50ms", "waitingforstarttask": "0s"}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def drain_plan(folder: Path, url: str, drain: str, option: str = "requeue", waves: str = '["100%"]',
               max_unavailable: str = '"100%"') -> Path:  # fmt: skip
    path = write_plan(
        folder,
        url,
        rollout=f"""
            waves: {waves}
            max_unavailable: {max_unavailable}
            health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
            failure_budget: "100%"
            drain: {drain}
        """,
    )
    path.write_text(
        path.read_text().replace("action: reimage", f"action: reimage\noption: {option}")
    )
    return path


def nodes_of(emu: Any, pool: str) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in emu.stats()["nodes"] if n["pool"] == pool}


async def events_of(journal: Path) -> list[tuple[str, dict[str, Any]]]:
    store = await open_journal(journal, readonly=True)
    try:
        run_id = (await store.runs())[0].run_id
        return [(e.kind, dict(e.data)) for e in await store.events(run_id)]
    finally:
        await store.close()


async def disable_attempts(journal: Path) -> list[Any]:
    store = await open_journal(journal, readonly=True)
    try:
        run_id = (await store.runs())[0].run_id
        return [a for a in await store.attempts(run_id) if a.operation == "disablescheduling"]
    finally:
        await store.close()


async def test_a_drain_that_completes_waits_for_the_tasks_and_idle_nodes_skip_it(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 6, "states": {"idle": 0.5, "running": 0.5},
              "running_tasks": 2, "task_duration": "1s"}]  # fmt: skip
    async with emulator(pools, timings=TIMINGS) as emu:
        before = nodes_of(emu, "p")
        busy = {n for n, s in before.items() if s["running_tasks"] > 0}
        assert 0 < len(busy) < 6
        plan = drain_plan(tmp_path, emu.url, "{timeout: 30s, then: terminate}")
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert result.exit_code == 0, result
        after = nodes_of(emu, "p")
        # Busy nodes were drained (once each), idle ones not at all; every node reimaged once.
        assert {n for n, s in after.items() if s["scheduling_disables"]} == busy
        assert all(s["scheduling_disables"] <= 1 for s in after.values())
        assert {s["reimages"] for s in after.values()} == {1}
        # The tasks ran to their end: none requeued or terminated by the reimage.
        tasks = emu.stats()["pools"]["p"]["tasks"]
        assert tasks["completed"] == 2 * len(busy)
        assert tasks["requeued"] == tasks["terminated"] == 0
        # Scheduling is enabled again on every node.
        assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
        ended = recorder.kinds("drain_ended")
        assert {e["node"] for e in ended} == busy
        assert not any(e["timed_out"] for e in ended) and all(e["duration_s"] > 0 for e in ended)
        assert {e["node"] for e in recorder.kinds("drain_started")} == busy
        attempts = await disable_attempts(tmp_path / "j.db")
        assert len(attempts) == len(busy) and all(a.client_request_id for a in attempts)
        kinds = [k for k, _ in await events_of(tmp_path / "j.db")]
        assert kinds.count("drain_started") == kinds.count("drain_ended") == len(busy)


async def test_a_drain_that_times_out_requeues_the_tasks_and_enables_scheduling(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 4, "states": {"running": 1.0},
              "running_tasks": 3, "task_duration": "1h"}]  # fmt: skip
    async with emulator(pools, timings=TIMINGS) as emu:
        # The plan's option would wait for the tasks; the drain's ``then`` requeues them.
        plan = drain_plan(
            tmp_path, emu.url, "{timeout: 300ms, then: requeue}", option="taskcompletion"
        )
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert result.exit_code == 0, result
        tasks = emu.stats()["pools"]["p"]["tasks"]
        assert tasks["requeued"] == 4 * 3 and tasks["completed"] == 0
        after = nodes_of(emu, "p")
        assert {s["reimages"] for s in after.values()} == {1}
        assert {s["scheduling_disables"] for s in after.values()} == {1}
        assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
        ended = recorder.kinds("drain_ended")
        assert len(ended) == 4 and all(e["timed_out"] and e["option"] == "requeue" for e in ended)


async def test_drains_count_as_unavailable_within_max_unavailable(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 6, "states": {"running": 1.0},
              "running_tasks": 1, "task_duration": "1h"}]  # fmt: skip
    async with emulator(pools, timings=TIMINGS) as emu:
        plan = drain_plan(tmp_path, emu.url, "{timeout: 200ms, then: requeue}", max_unavailable="2")
        recorder, draining, most = Recorder(), set(), 0

        def started(fields: dict[str, Any]) -> None:
            nonlocal most
            draining.add(fields["node"])
            most = max(most, len(draining))

        recorder.callbacks["drain_started"] = started
        recorder.callbacks["drain_ended"] = lambda f: draining.discard(f["node"])
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert result.exit_code == 0
        assert most <= 2 and emu.stats()["pools"]["p"]["peak_unavailable"] <= 2
        assert len(recorder.kinds("drain_started")) == 6


async def test_a_run_stopped_mid_drain_enables_scheduling_and_resume_acts_once(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 4, "states": {"running": 1.0},
              "running_tasks": 2, "task_duration": "1h"}]  # fmt: skip
    async with emulator(pools, timings=TIMINGS) as emu:
        plan = drain_plan(tmp_path, emu.url, "{timeout: 1h, then: requeue}", max_unavailable="2")
        journal = tmp_path / "j.db"
        recorder, executors = Recorder(), list[Executor]()
        starts = 0

        def on_drain(_: dict[str, Any]) -> None:  # the second drain stops the run
            nonlocal starts
            starts += 1
            if starts == 2:
                executors[0].request_stop("interrupted", "test stop mid-drain")

        recorder.callbacks["drain_started"] = on_drain
        hooks = api.RunHooks(observer=recorder, on_executor=executors.append)
        with anyio.fail_after(30):
            first = await run_with(plan, journal, hooks)
        assert first.status is RunStatus.INTERRUPTED
        after = nodes_of(emu, "p")
        drained = {n for n, s in after.items() if s["scheduling_disables"]}
        assert len(drained) == 2
        assert {s["reimages"] for s in after.values()} == {0}  # stopped before any action
        assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
        assert all(after[n]["scheduling_enables"] == 1 for n in drained)
        undone = [e for e in recorder.kinds("drain_ended") if e.get("undone")]
        assert {e["node"] for e in undone} == drained

        # The resumed run drains every node again; a short drain this time (--force-plan).
        plan.write_text(plan.read_text().replace("timeout: 1h", "timeout: 200ms"))
        with anyio.fail_after(60):
            final = await resume(journal, force_plan=True)
        assert isinstance(final, api.RunResult) and final.exit_code == 0, final
        after = nodes_of(emu, "p")
        assert {s["reimages"] for s in after.values()} == {1}  # each node acted on once
        assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
        assert emu.stats()["pools"]["p"]["tasks"]["requeued"] == 4 * 2
        # The stop's enables are in the journal: the resume did not send them again (one at
        # the stop, one after the action).
        assert all(after[n]["scheduling_enables"] == 2 for n in drained)
        kinds = [k for k, _ in await events_of(journal)]
        assert kinds.count("scheduling_enabled") == 4 + 2


def test_resume_undoes_the_drains_a_killed_run_left_and_acts_once(tmp_path: Path) -> None:
    """A run killed mid-drain (SIGKILL: nothing of it runs after) leaves nodes with scheduling
    disabled; ``resume`` finds them in the journal, enables them, and finishes the run."""
    pools = [{"id": "p", "nodes": 3, "states": {"running": 1.0},
              "running_tasks": 1, "task_duration": "1h"}]  # fmt: skip
    with emulator_process(tmp_path, pools, timings=TIMINGS) as emu:
        plan = drain_plan(tmp_path, emu.url, "{timeout: 1h, then: requeue}")
        events = tmp_path / "events.jsonl"
        first = start_fleet_reimage("run", str(plan), "--yes", "--journal", "j.db",
                                    "--events", str(events), cwd=tmp_path)  # fmt: skip
        try:
            wait_for_events(first, events, "drain_started", 3)
            assert first.poll() is None
            first.kill()
            first.communicate(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        left = {n["id"]: n for n in emu.stats()["nodes"]}
        assert {n["scheduling_state"] for n in left.values()} == {"disabled"}
        assert {n["reimages"] for n in left.values()} == {0}
        plan.write_text(plan.read_text().replace("timeout: 1h", "timeout: 200ms"))
        resumed = fleet_reimage("resume", "--force-plan", "--journal", "j.db", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        done = {n["id"]: n for n in emu.stats()["nodes"]}
        assert {n["reimages"] for n in done.values()} == {1}
        assert {n["scheduling_state"] for n in done.values()} == {"enabled"}
        # Enabled by the resume (its undo), then drained again and enabled after the action.
        assert {n["scheduling_disables"] for n in done.values()} == {2}


@pytest.mark.postgres
async def test_a_shared_run_on_postgresql_drains_too(
    tmp_path: Path, pg_server: pgserver.PgServer
) -> None:
    """The same drains when the journal is PostgreSQL (a shared run: claims with leases)."""
    pools = [{"id": "p", "nodes": 6, "states": {"idle": 0.5, "running": 0.5},
              "running_tasks": 2, "task_duration": "1h"}]  # fmt: skip
    with pgserver.fresh_database(pg_server) as url:
        async with emulator(pools, timings=TIMINGS) as emu:
            busy = {n for n, s in nodes_of(emu, "p").items() if s["running_tasks"]}
            plan = drain_plan(tmp_path, emu.url, "{timeout: 300ms, then: terminate}")
            recorder = Recorder()
            with anyio.fail_after(60):
                result = await run_with(plan, url, api.RunHooks(observer=recorder))  # type: ignore[arg-type]
            assert result.exit_code == 0, result
            after = nodes_of(emu, "p")
            assert {s["reimages"] for s in after.values()} == {1}
            assert {n for n, s in after.items() if s["scheduling_disables"]} == busy
            assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
            assert emu.stats()["pools"]["p"]["tasks"]["terminated"] == 2 * len(busy)


async def test_a_pool_that_stops_mid_drain_gives_its_nodes_their_scheduling_back(
    tmp_path: Path,
) -> None:
    """The pool refuses reimage (409 OperationNotValidOnNode): the idle nodes' answers stop
    it while its busy nodes drain; those drains are undone at once, nothing is reimaged."""
    pools = [{"id": "p", "nodes": 6, "states": {"idle": 0.5, "running": 0.5}, "reimage": "refused",
              "running_tasks": 1, "task_duration": "1h"}]  # fmt: skip
    async with emulator(pools, timings=TIMINGS) as emu:
        busy = {n for n, s in nodes_of(emu, "p").items() if s["running_tasks"]}
        plan = drain_plan(tmp_path, emu.url, "{timeout: 1h, then: requeue}")
        recorder = Recorder()
        with anyio.fail_after(30):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert result.exit_code == 3 and "p" in " ".join(result.stopped_pools)
        after = nodes_of(emu, "p")
        assert {s["reimages"] for s in after.values()} == {0}
        assert {n for n, s in after.items() if s["scheduling_disables"]} == busy
        assert {s["scheduling_state"] for s in after.values()} == {"enabled"}
        undone = [e for e in recorder.kinds("drain_ended") if e.get("undone")]
        assert {e["node"] for e in undone} == busy


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("killed_after", "drain"),
    [
        ("drain_started", "{timeout: 5s, then: requeue}"),  # the next runner finishes the drain
        ("node_accepted", "{timeout: 100ms, then: requeue}"),  # it takes the reimaging over
    ],
)
def test_a_shared_runner_killed_mid_drain_is_taken_over_and_no_node_stays_disabled(
    tmp_path: Path, pg_server: pgserver.PgServer, killed_after: str, drain: str
) -> None:
    pools = [{"id": "p", "nodes": 3, "states": {"running": 1.0},
              "running_tasks": 1, "task_duration": "1h"}]  # fmt: skip
    timings = {**TIMINGS, "reimaging": "3s"}
    with (
        pgserver.fresh_database(pg_server) as url,
        emulator_process(tmp_path, pools, timings=timings) as emu,
    ):
        plan = drain_plan(tmp_path, emu.url, drain)
        events = tmp_path / "events.jsonl"
        common = ["--yes", "--journal", url, "--lease", "2s"]
        first = start_fleet_reimage("run", str(plan), *common, "--events", str(events),
                                    cwd=tmp_path)  # fmt: skip
        try:
            wait_for_events(first, events, killed_after, 3)
            assert first.poll() is None, first.communicate()
            first.kill()
            first.communicate(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        assert {n["scheduling_state"] for n in emu.stats()["nodes"]} == {"disabled"}
        second = fleet_reimage("run", str(plan), *common, "--join", cwd=tmp_path, timeout=120)
        assert second.returncode == 0, second.stdout + second.stderr
        done = emu.stats()["nodes"]
        assert {n["reimages"] for n in done} == {1}
        assert {n["scheduling_state"] for n in done} == {"enabled"}
