"""Failures the run caused (issue 16 §1), end to end on the emulator: a node that came back
broken holds its room in max_unavailable while it is down (or frees it, if the plan says so),
a blocked pool waits aloud and then stops resumable with its nodes pending, and
``resume --retry-skipped`` tries skipped nodes again.

The emulator is the oracle: ``min_ready`` is the fewest nodes of the pool that could take a
task at any instant, so ``nodes - min_ready`` is the most that were ever down at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
    run_with,
    write_plan,
)

from fleet_reimage import api
from fleet_reimage.emulator.server import RunningEmulator
from fleet_reimage.engine.executor import RunResult
from fleet_reimage.journal import RunStatus, open_journal
from fleet_reimage.units import parse_amount

pytestmark = pytest.mark.anyio

BROKEN = {"starttaskfailed": 1.0}  # every node comes back from its reimage broken
NODES = 6


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def rollout(extra: str = "") -> str:
    return f"""
        waves: ["100%"]
        max_unavailable: 2
        health: {{wait: true, poll_interval: 100ms, timeout: 1500ms}}
        failure_budget: "100%"
        {extra}
    """


def most_down(emu: RunningEmulator, pool: str = "p") -> int:
    stats = emu.stats()["pools"][pool]
    return int(stats["nodes"] - stats["min_ready"])


def states(targets: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.state.value] = counts.get(target.state.value, 0) + 1
    return counts


async def journal_events(path: Path) -> list[tuple[str, dict[str, Any]]]:
    store = await open_journal(path, readonly=True)
    try:
        run_id = (await store.runs())[0].run_id
        return [(e.kind, dict(e.data)) for e in await store.events(run_id)]
    finally:
        await store.close()


async def test_broken_nodes_hold_their_room_then_the_blocked_pool_stops_resumable(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "j.db"
    async with emulator([{"id": "p", "nodes": NODES}], outcomes=BROKEN) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout())
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, journal, api.RunHooks(observer=recorder))
        assert most_down(emu) == 2  # never more than max_unavailable, not even for a poll
        assert sorted(reimages(emu).values()) == [0] * (NODES - 2) + [1, 1]
        targets = await journal_targets(journal)
        assert states(targets) == {"failed": 2, "pending": NODES - 2}  # pending, not skipped
        assert (result.status, result.exit_code) == (RunStatus.STOPPED, 3)
        reason = result.stopped_pools["emu/p"]
        assert reason == (
            "blocked for 1.5s: 2 nodes of ours that failed after the action are still down: "
            "max_unavailable is 2; 4 nodes not started stay pending: resume when the pool has "
            "room again (or with a larger --max-unavailable)"
        )
        blocked = recorder.kinds("pool_blocked")
        assert [b["reason"] for b in blocked] == [
            "2 nodes of ours that failed after the action are still down: max_unavailable is 2"
        ]
        assert recorder.kinds("pool_stopped")[0]["resumable"] is True
        kinds = [kind for kind, _ in await journal_events(journal)]
        assert kinds.index("pool_blocked") < kinds.index("pool_stopped")

        # A larger limit on resume: the four pending nodes go, and the pool finishes.
        with anyio.fail_after(60):
            final = await resume(journal, max_unavailable=parse_amount(NODES))
        assert isinstance(final, RunResult) and final.status is RunStatus.FINISHED
        assert set(reimages(emu).values()) == {1}
        assert most_down(emu) == NODES  # every node broken at the end: all of them down
    assert states(await journal_targets(journal)) == {"failed": NODES}


async def test_the_room_of_a_broken_node_frees_when_it_is_back(tmp_path: Path) -> None:
    """Someone fixes the broken nodes while the pool waits: it moves on, never past 2."""
    async with emulator([{"id": "p", "nodes": NODES}], outcomes=BROKEN) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout())
        recorder = Recorder()

        def fix_them(_: dict[str, Any]) -> None:
            for node in emu.stats()["nodes"]:
                if node["state"] == "starttaskfailed":
                    emu.state.force_state("p", node["id"], "idle")

        recorder.callbacks["pool_blocked"] = fix_them
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert most_down(emu) <= 2
        assert set(reimages(emu).values()) == {1}
    assert result.status is RunStatus.FINISHED and result.exit_code == 1  # all failed
    assert len(recorder.kinds("pool_unblocked")) == len(recorder.kinds("pool_blocked")) >= 2


async def test_the_plan_may_free_the_room_of_broken_nodes(tmp_path: Path) -> None:
    async with emulator([{"id": "p", "nodes": NODES}], outcomes=BROKEN) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout("failed_holds_availability: false"))
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert set(reimages(emu).values()) == {1}
        assert most_down(emu) == NODES  # the written-off capacity: the operator's choice
    assert result.status is RunStatus.FINISHED and not recorder.kinds("pool_blocked")


async def test_resume_retry_skipped_tries_the_skipped_nodes_again(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    pools = [{"id": "p", "nodes": 4, "reimage": "refused"}]
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url)
        with anyio.fail_after(30):
            first = await run_with(plan, journal, api.RunHooks())
        assert first.counts["skipped"] == 4  # the pool stopped at its first answer
        pool = emu.state.pool("p")  # the service now accepts reimage on the pool
        pool.spec = dataclasses.replace(pool.spec, reimage="accepted")
        with anyio.fail_after(30):
            plain = await resume(journal)
        assert set(reimages(emu).values()) == {0}  # a plain resume leaves skipped nodes be
        with anyio.fail_after(30):
            again = await resume(journal, retry_skipped=True)
        assert isinstance(again, RunResult) and again.status is RunStatus.FINISHED
        counts = reimages(emu)
    assert not isinstance(plain, RunResult)  # the run was finished: nothing to do
    assert set(counts.values()) == {1}
    assert states(await journal_targets(journal)) == {"healthy": 4}
    resumed = [data for kind, data in await journal_events(journal) if kind == "run_resumed"]
    assert resumed[-1]["retried_skipped"] == 4
