"""``action: replace`` end to end on the emulator over TCP; the emulator's stats are the
oracle: removals per old node (exactly 1), the fewest ready nodes seen against the limit,
the final target against T, and the new nodes' states."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from replacehelpers import FAST, live_ids, removals, replace_plan
from runhelpers import KEY, KEY_ENV, emulator, journal_targets, run

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
        with anyio.fail_after(60):
            result = await run(plan, tmp_path / "j.db")
        stats = emu.stats()
        pool = stats["pools"]["p"]
        assert result.status is RunStatus.FINISHED, result.reason
        assert removals(emu, "p", old) == dict.fromkeys(old, 1)
        assert pool["min_ready"] == limit
        assert (pool["target_dedicated"], pool["target_low_priority"]) == (6, 0)
        fresh = live_ids(emu, "p")
        assert not fresh & old and len(fresh) == 6
        new_states = {n["state"] for n in stats["nodes"] if n["id"] in fresh}
        assert new_states == {"idle"}
    targets = await journal_targets(tmp_path / "j.db")
    assert {t.state for t in targets} == {TargetState.HEALTHY}
