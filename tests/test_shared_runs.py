"""Several runners sharing one run through a PostgreSQL journal, as operators run them."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage
from runhelpers import named_nodes, write_plan

pytestmark = pytest.mark.postgres


ROLLOUT = """
    waves: [5, "100%"]
    max_unavailable: "10%"
    health: {wait: true, poll_interval: 200ms, timeout: 60s}
"""
EXECUTION = """
    concurrency: 16
    per_account_concurrency: 16
    request_timeout: 2s
    retry: {max_attempts: 8, initial_backoff: 20ms, max_backoff: 200ms}
"""


def wait_for_event(path: Path, kind: str, process: subprocess.Popen[str]) -> None:
    """Return once ``process`` has written a ``kind`` event to its --events file."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and any(
            json.loads(line)["event"] == kind
            for line in path.read_text().splitlines()
            if line.endswith("}")  # a line being written is not complete yet
        ):
            return
        assert process.poll() is None, f"the runner ended before {kind}: {process.communicate()}"
        time.sleep(0.02)  # polling the file the event lands in
    raise AssertionError(f"no {kind} event in {path} within 60 s")


def test_three_runners_one_killed_every_node_once_within_limits(
    tmp_path: Path, pg_url: str
) -> None:
    fleet = {f"p{i}": named_nodes(f"p{i}", 80) for i in range(3)}
    pools = [{"id": pool, "nodes": nodes} for pool, nodes in fleet.items()]
    with emulator_process(
        tmp_path, pools, timings={"reimaging": "300ms", "starting": "200ms"}
    ) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT, execution=EXECUTION)
        common = ["--yes", "--journal", pg_url, "--lease", "2s"]
        events = [tmp_path / f"events-{n}.jsonl" for n in range(3)]
        first = start_fleet_reimage(
            "run", str(plan), *common, "--events", str(events[0]), cwd=tmp_path
        )
        wait_for_event(events[0], "run_started", first)  # the run exists: the others join it
        second, third = (
            start_fleet_reimage(
                "run", str(plan), *common, "--join", "--events", str(path), cwd=tmp_path
            )
            for path in events[1:]
        )
        wait_for_event(events[1], "node_accepted", second)  # it holds leased work now
        second.kill()  # mid-run: its leased nodes must be taken over, none twice
        second.communicate(timeout=30)
        _, err1 = first.communicate(timeout=180)
        _, err3 = third.communicate(timeout=180)
        stats = emu.stats()
    assert first.returncode in (0, 3) and third.returncode in (0, 3), err1 + err3
    counts = {n["id"]: n["reimages"] for n in stats["nodes"]}
    expected = dict.fromkeys([node for nodes in fleet.values() for node in nodes], 1)
    assert counts == expected, {n: c for n, c in counts.items() if c != 1}
    for pool, figures in stats["pools"].items():
        assert figures["peak_unavailable"] <= 8, (pool, figures)  # 10% of 80, all runners
    status = fleet_reimage(
        "status", "--latest", "--journal", pg_url, "--output", "json", cwd=tmp_path
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["run"]["status"] == "finished"


def test_second_operator_without_join_is_refused_naming_the_run(
    tmp_path: Path, pg_url: str
) -> None:
    pools = [{"id": "p", "nodes": 40}]
    with emulator_process(tmp_path, pools, timings={"reimaging": "2s", "starting": "1s"}) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT, execution=EXECUTION)
        events = tmp_path / "events.jsonl"
        first = start_fleet_reimage(
            "run", str(plan), "--yes", "--journal", pg_url, "--events", str(events), cwd=tmp_path
        )
        try:
            wait_for_event(events, "run_started", first)
            second = fleet_reimage("run", str(plan), "--yes", "--journal", pg_url, cwd=tmp_path)
            assert second.returncode == 2
            assert "is unfinished" in second.stderr and "--join" in second.stderr
            assert "fleet-reimage resume r" in second.stderr
        finally:
            first.terminate()
            first.communicate(timeout=60)


def test_join_needs_a_shared_journal(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "http://127.0.0.1:9")
    result = fleet_reimage(
        "run", str(plan), "--yes", "--join", "--journal", str(tmp_path / "j.db"), cwd=tmp_path
    )
    assert result.returncode == 2 and "postgresql://" in result.stderr


def test_a_shared_run_stops_at_its_checkpoint_and_resume_goes_on(
    tmp_path: Path, pg_url: str
) -> None:
    pools = [{"id": f"p{i}", "nodes": 10} for i in range(2)]
    with emulator_process(
        tmp_path, pools, timings={"reimaging": "100ms", "starting": "100ms"}
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [1, "100%"]
            max_unavailable: 5
            health: {wait: true, poll_interval: 100ms, timeout: 30s}
            confirm_after_wave: 1
        """,
            execution=EXECUTION,
        )
        first = fleet_reimage("run", str(plan), "--yes", "--journal", pg_url, cwd=tmp_path)
        assert first.returncode == 3, first.stdout + first.stderr
        assert "after wave 1" in first.stdout
        assert sum(emu.reimages().values()) == 2  # one canary per pool, nothing past it
        final = fleet_reimage("resume", "--journal", pg_url, cwd=tmp_path)
        assert final.returncode == 0, final.stdout + final.stderr
        assert set(emu.reimages().values()) == {1}
