"""The commands as a user runs them: subprocesses, exit codes, output, signals, crashes."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage, wait_for_events
from runhelpers import KEY, named_nodes, write_plan

SLOW = {"reimaging": "400ms", "starting": "200ms"}
ROLLOUT = """
    waves: [2, "100%"]
    max_unavailable: 6
    pause_between_waves: 100ms
    health: {wait: true, poll_interval: 100ms, timeout: 30s}
"""


def test_validate_reports_every_problem_with_its_line_and_exits_2(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text(
        "version: 1\nname: bad\naccounts:\n  - name: x\n"
        "    endpoint: http://batch.example.com\n"
        "    auth: {type: shared-key, account: x, key_env: K}\n"
        "    pools: [{match: '*'}]\nrollout:\n  pause_between_waves: soon\n"
        "  max_unavailabel: 3\n",
        encoding="utf-8",
    )
    result = fleet_reimage("validate", str(plan), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{plan}:5:" in result.stderr  # plain http to a non-loopback host
    assert f"{plan}:9:" in result.stderr and "30s" in result.stderr  # the bad duration
    assert f"{plan}:10:" in result.stderr and "max_unavailable" in result.stderr  # did you mean
    good = fleet_reimage("validate", str(Path("plans/demo.yaml").resolve()), cwd=tmp_path)
    assert good.returncode == 0 and "valid" in good.stdout


def test_plan_is_read_only_and_json_is_machine_readable(tmp_path: Path) -> None:
    with emulator_process(
        tmp_path,
        [
            {
                "id": "p",
                "nodes": 30,
                "states": {"idle": 0.5, "running": 0.4, "offline": 0.1},
            }
        ],
    ) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        text = fleet_reimage("plan", str(plan), cwd=tmp_path)
        as_json = fleet_reimage("plan", str(plan), "--output", "json", cwd=tmp_path)
        stats = emu.stats()
    assert text.returncode == 0, text.stderr
    assert "27 of 30 nodes selected" in text.stdout and "3 state not eligible" in text.stdout
    schedule = json.loads(as_json.stdout)
    pool = schedule["pools"][0]
    assert pool["selected"] == 27 and pool["wave_sizes"] == [2, 25]
    assert pool["wave_targets"] == [2, 27]
    assert [t["state"] for t in pool["targets"]][:15] == ["idle"] * 15  # idle first
    assert stats["requests"]["mutating"] == 0  # plan never sends a reimage


def test_run_needs_yes_without_a_terminal(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 3}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        result = fleet_reimage("run", str(plan), "--journal", str(tmp_path / "j.db"), cwd=tmp_path)
        assert emu.stats()["requests"]["mutating"] == 0
    assert result.returncode == 2 and "--yes" in result.stderr


def test_sigint_stops_gracefully_prints_resume_and_resume_finishes(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 30}], timings=SLOW) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        journal, events = tmp_path / "j.db", tmp_path / "events.jsonl"
        runner = start_fleet_reimage(
            "run",
            str(plan),
            "--yes",
            "--journal",
            str(journal),
            "--events",
            str(events),
            cwd=tmp_path,
        )
        wait_for_events(runner, events, "node_accepted", 1, timeout=30)  # the canary wave
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 130, err
        assert "to continue: fleet-reimage resume " in out and str(journal) in out
        run_id = out.split("to continue: fleet-reimage resume ")[1].split()[0]
        resumed = fleet_reimage("resume", run_id, "--journal", str(journal), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        counts = emu.reimages()
    assert set(counts.values()) == {1}
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert "wave_started" in kinds and "run_stopping" in kinds


def test_sigkill_at_random_moments_every_node_exactly_once(tmp_path: Path) -> None:
    """The crash test, CI-sized: kill the runner (and the resumer) with SIGKILL, resume."""
    rng = random.Random(20261125)
    with emulator_process(
        tmp_path,
        [
            {"id": "a", "nodes": named_nodes("a", 150)},
            {"id": "b", "nodes": named_nodes("b", 100)},
        ],
        timings={"reimaging": "100ms", "starting": "50ms"},
        faults={"seed": 3, "reimage": {"latency": "5ms", "jitter": "5ms"}},
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [5, "100%"]
            max_unavailable: "20%"
            health: {wait: true, poll_interval: 100ms, timeout: 30s}
        """,
            execution="""
            concurrency: 32
            per_account_concurrency: 32
            request_timeout: 2s
            retry: {max_attempts: 8, initial_backoff: 20ms, max_backoff: 200ms}
        """,
        )
        journal = tmp_path / "j.db"
        command = ["run", str(plan), "--yes", "--journal", str(journal)]
        for round_no in range(4):
            events = tmp_path / f"events-{round_no}.jsonl"
            runner = start_fleet_reimage(*command, "--events", str(events), cwd=tmp_path)
            # Killed at a random point of its progress (none yet: as soon as it started).
            accepted = rng.randint(0, 40)
            if accepted:
                wait_for_events(runner, events, "node_accepted", accepted)
            else:
                wait_for_events(runner, events, "run_started", 1)
            runner.kill()
            runner.communicate(timeout=30)
            command = ["resume", "--journal", str(journal)]
        final = fleet_reimage(*command, cwd=tmp_path, timeout=180)
        assert final.returncode == 0, final.stdout + final.stderr
        counts = emu.reimages()
    expected = dict.fromkeys(named_nodes("a", 150) + named_nodes("b", 100), 1)
    assert counts == expected, {n: c for n, c in counts.items() if c != 1}


def test_no_secret_in_any_artefact(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 10}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        journal = tmp_path / "j.db"
        result = fleet_reimage(
            "run",
            str(plan),
            "--yes",
            "--journal",
            str(journal),
            "--events",
            str(tmp_path / "ev.jsonl"),
            "--log-level",
            "debug",
            "--log-file",
            str(tmp_path / "log.jsonl"),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    raw_key = KEY.encode()
    for artefact in tmp_path.iterdir():
        if artefact.name == "fleet.yaml":  # the emulator's own test key lives there
            continue
        assert raw_key not in artefact.read_bytes(), artefact
    assert KEY not in result.stdout + result.stderr
    rows = sqlite3.connect(journal).execute("SELECT plan_text, options FROM runs").fetchall()
    assert all(KEY not in str(row) for row in rows)


def test_damaged_journal_is_a_clear_error(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    journal.write_bytes(b"this is not a database" * 100)
    result = fleet_reimage("resume", "--journal", str(journal), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(journal) in result.stderr
    assert journal.read_bytes() == b"this is not a database" * 100  # untouched
