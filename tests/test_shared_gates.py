"""Gates and soak on shared runs (PostgreSQL journal), against the emulator over real TCP.

Two runners of one run: a gate that fails before wave 2 stops both (exit 3) with only wave
1's nodes reimaged, each gate ran once across the runners (counted in the file the gate
script appends to), and a resume once the gate passes finishes the run. A soak on a shared
run: a node that degrades during it fails and counts. The runners are synchronised on the
journal's ``runners`` rows and on files, never on sleeps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from runhelpers import KEY, KEY_ENV, Recorder, emulator, reimages, write_plan
from test_run_gates import degrading_soak, soak_stopped_and_resumed

from fleet_reimage import api
from fleet_reimage.journal import RunStatus, open_journal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

# Before wave 1 it waits for the file ``joined`` (the test writes it once both runners are
# in), so that both are there when the gates of wave 2 are asked; it passes before wave 2
# only once the file ``go`` exists. Each ask is one line in ``log``.
GATE_SCRIPT = """\
import json, os, sys, time
go, joined, log, wave = sys.argv[1:5]
deadline = time.monotonic() + 60
while wave == "1" and not os.path.exists(joined) and time.monotonic() < deadline:
    time.sleep(0.02)
nodes = open(os.environ["FLEET_REIMAGE_NODES_FILE"]).read().split()
with open(log, "a") as out:
    out.write(json.dumps({"wave": wave, "pool": os.environ.get("FLEET_REIMAGE_POOL"),
                          "nodes": nodes}) + "\\n")
if wave != "1" and not os.path.exists(go):
    print("error budget burning: 3 alerts firing")
    sys.exit(4)
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def rollout(extra: str) -> str:
    return f"""
        waves: [2, "100%"]
        max_unavailable: "100%"
        health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
        failure_budget: "100%"
        {extra}
    """


def gate_plan(tmp_path: Path, url: str, args: list[str]) -> Path:
    script = tmp_path / "slo.py"
    script.write_text(GATE_SCRIPT, encoding="utf-8")
    command = json.dumps([sys.executable, str(script), *args])
    gates = f"gates: [{{name: slo, command: {command}, timeout: 60s}}]"
    return write_plan(tmp_path, url, rollout=rollout(gates))


async def live_runners(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        try:
            cursor = await conn.execute(
                "SELECT count(*) FROM fleet_reimage.runners"
                " WHERE lease_until >= extract(epoch FROM clock_timestamp())"
            )
        except psycopg.errors.UndefinedTable:  # the journal is not created yet
            return 0
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def until_runners(url: str, count: int) -> None:
    """Return once ``count`` runners are registered in the journal (polling its rows)."""
    while True:
        if await live_runners(url) >= count:
            return
        await anyio.sleep(0.02)  # another process's rows: nothing here to wait on


async def run_events(url: str) -> list[tuple[str, dict[str, Any]]]:
    store = await open_journal(url, readonly=True)
    try:
        run = (await store.runs())[0]
        return [(e.kind, dict(e.data)) for e in await store.events(run.run_id)]
    finally:
        await store.close()


async def test_two_runners_a_failing_gate_stops_both_and_each_gate_ran_once(
    tmp_path: Path, pg_url: str
) -> None:
    go, joined, log = tmp_path / "go", tmp_path / "joined", tmp_path / "gate.log"
    pools = [{"id": "p", "nodes": 6, "states": {"idle": 1.0}}]
    results: dict[str, Any] = {}
    async with emulator(pools) as emu:
        plan = api.load_plan(gate_plan(tmp_path, emu.url, [str(go), str(joined), str(log),
                                                            "{wave}"]))  # fmt: skip

        async def runner(name: str, join: bool) -> None:
            hooks = api.RunHooks(observer=Recorder(), handle_signals=False)
            results[name] = await api.run_plan(plan, journal=pg_url, hooks=hooks, join=join)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as group:
                group.start_soon(runner, "first", False)
                await until_runners(pg_url, 1)  # the run exists and has its first runner
                group.start_soon(runner, "second", True)
                await until_runners(pg_url, 2)
                joined.write_text("both runners are in")
        touched = {node for node, count in reimages(emu).items() if count}
        store = await open_journal(pg_url, readonly=True)
        try:
            run = (await store.runs())[0]
            wave_1 = {t.node_id for t in await store.targets(run.run_id) if t.wave == 0}
        finally:
            await store.close()
        first_asks = [json.loads(line) for line in log.read_text().splitlines()]
        go.write_text("ok")  # the monitoring is green again
        with anyio.fail_after(60):
            final = await api.resume_run(journal=pg_url, hooks=api.RunHooks(handle_signals=False))
        after = reimages(emu)
    for result in results.values():
        assert result.exit_code == 3 and result.stop_kind == "gate", result.reason
        assert "slo" in (result.reason or "") and "wave 2" in (result.reason or "")
    assert touched == wave_1 and len(wave_1) == 2  # only wave 1's nodes, by either runner
    assert [ask["wave"] for ask in first_asks] == ["1", "2"]  # once each, across runners
    assert all(ask["pool"] == "p" for ask in first_asks)
    assert final.exit_code == 0 and final.status is RunStatus.FINISHED
    assert sorted(after.values()) == [1] * 6
    asked = [json.loads(line)["wave"] for line in log.read_text().splitlines()]
    assert asked == ["1", "2", "2"]  # resume asked the failed gate again, and only it
    events = await run_events(pg_url)
    gate_events = [(kind, data["wave"]) for kind, data in events if kind.startswith("gate_")]
    assert gate_events == [("gate_passed", 1), ("gate_failed", 2), ("gate_passed", 2)]


async def test_a_node_that_degrades_during_a_shared_soak_fails_and_counts(
    tmp_path: Path, pg_url: str
) -> None:
    await degrading_soak(tmp_path, pg_url)


async def test_a_shared_run_stopped_during_a_soak_soaks_that_wave_again_on_resume(
    tmp_path: Path, pg_url: str
) -> None:
    await soak_stopped_and_resumed(tmp_path, pg_url)
