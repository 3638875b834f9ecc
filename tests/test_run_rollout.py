"""Rolling rollouts on the emulator with timings scaled down: ladders, availability, health,
failure budget, deadline, checkpoints, unsupported pools and adaptive throttling."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from runhelpers import (
    KEY,
    KEY_ENV,
    Recorder,
    emulator,
    journal_targets,
    reimages,
    resume,
    run,
    run_with,
    write_plan,
)

from fleet_reimage import api
from fleet_reimage.journal import RunStatus, TargetState, open_journal

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def rollout(
    waves: str = '["100%"]',
    max_unavailable: str = '"100%"',
    budget: str = '"100%"',
    extra: str = "",
) -> str:
    return f"""
        waves: {waves}
        max_unavailable: {max_unavailable}
        pause_between_waves: 200ms
        health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
        failure_budget: {budget}
        {extra}
    """


async def journal_events(path: Path) -> list[tuple[str, str | None, dict[str, object]]]:
    store = await open_journal(path, readonly=True)
    try:
        run_id = (await store.runs())[0].run_id
        return [(e.kind, e.pool, dict(e.data)) for e in await store.events(run_id)]
    finally:
        await store.close()


async def test_canary_ladder_waits_for_each_wave_and_holds_max_unavailable(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 20, "states": {"idle": 0.9, "offline": 0.1}}]
    async with emulator(pools, timings={"reimaging": "150ms", "starting": "100ms"}) as emu:
        plan = write_plan(
            tmp_path, emu.url, rollout=rollout('[1, 3, "50%", "100%"]', max_unavailable="4")
        )
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        stats = emu.stats()
    assert result.exit_code == 0
    assert stats["pools"]["p"]["peak_unavailable"] <= 4 - 2  # 2 nodes were already offline
    started = [f["wave"] for f in recorder.kinds("wave_started")]
    assert started == [1, 2, 3, 4]
    # waves are cumulative targets of the 18 selected nodes: 1, 3, 9, 18
    order = [kind for kind, _ in recorder.events if kind in ("wave_started", "node_healthy")]
    sizes, current = [], 0
    for kind in order:
        if kind == "wave_started":
            sizes.append(0)
            current = len(sizes) - 1
        else:
            sizes[current] += 1
    assert sizes == [1, 2, 6, 9]
    events = await journal_events(tmp_path / "j.db")
    assert [e[2]["wave"] for e in events if e[0] == "wave_completed"] == [1, 2, 3, 4]


async def test_max_unavailable_holds_under_concurrency_and_faults(tmp_path: Path) -> None:
    faults = {
        "seed": 5,
        "reimage": {
            "throttle": 0.05,
            "retry_after": "20ms",
            "reset_after": 0.05,
            "server_error": 0.05,
        },
    }
    pools = [
        {"id": "a", "nodes": 60},
        {"id": "b", "nodes": 30},
    ]
    async with emulator(
        pools, faults=faults, timings={"reimaging": "100ms", "starting": "50ms"}
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout=rollout(max_unavailable='"10%"'),
            execution="""
            concurrency: 64
            per_account_concurrency: 64
            request_timeout: 1s
            retry: {max_attempts: 8, initial_backoff: 10ms, max_backoff: 50ms}
        """,
        )
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        stats = emu.stats()
        counts = reimages(emu)
    assert result.exit_code == 0
    assert stats["pools"]["a"]["peak_unavailable"] == 6  # reached, never exceeded
    assert stats["pools"]["b"]["peak_unavailable"] == 3
    assert set(counts.values()) == {1}


async def test_health_failures_fail_nodes_and_exit_1(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 30}]
    async with emulator(pools, outcomes={"starttaskfailed": 0.3, "unusable": 0.0}) as emu:
        plan = write_plan(tmp_path, emu.url)
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        states = {n["id"]: n["state"] for n in emu.stats()["nodes"]}
    assert result.exit_code == 1 and result.status is RunStatus.FINISHED
    targets = await journal_targets(tmp_path / "j.db")
    failed = {t.node_id for t in targets if t.state is TargetState.FAILED}
    assert failed and failed == {n for n, s in states.items() if s == "starttaskfailed"}
    assert all("starttaskfailed" in (t.reason or "") for t in targets if t.node_id in failed)


async def test_failure_budget_stops_then_resume_with_accept_failures(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 40}]
    async with emulator(pools, outcomes={"starttaskfailed": 0.5, "unusable": 0.0}) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout('[8, "100%"]', budget="2"))
        journal = tmp_path / "j.db"
        with anyio.fail_after(60):
            first = await run(plan, journal)
        assert first.exit_code == 3 and first.status is RunStatus.STOPPED
        assert "failure budget exceeded" in (first.reason or "")
        targets = await journal_targets(journal)
        failed = sum(t.state is TargetState.FAILED for t in targets)
        assert failed >= 3  # more than the budget of 2
        assert failed <= 8  # only the first wave had started
        assert sum(t.state is TargetState.PENDING for t in targets) > 0
        events = await journal_events(journal)
        assert any(kind == "budget_exceeded" for kind, _, _ in events)
        with anyio.fail_after(60):
            again = await resume(journal)  # the same budget is still exceeded
        assert again.exit_code == 3
        with anyio.fail_after(60):
            final = await resume(journal, accept_failures=True, failure_budget=100)
        counts = reimages(emu)
    assert final.status is RunStatus.FINISHED and final.exit_code == 1
    assert set(counts.values()) == {1}  # nothing twice across the three runs


async def test_deadline_stops_resumable(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 12}]
    async with emulator(pools) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [2, "100%"]
            max_unavailable: "100%"
            pause_between_waves: 30s
            health: {wait: true, poll_interval: 100ms, timeout: 20s}
        """,
        )
        journal = tmp_path / "j.db"
        with anyio.fail_after(30):
            first = await run(plan, journal, deadline=time.time() + 1.5)
        assert first.exit_code == 3 and "deadline" in (first.reason or "")
        assert sum(reimages(emu).values()) == 2  # only the first wave started
        store = await open_journal(journal, readonly=True)
        run_record = (await store.runs())[0]
        await store.close()
        assert run_record.status is RunStatus.STOPPED


async def test_checkpoint_stops_a_non_interactive_run_and_resume_continues(tmp_path: Path) -> None:
    pools = [
        {"id": "p", "nodes": 10},
        {"id": "q", "nodes": 5},
    ]
    async with emulator(pools) as emu:
        plan = write_plan(
            tmp_path, emu.url, rollout=rollout('[1, "100%"]', extra="confirm_after_wave: 1")
        )
        journal = tmp_path / "j.db"
        with anyio.fail_after(30):
            first = await run(plan, journal)
        assert first.exit_code == 3 and "after wave 1" in (first.reason or "")
        assert sum(reimages(emu).values()) == 2  # one canary per pool
        with anyio.fail_after(30):
            final = await resume(journal)
        assert final.exit_code == 0
        assert set(reimages(emu).values()) == {1}


async def test_checkpoint_confirmed_interactively_goes_on(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 6}]
    asked: list[str] = []

    async def yes(question: str) -> bool:
        asked.append(question)
        return True

    async with emulator(pools) as emu:
        plan = write_plan(
            tmp_path, emu.url, rollout=rollout('[1, "100%"]', extra="confirm_after_wave: 1")
        )
        with anyio.fail_after(30):
            result = await run(plan, tmp_path / "j.db", confirm=yes)
        assert result.exit_code == 0 and len(asked) == 1
        assert set(reimages(emu).values()) == {1}


async def test_unsupported_pool_stops_after_one_answer(tmp_path: Path) -> None:
    pools = [
        {"id": "vm", "nodes": 20, "reimage": "refused"},
        {"id": "cs", "nodes": 10},
    ]
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout('[1, "100%"]'))
        with anyio.fail_after(30):
            result = await run(plan, tmp_path / "j.db")
        stats = emu.stats()
    assert result.exit_code == 3 and result.status is RunStatus.FINISHED
    assert "cloudServiceConfiguration" in result.stopped_pools["emu/vm"]
    assert stats["requests"]["by_status"].get("409", 0) == 1  # the canary's answer, no more
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets if t.pool == "vm"} == {TargetState.SKIPPED}
    assert {t.state for t in targets if t.pool == "cs"} == {TargetState.HEALTHY}


async def test_node_that_leaves_the_pool_is_gone_not_failed(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 8}]
    async with emulator(pools) as emu:
        victim = sorted(n["id"] for n in emu.stats()["nodes"])[-1]
        recorder = Recorder()
        recorder.callbacks["wave_started"] = lambda fields: (
            emu.state.remove_node("p", victim) if fields["wave"] == 2 else None
        )
        plan = write_plan(tmp_path, emu.url, rollout=rollout('[1, "100%"]'))
        with anyio.fail_after(30):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
    assert result.exit_code == 0  # gone is not a failure
    targets = {t.node_id: t for t in await journal_targets(tmp_path / "j.db")}
    assert targets[victim].state is TargetState.GONE


async def test_a_rate_limited_account_gets_every_node_once(tmp_path: Path) -> None:
    """The account answers 429 past 100 requests/s: the run still does every node once.
    (How near the limit it runs, and the share of 429s, are figures of
    bench/bench_ratelimit.py: a speed is not an assertion.)"""
    pools = [{"id": "p", "nodes": 400}]
    async with emulator(pools, rate_limit={"requests_per_second": 100, "burst": 10}) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: ["100%"]
            max_unavailable: "100%"
            health: {wait: false}
        """,
            execution="""
            concurrency: 32
            per_account_concurrency: 32
            request_timeout: 2s
            retry: {max_attempts: 8, initial_backoff: 50ms, max_backoff: 1s}
        """,
        )
        with anyio.fail_after(120):
            result = await run(plan, tmp_path / "j.db")
        requests = emu.stats(include_nodes=False)["requests"]
        counts = reimages(emu)
    assert result.exit_code == 0 and set(counts.values()) == {1}
    assert requests["by_status"].get("429", 0) > 0  # the limit was met, and spoke
    events = await journal_events(tmp_path / "j.db")
    assert any(kind == "throttle_changed" for kind, _, _ in events)
