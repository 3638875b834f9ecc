"""Gates and soak on the emulator (real TCP): a gate that stops the run after wave 1 and a
resume once it passes, a gate that times out, an after_run gate, a soak a node fails and a
soak that passes. Gates are tiny Python scripts run with ``sys.executable``; tests wait on
events, never on sleeps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from runhelpers import (
    KEY,
    KEY_ENV,
    Recorder,
    emulator,
    journal_kinds,
    journal_targets,
    reimages,
    run_with,
    write_plan,
)
from runhelpers import resume as resume_run

from fleet_reimage import api
from fleet_reimage.journal import RunStatus, TargetState, open_journal

pytestmark = pytest.mark.anyio

# Passes when the file named by its first argument exists; records what it was given.
GATE_SCRIPT = """\
import json, os, sys
go, log = sys.argv[1], sys.argv[2]
nodes = open(os.environ["FLEET_REIMAGE_NODES_FILE"]).read().split()
mode = oct(os.stat(os.environ["FLEET_REIMAGE_NODES_FILE"]).st_mode & 0o777)
with open(log, "a") as out:
    out.write(json.dumps({"argv": sys.argv[3:], "wave": os.environ.get("FLEET_REIMAGE_WAVE"),
                          "pool": os.environ.get("FLEET_REIMAGE_POOL"), "nodes": nodes,
                          "mode": mode, "key": os.environ.get("KEY_ENV_NAME"),
                          "path": os.environ["FLEET_REIMAGE_NODES_FILE"]}) + "\\n")
print("checking the SLO")
if not os.path.exists(go) and sys.argv[3] != "1":
    print("error budget burning: 3 alerts firing")
    sys.exit(4)
""".replace("KEY_ENV_NAME", KEY_ENV)

SLEEPER = "import time\nprint('waiting for prometheus', flush=True)\ntime.sleep(60)\n"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def rollout(extra: str, waves: str = '[2, "100%"]') -> str:
    return f"""
        waves: {waves}
        max_unavailable: "100%"
        health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
        failure_budget: "100%"
        {extra}
    """


def gate_line(tmp_path: Path, script: str, args: list[str], *, timeout: str = "20s",
              name: str = "slo", when: str = "before_wave") -> str:  # fmt: skip
    path = tmp_path / f"{name}.py"
    path.write_text(script, encoding="utf-8")
    command = json.dumps([sys.executable, str(path), *args])
    return f"{{name: {name}, command: {command}, timeout: {timeout}, when: {when}}}"


def gates(*lines: str) -> str:
    return f"gates: [{', '.join(lines)}]"


def idle_pools(*names: str, nodes: int) -> list[dict[str, Any]]:
    return [{"id": name, "nodes": nodes, "states": {"idle": 1.0}} for name in names]


async def recorded_run(plan: Path, journal: Path, seconds: float = 60) -> tuple[Any, Recorder]:
    """Run the plan to its end or stop, with every event it sent kept."""
    recorder = Recorder()
    with anyio.fail_after(seconds):
        result = await run_with(plan, journal, api.RunHooks(observer=recorder))
    return result, recorder


def any_left(paths: list[str]) -> bool:
    return any(Path(path).exists() for path in paths)


async def test_a_gate_failing_after_wave_1_stops_resumable_and_resume_finishes(
    tmp_path: Path,
) -> None:
    go, log = tmp_path / "go", tmp_path / "gate.log"
    line = gate_line(tmp_path, GATE_SCRIPT, [str(go), str(log), "{wave}", "{pool}", "{run}"])
    pools = idle_pools("p", nodes=6)
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout(gates(line)))
        first, recorder = await recorded_run(plan, tmp_path / "j.db", 60)
        touched = {node for node, count in reimages(emu).items() if count}
        records = await journal_targets(tmp_path / "j.db")
        wave_1 = {r.node_id for r in records if r.wave == 0}
        go.write_text("ok")  # the monitoring is green again
        with anyio.fail_after(60):
            second = await resume_run(tmp_path / "j.db")
        after = reimages(emu)
    assert first.exit_code == 3 and first.stop_kind == "gate"
    assert first.status is RunStatus.STOPPED
    assert "slo" in (first.reason or "") and "wave 2" in (first.reason or "")
    assert touched == wave_1 and len(wave_1) == 2  # only wave 1's nodes were reimaged
    assert first.counts["pending"] == 4
    failed = recorder.kinds("gate_failed")
    assert len(failed) == 1 and failed[0]["wave"] == 2 and failed[0]["exit_code"] == 4
    assert failed[0]["output"][-1] == "error budget burning: 3 alerts firing"
    assert [f["wave"] for f in recorder.kinds("gate_passed")] == [1]
    assert second.exit_code == 0 and second.status is RunStatus.FINISHED
    assert all(count == 1 for count in after.values()) and len(after) == 6
    asked = [json.loads(text) for text in log.read_text().splitlines()]
    # before wave 1, before wave 2 (failed), and again before wave 2 on resume
    assert [entry["wave"] for entry in asked] == ["1", "2", "2"]
    assert asked[1]["argv"] == ["2", "p", first.run_id]
    assert sorted(asked[1]["nodes"]) == sorted(r.node_id for r in records if r.wave == 1)
    assert all(entry["mode"] == "0o600" and entry["key"] is None for entry in asked)
    kinds = await journal_kinds(tmp_path / "j.db")
    assert kinds.count("gate_failed") == 1 and kinds.count("gate_passed") == 2
    assert not any_left([entry["path"] for entry in asked])  # each removed after its gate


async def test_a_gate_that_times_out_is_killed_and_stops_the_run(tmp_path: Path) -> None:
    # 3 s: long enough for the script to start and print on a loaded machine
    line = gate_line(tmp_path, SLEEPER, [], timeout="3s", name="prom")
    pools = idle_pools("p", nodes=3)
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout(gates(line)))
        result, recorder = await recorded_run(plan, tmp_path / "j.db", 30)
        touched = sum(reimages(emu).values())
    assert result.exit_code == 3 and result.stop_kind == "gate"
    assert touched == 0 and result.counts["pending"] == 3
    (failed,) = recorder.kinds("gate_failed")
    assert failed["timed_out"] is True and failed["exit_code"] is None
    assert failed["output"] == ["waiting for prometheus"]
    assert "timed out" in (result.reason or "") and "prom" in (result.reason or "")


async def test_an_after_run_gate_failure_stops_and_resume_asks_it_again(tmp_path: Path) -> None:
    go, log = tmp_path / "go", tmp_path / "gate.log"
    line = gate_line(
        tmp_path, GATE_SCRIPT, [str(go), str(log), "after", "{run}"], when="after_run", name="smoke"
    )
    pools = idle_pools("p", nodes=3)
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout(gates(line), waves='["100%"]'))
        with anyio.fail_after(30):
            first = await run_with(plan, tmp_path / "j.db", api.RunHooks())
        go.write_text("ok")
        with anyio.fail_after(30):
            second = await resume_run(tmp_path / "j.db")
        counts = reimages(emu)
    assert first.exit_code == 3 and first.status is RunStatus.STOPPED
    assert first.counts["healthy"] == 3 and "smoke" in (first.reason or "")
    assert second.exit_code == 0 and second.status is RunStatus.FINISHED
    assert sorted(counts.values()) == [1, 1, 1]  # resume asked the gate; it sent nothing
    asked = [json.loads(text) for text in log.read_text().splitlines()]
    assert len(asked) == 2 and all(len(entry["nodes"]) == 3 for entry in asked)
    assert asked[0]["nodes"][0].startswith("emu/p/")


async def test_a_node_that_degrades_during_soak_fails_and_counts(tmp_path: Path) -> None:
    await degrading_soak(tmp_path, str(tmp_path / "j.db"))


async def degrading_soak(tmp_path: Path, journal: str) -> None:
    """A node of wave 1 turns unusable as its soak starts: it fails, counts, and wave 2 runs
    after the soak (``journal``: a SQLite file, or a shared PostgreSQL one)."""
    pools = idle_pools("p", nodes=4)
    async with emulator(pools) as emu:
        plan = api.load_plan(write_plan(tmp_path, emu.url, rollout=rollout("soak: 1s")))
        recorder = Recorder()
        broken: list[str] = []

        def break_one(fields: dict[str, Any]) -> None:
            healthy = [f["node"] for f in recorder.kinds("node_healthy")]
            broken.append(healthy[0])
            emu.state.force_state("p", healthy[0], "unusable")

        recorder.callbacks["soak_started"] = break_one
        hooks = api.RunHooks(observer=recorder, handle_signals=False)
        with anyio.fail_after(60):
            result = await api.run_plan(plan, journal=journal, hooks=hooks)
        counts = reimages(emu)
    store = await open_journal(journal, readonly=True)
    try:
        records = {r.node_id: r for r in await store.targets(result.run_id)}
    finally:
        await store.close()
    assert result.exit_code == 1 and result.counts["failed"] == 1
    assert records[broken[0]].state is TargetState.FAILED
    assert records[broken[0]].reason == "degraded during soak (state unusable)"
    (ended,) = recorder.kinds("soak_ended")
    assert ended["failed"] == 1 and ended["wave"] == 1
    failed = recorder.kinds("node_failed")
    assert [f["node"] for f in failed] == broken
    # the soak came before the next wave, and wave 2 ran: every node reimaged once
    order = [kind for kind, _ in recorder.events if kind in ("soak_ended", "wave_started")]
    assert order == ["wave_started", "soak_ended", "wave_started"]
    assert sorted(counts.values()) == [1, 1, 1, 1]


async def test_a_soak_the_nodes_pass_holds_the_next_wave_then_lets_it_start(
    tmp_path: Path,
) -> None:
    pools = idle_pools("p", nodes=4)
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout("soak: 500ms"))
        recorder = Recorder()
        seen: list[int] = []
        recorder.callbacks["soak_started"] = lambda _: seen.append(sum(reimages(emu).values()))
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
    assert result.exit_code == 0 and result.counts["healthy"] == 4
    (started,) = recorder.kinds("soak_started")
    assert started["wave"] == 1 and started["nodes"] == 2
    (ended,) = recorder.kinds("soak_ended")
    assert ended["failed"] == 0
    assert seen == [2]  # wave 2 had not started when the soak began
    kinds = await journal_kinds(tmp_path / "j.db")
    assert kinds.index("soak_ended") < [i for i, k in enumerate(kinds) if k == "wave_started"][1]


async def test_a_step_gate_runs_once_per_step_for_every_pool(tmp_path: Path) -> None:
    go, log = tmp_path / "go", tmp_path / "gate.log"
    go.write_text("ok")
    path = tmp_path / "ticket.py"
    path.write_text(GATE_SCRIPT, encoding="utf-8")
    command = json.dumps([sys.executable, str(path), str(go), str(log), "{wave}"])
    line = f"{{name: ticket, command: {command}, timeout: 20s, per: step}}"
    pools = idle_pools("p", "q", nodes=2)
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout(gates(line), waves='[1, "100%"]'))
        result, recorder = await recorded_run(plan, tmp_path / "j.db")
        counts = reimages(emu)
    assert result.exit_code == 0 and sorted(counts.values()) == [1, 1, 1, 1]
    asked = [json.loads(text) for text in log.read_text().splitlines()]
    assert [entry["wave"] for entry in asked] == ["1", "2"]
    assert all(entry["pool"] is None for entry in asked)  # no single pool: not set
    for entry in asked:  # one node of each pool in each step
        assert sorted(node.split("/")[1] for node in entry["nodes"]) == ["p", "q"]
    passed = recorder.kinds("gate_passed")
    assert len(passed) == 2 and all("pool" not in fields for fields in passed)


async def test_a_run_stopped_during_a_soak_soaks_that_wave_again_on_resume(
    tmp_path: Path,
) -> None:
    await soak_stopped_and_resumed(tmp_path, str(tmp_path / "j.db"))


async def soak_stopped_and_resumed(tmp_path: Path, journal: str) -> None:
    """A run stopped as its first soak starts; its resume soaks that wave again first."""
    pools = idle_pools("p", nodes=4)
    async with emulator(pools) as emu:
        plan = api.load_plan(write_plan(tmp_path, emu.url, rollout=rollout("soak: 300ms")))
        executors: list[Any] = []
        first_events = Recorder()
        first_events.callbacks["soak_started"] = lambda _: executors[0].request_stop(
            "deadline", "stopped by the test during the soak"
        )
        hooks = api.RunHooks(
            observer=first_events, on_executor=executors.append, handle_signals=False
        )
        with anyio.fail_after(60):
            first = await api.run_plan(plan, journal=journal, hooks=hooks)
        sent_first = sum(reimages(emu).values())
        again = Recorder()
        with anyio.fail_after(60):
            second = await api.resume_run(
                journal=journal, hooks=api.RunHooks(observer=again, handle_signals=False)
            )
        sent = reimages(emu)
    assert first.exit_code == 3 and first.counts["pending"] == 2 and sent_first == 2
    assert first_events.kinds("soak_ended") == []  # stopped before its end
    assert second.exit_code == 0 and sorted(sent.values()) == [1, 1, 1, 1]
    order = [
        (kind, f.get("wave")) for kind, f in again.events if kind.startswith(("soak", "wave_s"))
    ]
    assert order[:3] == [("soak_started", 1), ("soak_ended", 1), ("wave_started", 2)]
