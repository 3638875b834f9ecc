"""``action: replace`` with several runners on a PostgreSQL journal: they take turns per
pool (one runner's resizes and removals at a time), and a runner killed mid-pool is taken
over from the journal: still every old node removed once, never below the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage, wait_for_events
from replacehelpers import FAST, replace_plan
from runhelpers import named_nodes

pytestmark = pytest.mark.postgres

FLEET = {pool: named_nodes(pool, 6) for pool in ("p", "q")}


def _check(stats: dict[str, object]) -> None:
    nodes = stats["nodes"]
    assert isinstance(nodes, list)
    removals = {n["id"]: n["removals"] for n in nodes if not n["added"]}
    assert removals == dict.fromkeys([n for ids in FLEET.values() for n in ids], 1)
    pools = stats["pools"]
    assert isinstance(pools, dict)
    for pool in FLEET:
        figures = pools[pool]
        assert figures["min_ready"] >= 4, (pool, figures)  # T 6, max_unavailable 2
        assert (figures["target_dedicated"], figures["current_dedicated"]) == (6, 6)


@pytest.mark.parametrize("kill_first", [True, False])
def test_two_runners_take_turns_per_pool(tmp_path: Path, pg_url: str, kill_first: bool) -> None:
    pools = [{"id": pool, "nodes": ids, "running_tasks": 0} for pool, ids in FLEET.items()]
    timings = {**FAST, "creating": "200ms", "leavingpool": "200ms"}
    with emulator_process(tmp_path, pools, timings=timings) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="0", max_unavailable="2")
        common = ["--yes", "--journal", pg_url]
        events = [tmp_path / f"events-{n}.jsonl" for n in range(2)]
        first = start_fleet_reimage(
            "run", str(plan), *common, "--events", str(events[0]), cwd=tmp_path
        )
        wait_for_events(first, events[0], "nodes_removed", 1)
        second = start_fleet_reimage(
            "run", str(plan), *common, "--join", "--events", str(events[1]), cwd=tmp_path
        )
        wait_for_events(second, events[1], "run_started", 1)
        if kill_first:
            first.kill()  # mid-pool: its turns pass to the second runner
        _, err1 = first.communicate(timeout=120)
        _, err2 = second.communicate(timeout=120)
        stats = emu.stats()
    assert second.returncode == 0, err2
    assert first.returncode == (-9 if kill_first else 0), err1
    _check(stats)
    answered = stats["requests"]["by_status"]
    assert "409" not in answered, answered  # never two runners' changes on one pool
    status = fleet_reimage("status", "--latest", "--journal", pg_url, cwd=tmp_path)
    assert status.returncode == 0 and "finished" in status.stdout, status.stdout
