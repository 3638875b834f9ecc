"""status and report as a user runs them: subprocesses against the emulator, exit codes, output."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from clihelpers import emulator_process, fleet_reimage, start_fleet_reimage
from runhelpers import write_plan

APPLIED = ("accepted", "reconciled_applied")


def test_status_and_report_agree_with_what_the_emulator_saw(tmp_path: Path) -> None:
    pools = [
        {"id": "render", "nodes": 30},
        {"id": "vm", "nodes": 3, "reimage": "refused"},  # reimage refused: the pool stops
    ]
    with emulator_process(
        tmp_path,
        pools,
        outcomes={"starttaskfailed": 0.2},
        faults={"seed": 5, "reimage": {"throttle": 0.3, "retry_after": "10ms"}},
    ) as emu:
        plan = write_plan(tmp_path, emu.url, name="patch-night")
        journal = tmp_path / "j.db"
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path)
        assert ran.returncode == 3, ran.stdout + ran.stderr  # the vm pool stopped
        stats = emu.stats()
    run_id = ran.stdout.split()[1].rstrip(":")

    listing = fleet_reimage("status", "--journal", str(journal), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert run_id in listing.stdout and "patch-night" in listing.stdout
    assert "finished" in listing.stdout and "33" in listing.stdout  # nodes in the run

    one = fleet_reimage("status", run_id, "--journal", str(journal), cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "emu/render" in one.stdout and "emu/vm" in one.stdout
    assert "node came back starttaskfailed" in one.stdout  # failures grouped by reason
    assert "OperationNotValidOnNode" in one.stdout  # ... and by Batch error code
    assert "In flight now: none" in one.stdout

    reports = {
        fmt: fleet_reimage(
            "report", run_id, "--journal", str(journal), "--format", fmt, cwd=tmp_path
        )
        for fmt in ("json", "csv", "markdown", "table")
    }
    for fmt, result in reports.items():
        assert result.returncode == 0, (fmt, result.stderr)
    doc = json.loads(reports["json"].stdout)
    rows = list(csv.DictReader(io.StringIO(reports["csv"].stdout)))
    check_against_emulator(doc, rows, stats)
    assert doc["run"]["run_id"] == run_id and doc["totals"]["selected"] == 33
    waves = {(w["pool"], w["wave"]) for w in doc["timeline"]["waves"]}
    assert ("render", 1) in waves
    assert any(e["event"] == "pool_stopped" for e in doc["timeline"]["events"])

    markdown = reports["markdown"].stdout
    assert markdown.startswith("# Reimage report: patch-night\n")
    assert f"| Run | `{run_id}` |" in markdown and "## Failures" in markdown
    assert "## Timeline (UTC)" in markdown and "| **Total** | 33 |" in markdown
    assert "Nodes (33)" in reports["table"].stdout

    to_file = tmp_path / "report.md"
    written = fleet_reimage(
        "report", "--latest", "--journal", str(journal), "--format", "markdown",
        "--output", str(to_file), cwd=tmp_path,
    )  # fmt: skip
    assert written.returncode == 0 and to_file.read_text() == markdown
    assert "wrote" in written.stderr and written.stdout == ""


def check_against_emulator(
    doc: dict[str, Any], rows: list[dict[str, str]], stats: dict[str, Any]
) -> None:
    """Each node's applied attempts in the report are the reimages the emulator counted."""
    reimages = {(n["pool"], n["id"]): n["reimages"] for n in stats["nodes"]}
    nodes = {(n["pool"], n["node"]): n for n in doc["nodes"]}
    assert set(nodes) == set(reimages)
    for key, node in nodes.items():
        applied = [a for a in node["attempt_log"] if a["outcome"] in APPLIED]
        assert len(applied) == reimages[key], (key, node)
        assert node["attempts"] == len(node["attempt_log"])
    assert sum(reimages.values()) > 0
    assert any(n["attempts"] > 1 for n in nodes.values())  # the throttled ones were retried
    assert [(r["pool"], r["node"]) for r in rows] == [(n["pool"], n["node"]) for n in doc["nodes"]]
    for row in rows:
        node = nodes[(row["pool"], row["node"])]
        assert row["outcome"] == node["outcome"]
        ids = [a["client_request_id"] for a in node["attempt_log"]]
        assert (
            row["client_request_ids"].split(";") == ids if ids else row["client_request_ids"] == ""
        )
    outcomes = {n["outcome"] for n in nodes.values()}
    assert {"healthy", "failed", "skipped"} <= outcomes


def test_status_works_while_a_run_is_going_and_shows_what_is_in_flight(tmp_path: Path) -> None:
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": 12}],
        timings={"reimaging": "1500ms", "starting": "500ms"},
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [2, "100%"]
            max_unavailable: 4
            health: {wait: true, poll_interval: 100ms, timeout: 30s}
        """,
        )
        journal, events = tmp_path / "j.db", tmp_path / "events.jsonl"
        runner = start_fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(journal), "--events", str(events),
            cwd=tmp_path,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if events.exists() and "node_accepted" in events.read_text():
                    break
                time.sleep(0.05)
            during = fleet_reimage("status", "--latest", "--journal", str(journal), cwd=tmp_path)
            as_json = fleet_reimage(
                "status", "--latest", "--journal", str(journal), "--output", "json", cwd=tmp_path
            )
        finally:
            out, err = runner.communicate(timeout=90)
        assert runner.returncode == 0, out + err
        assert set(emu.reimages().values()) == {1}
    assert during.returncode == 0, during.stderr
    assert f"running (pid {runner.pid})" in during.stdout
    assert "In flight now: " in during.stdout and "In flight now: none" not in during.stdout
    assert "awaiting health" in during.stdout
    assert "It is running now" in during.stdout
    state = json.loads(as_json.stdout)
    assert state["run"]["status"] == "running" and state["run"]["runner_alive"] is True
    assert state["in_flight"] and all(n["pool"] == "p" for n in state["in_flight"])
    # Without a terminal, the run logged its progress as JSON lines on standard error.
    lines = [json.loads(line) for line in err.splitlines() if '"progress"' in line]
    assert lines and lines[-1]["selected"] == 12 and "rate_per_min" in lines[-1]


def test_missing_journal_and_unknown_runs_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    for args in (["status"], ["status", "--latest"], ["report", "--latest"]):
        result = fleet_reimage(*args, "--journal", str(missing), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"there is no journal at {missing}" in result.stderr
        assert "--journal PATH" in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists() and list(tmp_path.iterdir()) == []  # nothing was created

    journal = tmp_path / "j.db"
    with emulator_process(tmp_path, [{"id": "p", "nodes": 2}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
    unknown = fleet_reimage("report", "r-nope", "--journal", str(journal), cwd=tmp_path)
    assert unknown.returncode == 2 and "no run 'r-nope'" in unknown.stderr
    assert f"fleet-reimage status --journal {journal}" in unknown.stderr
    unnamed = fleet_reimage("report", "--journal", str(journal), cwd=tmp_path)
    assert unnamed.returncode == 2 and "RUN_ID or --latest" in unnamed.stderr
    help_text = fleet_reimage("status", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "examples:" in help_text.stdout


def test_status_follow_shows_a_run_until_it_ends(tmp_path: Path) -> None:
    """`status --follow` keeps reporting a run driven by another process until it ends."""
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": 30}],
        timings={"reimaging": "300ms", "starting": "200ms"},
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [2, "100%"]
            max_unavailable: 3
            health: {wait: true, poll_interval: 100ms, timeout: 30s}
        """,
        )
        journal = tmp_path / "j.db"
        runner = start_fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path
        )
        deadline = time.monotonic() + 20
        while not journal.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        follow = fleet_reimage(
            "status",
            "--latest",
            "--follow",
            "0.3",
            "--journal",
            str(journal),
            cwd=tmp_path,
            timeout=60,
        )
        runner.communicate(timeout=60)
    assert follow.returncode == 0, follow.stderr
    statuses = [
        line.split()[1] for line in follow.stdout.splitlines() if line.startswith("  status ")
    ]
    assert len(statuses) >= 2  # it refreshed while the run went on
    assert statuses[0] == "running" and statuses[-1] == "finished"
