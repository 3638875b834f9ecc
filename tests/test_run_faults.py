"""A run against a faulty emulator: every eligible node reimaged exactly once."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from runhelpers import KEY, KEY_ENV, emulator, journal_targets, reimages, run, write_plan

from fleet_reimage.journal import RunStatus, TargetState

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


async def test_faults_every_node_exactly_once_and_journal_agrees(tmp_path: Path) -> None:
    faults = {
        "seed": 11,
        "reimage": {
            "throttle": 0.08,
            "retry_after": "20ms",
            "server_busy": 0.04,
            "server_error": 0.04,
            "reset_before": 0.04,
            "reset_after": 0.04,
            "delay_after": 0.03,
            "delay": "1500ms",
        },
    }
    pools = [
        {
            "id": "a",
            "nodes": 60,
            "states": {"idle": 0.7, "running": 0.2, "offline": 0.1},
        },
        {"id": "b", "nodes": 40},
    ]
    async with emulator(pools, faults=faults) as emu:
        plan = write_plan(tmp_path, emu.url)
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        counts = reimages(emu)
        stats = emu.stats()
    assert result.status is RunStatus.FINISHED and result.exit_code == 0, result
    targets = await journal_targets(tmp_path / "j.db")
    selected = {t.node_id for t in targets}
    offline = {n["id"] for n in stats["nodes"] if n["state"] == "offline"}
    assert len(selected) == 94  # 6 offline nodes are not eligible
    assert not selected & offline
    assert all(counts[node] == 1 for node in selected), {
        n: counts[n] for n in selected if counts[n] != 1
    }
    assert all(counts[node] == 0 for node in offline)
    assert {t.state for t in targets} == {TargetState.HEALTHY}
    faults_seen = stats["requests"]["faults"]
    assert faults_seen.get("reset_after", 0) > 0 and faults_seen.get("delay_after", 0) > 0
    assert faults_seen.get("throttle", 0) > 0
