"""What a resume can change (issue 16 §2), through the command line as an operator types it:
``--force-plan`` lists every changed setting with whether it takes effect (a new
``max_unavailable`` is recomputed per pool), and overrides (``--max-unavailable``,
``--concurrency``, ``--per-account-concurrency``, ``--deadline``) take effect, are journaled
as events and shown by ``status`` and ``report``.

The emulator's ``peak_unavailable`` (nodes busy with our operations at once) is the oracle
that a new limit really took effect: the first part of each run is held to 1 node at a time.
"""

from __future__ import annotations

import re
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage
from runhelpers import write_plan

SLOW = {"reimaging": "300ms", "starting": "100ms"}
ROLLOUT = """
    waves: [1, "100%"]
    max_unavailable: 1
    confirm_after_wave: 1
    health: {wait: true, poll_interval: 100ms, timeout: 30s}
    failure_budget: "100%"
"""


def stopped_at_the_checkpoint(tmp_path: Path, url: str) -> Path:
    """A run of 10 nodes, 1 at a time, stopped (no terminal) after its canary."""
    plan = write_plan(tmp_path, url, rollout=ROLLOUT)
    first = fleet_reimage("run", str(plan), "--yes", "--journal", "j.db", cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    assert "paused after wave 1 for the operator" in first.stdout
    return plan


def test_force_plan_lists_what_takes_effect_and_recomputes_max_unavailable(
    tmp_path: Path,
) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 10}], timings=SLOW) as emu:
        plan = stopped_at_the_checkpoint(tmp_path, emu.url)
        assert emu.stats()["pools"]["p"]["peak_unavailable"] == 1
        text = plan.read_text()
        text = text.replace("max_unavailable: 1", "max_unavailable: 4")
        plan.write_text(text.replace('waves: [1, "100%"]', 'waves: [2, "100%"]'))
        refused = fleet_reimage("resume", "--journal", "j.db", cwd=tmp_path)
        assert refused.returncode == 2 and "resume with --force-plan" in refused.stderr
        done = fleet_reimage("resume", "--force-plan", "--journal", "j.db", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert emu.stats()["pools"]["p"]["peak_unavailable"] == 4  # the new limit, per pool
        assert set(emu.reimages().values()) == {1}
    said = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert said == [
        "the plan changed since the run started (2 settings):",
        "  rollout.waves: [1, 100%] -> [2, 100%]: does NOT take effect: each node's wave was "
        "fixed when the run was created, so the run keeps its ladder; a new ladder needs a "
        "new run",
        "  rollout.max_unavailable: 1 -> 4: takes effect: recomputed for each pool from the "
        "run's nodes",
        "  not taking effect in this run: 1 change (see above)",
    ]
    status = fleet_reimage("status", "--latest", "--journal", "j.db", cwd=tmp_path)
    assert re.search(
        r"plan changed on resume \(--force-plan\), 2 settings: rollout\.waves \[1, 100%\] -> "
        r"\[2, 100%\] \(does not take effect: each node's wave .*\); rollout\.max_unavailable "
        r"1 -> 4 \(takes effect\); max_unavailable per pool now emu/p 4",
        status.stdout,
    ), status.stdout


def test_overrides_on_resume_take_effect_and_are_journaled_and_shown(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 10}], timings=SLOW) as emu:
        stopped_at_the_checkpoint(tmp_path, emu.url)
        wrong = fleet_reimage(
            "resume", "--concurrency", "4", "--per-account-concurrency", "8",
            "--journal", "j.db", cwd=tmp_path,
        )  # fmt: skip
        assert wrong.returncode == 2
        assert wrong.stderr.strip().splitlines()[-1] == (
            "fleet-reimage: per-account concurrency 8 is more than the run's concurrency 4: "
            "lower --per-account-concurrency, or raise --concurrency"
        )
        done = fleet_reimage(
            "resume", "--max-unavailable", "3", "--concurrency", "4",
            "--per-account-concurrency", "2", "--deadline", "2026-12-31T06:00:00Z",
            "--journal", "j.db", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert emu.stats()["pools"]["p"]["peak_unavailable"] == 3
        assert set(emu.reimages().values()) == {1}
    status = fleet_reimage("status", "--latest", "--journal", "j.db", cwd=tmp_path).stdout
    assert (
        "  overrides max_unavailable 3 (emu/p 3), concurrency 4, per_account_concurrency 2, "
        "deadline 2026-12-31T06:00:00Z (set on resume)" in status
    ), status
    lines = [line.split("  ")[-1] for line in status.splitlines() if "override on resume" in line]
    assert lines == [
        "override on resume: --max-unavailable 3; max_unavailable per pool: emu/p 1 -> 3",
        "override on resume: --concurrency 4",
        "override on resume: --per-account-concurrency 2",
        "override on resume: --deadline 2026-12-31T06:00:00Z",
    ]
    report = fleet_reimage(
        "report", "--latest", "--journal", "j.db", "--format", "markdown", cwd=tmp_path
    ).stdout
    assert "| Overrides (on resume) | max_unavailable 3 (emu/p 3), concurrency 4, " in report
