"""Chaos: damaged journals. resume/status/report refuse clearly and never silently restart.

One run (module fixture) stops at its checkpoint with nodes still pending, so a resume that
wrongly started afresh (or went on from a misread journal) would send reimages: the
emulator, alive for the whole module, counts them. Each test damages its own copy.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chaoshelpers import (
    assert_clear_refusal,
    checkpointed_journal,
    corrupt_middle,
    journal_rows,
    page_size,
    reimage_requests,
    run_cli,
    set_schema_version,
)
from clihelpers import EmulatorProcess, cli_env, emulator_process

NODES = 120


@dataclass(frozen=True)
class Stopped:
    emu: EmulatorProcess
    plan: Path
    journal: Path
    run_id: str


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    folder = tmp_path_factory.mktemp("chaos-journal")
    with emulator_process(folder, [{"id": "p", "nodes": NODES}]) as emu:
        plan, journal, run_id = checkpointed_journal(folder, emu)
        pending = journal_rows(journal, "SELECT count(*) FROM targets WHERE state = 'pending'")
        assert pending[0][0] == NODES - 2  # only the first wave went out
        yield Stopped(emu, plan, journal, run_id)


def copy_of(stopped: Stopped, folder: Path) -> Path:
    journal = folder / "copy.db"
    shutil.copyfile(stopped.journal, journal)
    return journal


def every_command_refuses(stopped: Stopped, journal: Path, folder: Path) -> list[str]:
    """resume (latest and by id), status (list and one run), report: all exit 2, no sends."""
    before_bytes = journal.read_bytes()
    before = reimage_requests(stopped.emu)
    messages = []
    for args in (
        ("resume",),
        ("resume", stopped.run_id),
        ("status",),
        ("status", "--latest"),
        ("report", "--latest", "--format", "json"),
    ):
        result = run_cli(*args, "--journal", str(journal), cwd=folder)
        assert_clear_refusal(result, journal)
        messages.append(result.stderr)
    assert reimage_requests(stopped.emu) == before, "a damaged journal led to reimages"
    assert journal.read_bytes() == before_bytes, "the damaged journal was changed"
    wal = journal.with_name(journal.name + "-wal")  # a reader may leave an empty one
    assert not wal.exists() or wal.stat().st_size == 0, "something was written to the WAL"
    return messages


def test_the_undamaged_copy_resumes_so_the_damage_is_what_is_refused(
    stopped: Stopped, tmp_path: Path
) -> None:
    """Control: the same copy, undamaged, is usable (status works, resume would go on)."""
    journal = copy_of(stopped, tmp_path)
    status = run_cli("status", "--latest", "--journal", str(journal), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert stopped.run_id in status.stdout


def test_a_journal_cut_in_half_is_refused(stopped: Stopped, tmp_path: Path) -> None:
    journal = copy_of(stopped, tmp_path)
    size = journal.stat().st_size
    with journal.open("r+b") as file:
        file.truncate(size // 2)
    messages = every_command_refuses(stopped, journal, tmp_path)
    assert all("Restore" in m or "damaged" in m or "truncated" in m for m in messages), messages


def test_a_journal_with_garbage_pages_is_refused(stopped: Stopped, tmp_path: Path) -> None:
    journal = copy_of(stopped, tmp_path)
    corrupt_middle(journal)
    messages = every_command_refuses(stopped, journal, tmp_path)
    assert all("damaged" in m or "Restore" in m for m in messages), messages


@pytest.mark.parametrize(("user_version", "meta"), [(99, None), (99, 99)])
def test_a_journal_from_a_newer_schema_is_refused(
    stopped: Stopped, tmp_path: Path, user_version: int, meta: int | None
) -> None:
    journal = copy_of(stopped, tmp_path)
    set_schema_version(journal, user_version=user_version, meta=meta)
    messages = every_command_refuses(stopped, journal, tmp_path)
    for message in messages:
        assert "newer fleet-reimage" in message and "upgrade" in message, message
        assert "schema 99" in message, message


def test_a_meta_table_from_a_newer_schema_is_refused(stopped: Stopped, tmp_path: Path) -> None:
    journal = copy_of(stopped, tmp_path)
    set_schema_version(journal, user_version=None, meta=99)
    before = reimage_requests(stopped.emu)
    result = run_cli("resume", "--journal", str(journal), cwd=tmp_path)
    sent = reimage_requests(stopped.emu) - before
    assert result.returncode == 2 and sent == 0, (result.returncode, sent, result.stderr)


STATUS_OF_EACH = """
import contextlib, io, json, sys
from fleet_reimage.cli.main import main
results = []
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["status", "--latest", "--journal", path])
    results.append([path, code, out.getvalue()[:120], err.getvalue()])
print(json.dumps(results))
"""


def test_status_says_damaged_whichever_single_page_is_garbage(
    stopped: Stopped, tmp_path: Path
) -> None:
    """One damaged page, wherever it is: some are never read by what status shows, yet the
    figures of a damaged journal cannot be trusted. Every copy: exit 2, "damaged"."""
    data = stopped.journal.read_bytes()
    size = page_size(stopped.journal)
    copies = []
    for page in range(1, len(data) // size):  # page 0 holds the header, refused on its own
        copy = tmp_path / f"page-{page}.db"
        garbage = random.Random(page).randbytes(size)
        copy.write_bytes(data[: page * size] + garbage + data[(page + 1) * size :])
        copies.append(str(copy))
    assert len(copies) >= 10
    # One process for every copy (the command line's main(), as `status` runs it).
    checked = subprocess.run(
        [sys.executable, "-c", STATUS_OF_EACH, *copies],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path, env=cli_env(),
    )  # fmt: skip
    results = json.loads(checked.stdout)
    trusted = [(Path(p).name, code, out) for p, code, out, err in results
               if code != 2 or "is damaged" not in err]  # fmt: skip
    assert trusted == [], trusted
