"""One rolling plan on a SQLite journal and on a PostgreSQL journal, against identical emulator
fleets: the same wave timeline (every wave with its nodes, start and completion, the pause
between them), the same ``wave_completed`` events, and the same ``peak_unavailable`` (the
emulator's own count, an oracle independent of the client)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from runhelpers import KEY, KEY_ENV, Recorder, emulator, reimages, write_plan

from fleet_reimage import api
from fleet_reimage.engine.executor import RunSettings
from fleet_reimage.journal import open_journal
from fleet_reimage.views.timeline import timeline

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
PAUSE = 0.3
# Two pools; in the second, 2 of 14 nodes are down for reasons of their own (the baseline).
POOLS = [
    {"id": "p", "nodes": 14},
    {"id": "q", "nodes": 14, "states": {"idle": 0.86, "offline": 0.14}},
]
ROLLOUT = f"""
    waves: [1, 3, "100%"]
    max_unavailable: 4
    pause_between_waves: {int(PAUSE * 1000)}ms
    health: {{wait: true, poll_interval: 100ms, timeout: 30s}}
    failure_budget: "100%"
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


async def roll(folder: Path, journal: str, rollout: str = ROLLOUT) -> dict[str, Any]:
    """Run the plan on a fresh emulator fleet (the same seed each time) with ``journal``."""
    await anyio.Path(folder).mkdir()
    async with emulator(POOLS, timings={"reimaging": "150ms", "starting": "100ms"}) as emu:
        plan = api.load_plan(write_plan(folder, emu.url, rollout=rollout))
        recorder = Recorder()
        hooks = api.RunHooks(observer=recorder, handle_signals=False)
        with anyio.fail_after(90):
            result = await api.run_plan(plan, journal=journal, settings=RunSettings(), hooks=hooks)
        stats = emu.stats()
        counts = reimages(emu)
    store = await open_journal(journal, readonly=True)
    try:
        events = await store.events(result.run_id)
        targets = await store.targets(result.run_id)
    finally:
        await store.close()
    return {
        "exit": result.exit_code,
        "timeline": timeline(events, targets).waves,
        "completed": sorted((f["pool"], f["wave"]) for f in recorder.kinds("wave_completed")),
        "gates": sorted((f["pool"], f["wave"]) for f in recorder.kinds("gate_passed")),
        "soaks": sorted(
            (f["pool"], f["wave"], f["nodes"], f["failed"]) for f in recorder.kinds("soak_ended")
        ),
        "journaled": sorted(
            (e.kind, e.pool or "", int(str(e.data.get("wave", 0))))
            for e in events
            if e.kind.startswith(("gate_", "soak_"))
        ),
        "peaks": {pool: figures["peak_unavailable"] for pool, figures in stats["pools"].items()},
        "reimages": counts,
        "selected": {t.node_id for t in targets},
    }


async def test_sqlite_and_postgresql_runs_roll_alike(tmp_path: Path, pg_url: str) -> None:
    alone = await roll(tmp_path / "sqlite", str(tmp_path / "sqlite" / "j.db"))
    shared = await roll(tmp_path / "postgresql", pg_url)
    for run in (alone, shared):
        assert run["exit"] == 0
        done = {node for node, count in run["reimages"].items() if count}
        assert done == run["selected"] and set(run["reimages"].values()) <= {0, 1}
        spans = run["timeline"]
        assert all(span.completed_at is not None for span in spans)  # a timeline with ends
        for earlier, later in itertools.pairwise(spans):
            if earlier.pool == later.pool:  # the next wave waits for the pause, in both
                # (the margin: event times go from a monotonic clock to the wall clock)
                assert later.pause_before is not None and later.pause_before >= 0.9 * PAUSE
    shape = [
        [(w.pool, w.wave, w.of, w.nodes, w.held) for w in r["timeline"]] for r in (alone, shared)
    ]
    assert shape[0] == shape[1]
    assert [(w[0], w[1], w[3]) for w in shape[0]] == [
        ("p", 1, 1), ("p", 2, 2), ("p", 3, 11), ("q", 1, 1), ("q", 2, 2), ("q", 3, 9),
    ]  # fmt: skip
    assert alone["completed"] == shared["completed"] == [(p, w) for p in "pq" for w in (1, 2, 3)]
    # The emulator counts the nodes our requests took down: 4 at once in p, the limit; in q
    # 2 nodes were down already, so at most 2 of ours at once.
    assert alone["peaks"] == shared["peaks"] == {"p": 4, "q": 2}


async def test_gates_and_soak_roll_alike_on_sqlite_and_postgresql(
    tmp_path: Path, pg_url: str
) -> None:
    command = json.dumps(
        [sys.executable, "-c", "import os; print(os.environ['FLEET_REIMAGE_WAVE'])"]
    )
    rollout = (
        ROLLOUT
        + f"""
    soak: 200ms
    gates: [{{name: ok, command: {command}, timeout: 30s}}]
"""
    )
    alone = await roll(tmp_path / "sqlite", str(tmp_path / "sqlite" / "j.db"), rollout)
    shared = await roll(tmp_path / "postgresql", pg_url, rollout)
    for run in (alone, shared):
        assert run["exit"] == 0
        assert {node for node, n in run["reimages"].items() if n} == run["selected"]
    shape = [[(w.pool, w.wave, w.of, w.nodes) for w in r["timeline"]] for r in (alone, shared)]
    assert shape[0] == shape[1]
    every_wave = [(p, w) for p in "pq" for w in (1, 2, 3)]
    assert alone["completed"] == shared["completed"] == every_wave
    assert alone["gates"] == shared["gates"] == every_wave  # each wave's gate, once
    # every wave but the last soaked, with its healthy nodes watched
    assert alone["soaks"] == shared["soaks"] == [
        ("p", 1, 1, 0), ("p", 2, 2, 0), ("q", 1, 1, 0), ("q", 2, 2, 0),
    ]  # fmt: skip
    assert alone["journaled"] == shared["journaled"]
    assert alone["peaks"] == shared["peaks"]
