"""What operators see of ``action: replace``: the plan's steps (``plan``, ``run --dry-run``)
and, after a run, T, the target reached, old nodes removed, new nodes ready or failed."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from clihelpers import fleet_reimage
from replacehelpers import FAST, replace_plan
from runhelpers import KEY, KEY_ENV, emulator, run

from fleet_reimage import api
from fleet_reimage.views.dryrun import assumption, simulate
from fleet_reimage.views.schedule import render_schedule, resolution_json

pytestmark = pytest.mark.anyio

POOL = [{"id": "p", "nodes": 6, "running_tasks": 0}]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.mark.parametrize(
    ("surge", "step", "lowest"),
    [
        ("0", "steps 1-3 (wave 1): remove 2 old, then resize to 6; lowest 4", 4),
        ("2", "steps 1-3 (wave 1): resize to 8, then remove 2 old; lowest 6", 6),
    ],
)
async def test_plan_shows_t_the_surge_each_step_and_the_lowest_capacity(
    tmp_path: Path, surge: str, step: str, lowest: int
) -> None:
    async with emulator(POOL, timings=FAST) as emu:
        plan = api.load_plan(replace_plan(tmp_path, emu.url, surge=surge, max_unavailable="2"))
        resolution = await api.resolve_plan(plan)
    text = render_schedule(resolution)
    assert "replace: T = 6" in text and "3 steps" in text, text
    assert f"lowest ready capacity {lowest} (limit 4)" in text and step in text, text
    shown = resolution_json(resolution)["pools"][0]["replace"]
    assert shown["target"] == 6 and shown["lowest_capacity"] == lowest
    assert [s["nodes"] for s in shown["steps"]] == [2, 2, 2]


async def test_status_and_report_show_old_removed_new_ready_and_targets(tmp_path: Path) -> None:
    async with emulator(POOL, timings=FAST) as emu:
        plan = replace_plan(tmp_path, emu.url, surge="2", max_unavailable="1")
        with anyio.fail_after(60):
            await run(plan, tmp_path / "j.db")
    journal = str(tmp_path / "j.db")
    status = fleet_reimage("status", "--latest", "--journal", journal, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert (
        "emu/p: T 6 dedicated + 0 low-priority; target final 6 dedicated + 0 low-priority; "
        "old removed 6; new ready 6, failed 0"
    ) in status.stdout, status.stdout
    # The timeline: each pool's start and end in words, not one line per step's call.
    assert "emu/p: replace started: T 6 dedicated, surge 2" in status.stdout
    assert (
        "emu/p: pool replaced: 6 old nodes removed, 6 new nodes ready, 0 failed; "
        "target 6 dedicated (T 6 dedicated)"
    ) in status.stdout
    assert "pool resized" not in status.stdout and "replace judged" not in status.stdout
    report = fleet_reimage(
        "report", "--latest", "--journal", journal, "--format", "json", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    [pool] = json.loads(report.stdout)["replace"]
    assert pool["target"] == pool["current_target"] == [6, 0] and pool["finished"]
    assert (pool["old_removed"], pool["new_ready"], pool["new_failed"]) == (6, 6, 0)
    markdown = fleet_reimage(
        "report", "--latest", "--journal", journal, "--format", "markdown", cwd=tmp_path
    )
    assert "## Replace per pool\n\n- emu/p: T 6 dedicated + 0 low-priority" in markdown.stdout


async def test_the_dry_run_timeline_takes_a_step_of_surge_nodes_at_a_time(tmp_path: Path) -> None:
    async with emulator(POOL, timings=FAST) as emu:
        plan = api.load_plan(replace_plan(tmp_path, emu.url, surge="3", max_unavailable="1"))
        resolution = await api.resolve_plan(plan)
    [pool] = simulate(resolution, assumption(plan, 10.0))
    assert pool.slots == 3 and pool.duration == 20.0  # 6 nodes, 3 a step, 10 s a step
