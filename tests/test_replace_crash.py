"""``action: replace`` killed with SIGKILL in each phase, then resumed: every old node is
removed exactly once, ready capacity never drops below the limit, the pool ends at T.

The runner is the real command line in a subprocess against an emulator in its own process
(it outlives the runner); each kill waits for the event that says the phase was reached."""

from __future__ import annotations

from pathlib import Path

import pytest
from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage, wait_for_events
from replacehelpers import FAST, replace_plan
from runhelpers import named_nodes

NODES = named_nodes("p", 6)


@pytest.mark.parametrize(
    ("surge", "phase", "nth"),
    [
        ("2", "pool_resized", 1),  # surge: grown to T + s, new nodes booting
        ("2", "replace_judged", 1),  # surge: new nodes judged, old ones about to leave
        ("2", "nodes_removed", 1),  # surge: old nodes leaving
        ("0", "nodes_removed", 1),  # no surge: below T, before the resize back
        ("0", "pool_resized", 2),  # no surge: second step's resize back, nodes booting
    ],
)
def test_sigkill_in_each_phase_then_resume(
    tmp_path: Path, surge: str, phase: str, nth: int
) -> None:
    pools = [{"id": "p", "nodes": NODES, "running_tasks": 0}]
    timings = {**FAST, "creating": "300ms", "leavingpool": "300ms"}
    with emulator_process(tmp_path, pools, timings=timings) as emu:
        plan = replace_plan(tmp_path, emu.url, surge=surge, max_unavailable="2")
        journal = tmp_path / "j.db"
        events = tmp_path / "events.jsonl"
        runner = start_fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(journal), "--events", str(events),
            cwd=tmp_path,
        )  # fmt: skip
        wait_for_events(runner, events, phase, nth)
        runner.kill()
        runner.communicate(timeout=30)
        assert runner.returncode != 0  # it was killed, not finished
        final = fleet_reimage("resume", "--journal", str(journal), cwd=tmp_path, timeout=120)
        assert final.returncode == 0, final.stdout + final.stderr
        stats = emu.stats()
    pool = stats["pools"]["p"]
    removals = {n["id"]: n["removals"] for n in stats["nodes"] if n["id"] in NODES}
    assert removals == dict.fromkeys(NODES, 1)
    assert pool["min_ready"] >= (6 if surge != "0" else 4)
    assert (pool["target_dedicated"], pool["current_dedicated"]) == (6, 6)
    live = [n for n in stats["nodes"] if not n["removed"]]
    assert len(live) == 6 and all(n["added"] and n["state"] == "idle" for n in live)
