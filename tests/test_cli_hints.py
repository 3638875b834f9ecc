"""Every "to continue" hint is a command that works (issue 16, section 3).

Each test runs the command the tool printed, exactly as printed, and checks that it is
accepted: a hint that names the command that refuses (a plain ``resume`` after a budget
stop, or after the deadline) is a bug an operator meets at 3 a.m.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage
from runhelpers import write_plan

HINT = re.compile(r"fleet-reimage resume [^\n`()]+")


def hinted(text: str) -> list[str]:
    """The last hinted resume command in ``text``, as arguments for ``fleet_reimage``."""
    found = HINT.findall(text)
    assert found, text
    words = shlex.split(found[-1].strip())
    assert words[:2] == ["fleet-reimage", "resume"], words
    return words[1:]


def run_hint(text: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return fleet_reimage(*hinted(text), cwd=cwd)


def run_id(text: str) -> str:
    match = re.search(r"^run (r\S+):", text, re.M)
    assert match, text
    return match.group(1)


def pending_nodes(journal: Path, cwd: Path) -> int:
    import json

    shown = fleet_reimage("status", "--latest", "--journal", str(journal), "--output", "json",
                          cwd=cwd)  # fmt: skip
    totals = json.loads(shown.stdout)["totals"]
    return int(totals["pending"]) + int(totals["in_flight"]) + int(totals["accepted"])


def test_after_a_budget_stop_the_hint_forgives_and_works(tmp_path: Path) -> None:
    rollout = """
        waves: ["100%"]
        max_unavailable: 4
        health: {wait: true, poll_interval: 100ms, timeout: 20s}
        failure_budget: 0
    """
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": 16}],
        outcomes={"starttaskfailed": 0.25},
    ) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout)
        journal = tmp_path / "j.db"
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path)
        assert ran.returncode == 3, ran.stdout + ran.stderr
        assert "failure budget exceeded" in ran.stdout
        assert hinted(ran.stdout)[-1] == "--accept-failures"
        assert "--failure-budget N sets a new budget instead" in ran.stdout

        # status and the report say the same, and a plain resume is refused (at once).
        status = fleet_reimage("status", "--latest", "--journal", str(journal), cwd=tmp_path)
        assert hinted(status.stdout) == hinted(ran.stdout)
        report = fleet_reimage(
            "report", "--latest", "--journal", str(journal), "--format", "markdown", cwd=tmp_path
        )
        assert hinted(report.stdout) == hinted(ran.stdout)
        before = sum(emu.reimages().values())
        plain = fleet_reimage("resume", "--journal", str(journal), cwd=tmp_path)
        assert plain.returncode == 3 and sum(emu.reimages().values()) == before
        assert hinted(plain.stdout) == hinted(ran.stdout)  # not the command that just refused
        assert hinted(
            fleet_reimage("status", "--latest", "--journal", str(journal), cwd=tmp_path).stdout
        ) == hinted(ran.stdout)

        # Following the hints finishes the run; every one of them moves it on.
        last = plain
        for _ in range(16):
            left = pending_nodes(journal, tmp_path)
            last = run_hint(last.stdout, tmp_path)
            assert last.returncode in (1, 3), last.stdout + last.stderr
            assert pending_nodes(journal, tmp_path) < left, last.stdout  # it was accepted
            if "to continue" not in last.stdout:
                break
        assert f"run {run_id(ran.stdout)}: finished" in last.stdout, last.stdout + last.stderr
        assert set(emu.reimages().values()) == {1}  # each node exactly once


def test_after_the_deadline_the_hint_gives_a_new_window_and_works(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 6}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        journal = tmp_path / "j.db"
        ran = fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(journal),
            "--deadline", "2020-01-01T00:00:00Z", cwd=tmp_path,
        )  # fmt: skip
        assert ran.returncode == 3, ran.stdout + ran.stderr
        assert hinted(ran.stdout)[-2:] == ["--deadline", "1h"]
        plain = fleet_reimage("resume", "--journal", str(journal), cwd=tmp_path)
        assert plain.returncode == 3 and "deadline" in plain.stdout
        assert hinted(plain.stdout)[-2:] == ["--deadline", "1h"]

        # Running the plan again is refused while its run is unfinished: with a hint that works.
        again = fleet_reimage("run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path)
        assert again.returncode == 2 and "is unfinished" in again.stderr
        assert hinted(again.stderr)[-2:] == ["--deadline", "1h"]

        # The plan changed: the refusal shows the diff and a command that accepts it.
        plan.write_text(plan.read_text() + "# reviewed by the night shift\n")
        changed = fleet_reimage("resume", "--journal", str(journal), cwd=tmp_path)
        assert changed.returncode == 2 and "+# reviewed by the night shift" in changed.stderr
        accepted = run_hint(changed.stderr, tmp_path)
        assert "--force-plan" in hinted(changed.stderr)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert set(emu.reimages().values()) == {1}
