"""Where log lines go (issue 16 §4): a file beside the journal when the live table has the
terminal, and progress on standard error without a terminal, even when the log is a file."""

from __future__ import annotations

import json
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage
from runhelpers import write_plan

from fleet_reimage.cli.logsetup import default_log_file


def test_the_default_log_file_is_beside_the_journal() -> None:
    assert default_log_file("patch.db") == "patch.log"
    assert default_log_file("/srv/night/journal") == "/srv/night/journal.log"
    assert default_log_file("postgresql://ops@db/fleet") == "fleet-reimage.log"


def test_without_a_terminal_progress_reaches_stderr_even_when_the_log_is_a_file(
    tmp_path: Path,
) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 6}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        done = fleet_reimage(
            "run", str(plan), "--yes", "--journal", "j.db", "--log-file", "log.jsonl",
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    progress = [line for line in said if line.startswith("progress of run r")]
    assert progress and progress[-1].endswith(": 6/6 finished (100%), failed 0/6")
    assert not [line for line in said if "node finished" in line]  # those are in the file
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in logged]
    assert kinds.count("node finished") == 6 and "progress" in kinds
