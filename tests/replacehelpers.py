"""Helpers for ``action: replace`` tests: a fast emulator fleet, a plan, the stats oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from runhelpers import first_run, run, write_plan

from fleet_reimage.emulator.server import RunningEmulator
from fleet_reimage.journal import RunStatus
from fleet_reimage.journal.poolops import PoolOpRecord

# Every pool change and boot scaled down to tens of milliseconds.
FAST = {
    "reimaging": "50ms",
    "rebooting": "50ms",
    "starting": "50ms",
    "waitingforstarttask": "0s",
    "creating": "50ms",
    "allocating": "50ms",
    "leavingpool": "50ms",
    "stopping": "50ms",
}


def replace_plan(
    folder: Path,
    endpoint: str,
    *,
    surge: str = "0",
    max_unavailable: str = "2",
    waves: str = '["100%"]',
    budget: str = '"100%"',
    extra: str = "",
    option: str = "requeue",
    timeout: str = "20s",
) -> Path:
    rollout = f"""
        waves: {waves}
        max_unavailable: {max_unavailable}
        surge: {surge}
        health: {{wait: true, poll_interval: 50ms, timeout: {timeout}}}
        failure_budget: {budget}
        {extra}
    """
    return write_plan(folder, endpoint, action="replace", option=option, rollout=rollout)


def pool_nodes(emu: RunningEmulator, pool: str) -> list[dict[str, Any]]:
    return [n for n in emu.stats()["nodes"] if n["pool"] == pool]


def live_ids(emu: RunningEmulator, pool: str) -> set[str]:
    return {n["id"] for n in pool_nodes(emu, pool) if not n["removed"]}


def removals(emu: RunningEmulator, pool: str, ids: set[str]) -> dict[str, int]:
    """How many times the emulator saw each of ``ids`` asked to leave (exactly-once: 1)."""
    return {n["id"]: n["removals"] for n in pool_nodes(emu, pool) if n["id"] in ids}


async def pool_ops(journal: Path) -> list[PoolOpRecord]:
    return await first_run(journal, lambda store, run_id: store.pool_ops(run_id))


async def replace_all(
    emu: RunningEmulator, plan: Path, journal: Path, pool: str = "p"
) -> dict[str, Any]:
    """Run ``plan`` to its end: it must finish with every old node of ``pool`` removed
    exactly once (the emulator's count). Returns the emulator's stats after it."""
    old = live_ids(emu, pool)
    with anyio.fail_after(60):
        result = await run(plan, journal)
    assert result.status is RunStatus.FINISHED, result.reason
    assert removals(emu, pool, old) == dict.fromkeys(old, 1)
    return emu.stats()
