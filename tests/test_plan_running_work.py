"""What the plan will do to running work (issue 16, section 6), checked against the emulator.

`plan` shows per pool and per wave the running nodes and their running tasks (the resolve
step lists nodes with ``runningTasksCount`` in its ``$select``) and what the plan's option
does to them; the oracle is the emulator: its nodes' task counts before, and the tasks it
requeued when the run went.
"""

from __future__ import annotations

import json
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage
from runhelpers import write_plan

ROLLOUT = """
    waves: [1, "50%", "100%"]
    max_unavailable: 3
    health: {wait: true, poll_interval: 100ms, timeout: 20s}
    failure_budget: "100%"
"""


def test_plan_shows_the_running_work_each_wave_stops_and_the_run_does_it(
    tmp_path: Path,
) -> None:
    pools = [
        {"id": "render", "nodes": 10,
         "states": {"idle": 0.5, "running": 0.5}, "running_tasks": 3},
        {"id": "etl", "nodes": 4, "states": {"idle": 1.0}},
    ]  # fmt: skip
    with emulator_process(tmp_path, pools) as emu:
        before = emu.stats()["nodes"]
        tasks = {
            pool: sum(n["running_tasks"] for n in before if n["pool"] == pool)
            for pool in ("render", "etl")
        }
        running = sum(1 for n in before if n["pool"] == "render" and n["state"] == "running")
        assert tasks["render"] == 3 * running > 0 and tasks["etl"] == 0

        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        text = fleet_reimage("plan", str(plan), cwd=tmp_path)
        doc = json.loads(fleet_reimage("plan", str(plan), "--output", "json", cwd=tmp_path).stdout)
        by_pool = {p["pool"]: p for p in doc["pools"]}
        render = by_pool["render"]
        assert render["running_nodes"] == running and render["running_tasks"] == tasks["render"]
        assert render["tasks"] == {"effect": "requeue", "tasks": tasks["render"]}
        assert doc["running_tasks"] == tasks["render"] and by_pool["etl"]["running_tasks"] == 0
        waves = render["waves"]
        assert [w["done_after"] for w in waves] == [1, 5, 10]  # cumulative, as the plan means
        assert [w["nodes"] for w in waves] == render["wave_sizes"] == [1, 4, 5]
        assert sum(w["running_tasks"] for w in waves) == tasks["render"]
        assert waves[0]["running_nodes"] == 0  # idle nodes go first: the canary stops nothing
        assert text.returncode == 0, text.stderr
        assert (
            f"running work: {tasks['render']} tasks on {running} running nodes: requeue "
            f"{tasks['render']} tasks" in text.stdout
        )
        table = text.stdout.split("pool render")[1]
        assert "wave  nodes  done after  running nodes  running tasks  tasks" in table
        last = next(line for line in table.splitlines() if line.strip().startswith("3 "))
        assert last.split()[:5] == ["3", "5", "10", str(waves[2]["running_nodes"]),
                                    str(waves[2]["running_tasks"])]  # fmt: skip

        waiting = write_plan(tmp_path, emu.url, rollout=ROLLOUT, name="waits")
        text_of = waiting.read_text()
        waiting.write_text(
            text_of.replace("action: reimage", "action: reimage\noption: taskcompletion")
        )
        shown = fleet_reimage("plan", str(waiting), cwd=tmp_path).stdout
        assert f"wait for {tasks['render']} tasks" in shown and "requeue" not in shown
        assert "; failure budget 14 (100%);" in text.stdout  # a percent says what it is of
        counted = write_plan(
            tmp_path,
            emu.url,
            rollout=ROLLOUT.replace('budget: "100%"', "budget: 0"),
            name="counted",
        )
        shown = fleet_reimage("plan", str(counted), cwd=tmp_path).stdout
        assert "; failure budget 0;" in shown  # a count is not repeated: "0 (0)"

        ran = fleet_reimage("run", str(plan), "--yes", "--journal", "j.db", cwd=tmp_path)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        # What the plan said the run would do to the running tasks is what it did.
        assert emu.stats()["pools"]["render"]["tasks"]["requeued"] == tasks["render"]
