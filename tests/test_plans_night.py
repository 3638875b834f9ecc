"""The README's "A patch night, step by step", run as written with the shipped plans/night.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

from clihelpers import cli_env, fleet_reimage

PLAN = str(Path("plans/night.yaml").resolve())


def test_the_walk_through_stops_at_the_gate_and_resume_finishes(tmp_path: Path) -> None:
    journal = str(tmp_path / "night.db")
    events = tmp_path / "events.jsonl"
    shown = fleet_reimage("plan", PLAN, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "slo: python3 check-slo.py --pool {pool} (before each wave" in shown.stdout
    assert "soak 2s" in shown.stdout and "drain: a node running tasks" in shown.stdout

    stopped = fleet_reimage(
        "run", PLAN, "--yes", "--journal", journal, "--events", str(events),
        cwd=tmp_path, env=cli_env(ALERTS_FIRING="1"),
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped (exit 3): 10 pending, 2 healthy" in stopped.stdout
    assert "last output: ALERT RenderQueueLatencyHigh firing" in stopped.stdout
    touched = {
        (e["pool"], e["node"])
        for e in map(json.loads, events.read_text().splitlines())
        if e["event"] == "node_accepted"
    }
    assert touched and {pool for pool, _ in touched} == {"etl", "render-a"} and len(touched) == 2

    status = fleet_reimage("status", "--latest", "--journal", journal, cwd=tmp_path)
    assert (
        "Gate failed (prod/" in status.stdout and "| ALERT RenderQueueLatencyHigh" in status.stdout
    )

    resumed = fleet_reimage("resume", "--journal", journal, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "finished (exit 0): 12 healthy" in resumed.stdout
    assert re.search(r"\b2 drains: \d drained in time, \d timed out", resumed.stdout)
    timeline = fleet_reimage("status", "--latest", "--journal", journal, cwd=tmp_path).stdout
    assert "gate 'smoke' after the run passed" in timeline
