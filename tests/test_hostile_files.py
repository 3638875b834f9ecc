"""Files in shared folders: the journal, its lock, the log and the events file are opened as
files of our own, never through a symbolic link, never a FIFO, never someone else's file.

Each test plants what another user of a shared folder could (a link to a file we must not
touch, a FIFO, a file of theirs, a hard link) and runs the real command line; the planted
target must come out unchanged, and the command must refuse with exit 2, before anything is
sent to Batch.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from chaoshelpers import TRACEBACK
from clihelpers import EmulatorProcess, cli_env, emulator_process
from runhelpers import write_plan

OTHER_UID = 65534  # nobody
PRECIOUS = b"root's precious file\n"
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: giving a file to another user takes chown"
)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    folder = tmp_path_factory.mktemp("hostile-emulator")
    with emulator_process(folder, [{"id": "p", "nodes": 6}]) as running:
        yield running


def mutating(emu: EmulatorProcess) -> int:
    return int(emu.stats()["requests"]["mutating"])


def cli(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The command line, which must end by itself: a hang fails the test (fail_after)."""

    async def go() -> subprocess.CompletedProcess[str]:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(
                [sys.executable, "-m", "fleet_reimage", *args],
                cwd=folder,
                env=cli_env(),
                check=False,
            )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    return anyio.run(go)


def precious(folder: Path) -> Path:
    """A file that is not the run's business (root's, in the review's reproduction)."""
    victim = folder / "victim"
    victim.write_bytes(PRECIOUS)
    victim.chmod(0o644)
    return victim


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == PRECIOUS
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert TRACEBACK not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def a_journal(folder: Path, emu: EmulatorProcess, name: str = "made.db") -> Path:
    """A real journal with a finished run in it (to copy, link or give away)."""
    plan = write_plan(folder, emu.url, name="made")
    journal = folder / name
    done = cli(folder, "run", str(plan), "--yes", "--journal", str(journal))
    assert done.returncode == 0, done.stderr
    return journal


# --- symbolic links -------------------------------------------------------------------------


def test_a_linked_lock_file_is_neither_truncated_written_nor_chmodded(
    tmp_path: Path, emu: EmulatorProcess
) -> None:
    victim = precious(tmp_path)
    (tmp_path / "j.db.lock").symlink_to(victim)
    plan = write_plan(tmp_path, emu.url)
    before = mutating(emu)
    result = cli(tmp_path, "run", str(plan), "--yes", "--journal", str(tmp_path / "j.db"))
    assert_refused(result, "j.db.lock", "symbolic link")
    assert_untouched(victim)
    assert mutating(emu) == before


@pytest.mark.parametrize("option", ["--log-file", "--events"])
def test_a_linked_log_or_events_file_is_not_written(
    tmp_path: Path, emu: EmulatorProcess, option: str
) -> None:
    victim = precious(tmp_path)
    (tmp_path / "out.txt").symlink_to(victim)
    plan = write_plan(tmp_path, emu.url)
    before = mutating(emu)
    result = cli(
        tmp_path, "run", str(plan), "--yes", "--journal", str(tmp_path / "j.db"),
        option, str(tmp_path / "out.txt"),
    )  # fmt: skip
    assert_refused(result, "out.txt", "symbolic link")
    assert_untouched(victim)
    assert mutating(emu) == before


@pytest.mark.parametrize("linked", ["", "-wal", "-shm"])
def test_a_linked_journal_or_sidecar_is_refused(
    tmp_path: Path, emu: EmulatorProcess, linked: str
) -> None:
    real = a_journal(tmp_path, emu)
    journal = tmp_path / "j.db"
    if linked:
        shutil.copyfile(real, journal)
        (tmp_path / f"j.db{linked}").symlink_to(precious(tmp_path))
    else:
        journal.symlink_to(real)
    before, real_bytes = mutating(emu), real.read_bytes()
    for args in (("resume",), ("run", str(write_plan(tmp_path, emu.url)), "--yes")):
        result = cli(tmp_path, *args, "--journal", str(journal))
        assert_refused(result, f"j.db{linked}", "symbolic link")
    assert mutating(emu) == before
    assert real.read_bytes() == real_bytes
    if linked:
        assert_untouched(tmp_path / "victim")


# --- FIFOs: refused, never a hang -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--latest"),
        ("report", "--latest"),
        ("resume",),
        ("run", "PLAN", "--yes"),
    ],
)
def test_a_fifo_as_the_journal_is_refused_not_waited_on(
    tmp_path: Path, emu: EmulatorProcess, args: tuple[str, ...]
) -> None:
    fifo = tmp_path / "j.db"
    os.mkfifo(fifo)
    plan = write_plan(tmp_path, emu.url)
    command = [str(plan) if a == "PLAN" else a for a in args]
    result = cli(tmp_path, *command, "--journal", str(fifo), timeout=30)
    assert_refused(result, str(fifo), "FIFO")


@pytest.mark.parametrize("planted", ["j.db.lock", "out.log", "events.jsonl"])
def test_a_fifo_as_the_lock_log_or_events_file_is_refused(
    tmp_path: Path, emu: EmulatorProcess, planted: str
) -> None:
    os.mkfifo(tmp_path / planted)
    plan = write_plan(tmp_path, emu.url)
    before = mutating(emu)
    result = cli(
        tmp_path, "run", str(plan), "--yes", "--journal", str(tmp_path / "j.db"),
        "--log-file", str(tmp_path / "out.log"), "--events", str(tmp_path / "events.jsonl"),
        timeout=30,
    )  # fmt: skip
    assert_refused(result, planted, "FIFO")
    assert mutating(emu) == before


# --- someone else's files, hard links ---------------------------------------------------------


@as_root
@pytest.mark.parametrize("planted", ["j.db", "j.db.lock", "out.log", "events.jsonl"])
def test_another_users_file_is_refused(tmp_path: Path, emu: EmulatorProcess, planted: str) -> None:
    if planted == "j.db":
        shutil.copyfile(a_journal(tmp_path, emu), tmp_path / planted)
    else:
        (tmp_path / planted).write_bytes(PRECIOUS)
    os.chown(tmp_path / planted, OTHER_UID, OTHER_UID)
    before_bytes = (tmp_path / planted).read_bytes()
    plan = write_plan(tmp_path, emu.url)
    before = mutating(emu)
    result = cli(
        tmp_path, "run", str(plan), "--yes", "--journal", str(tmp_path / "j.db"),
        "--log-file", str(tmp_path / "out.log"), "--events", str(tmp_path / "events.jsonl"),
    )  # fmt: skip
    assert_refused(result, planted, "belongs to another user", f"uid {OTHER_UID}")
    assert mutating(emu) == before
    assert (tmp_path / planted).read_bytes() == before_bytes
    assert (tmp_path / planted).stat().st_uid == OTHER_UID


@as_root
def test_another_users_journal_is_refused_to_resume_too(
    tmp_path: Path, emu: EmulatorProcess
) -> None:
    journal = a_journal(tmp_path, emu, "j.db")
    os.chown(journal, OTHER_UID, OTHER_UID)
    assert_refused(cli(tmp_path, "resume", "--journal", str(journal)), "belongs to another user")
    # Reading is not writing: status shows someone else's journal (read-only, no lock).
    status = cli(tmp_path, "status", "--journal", str(journal))
    assert status.returncode == 0, status.stderr


def test_a_hard_linked_journal_or_lock_is_refused(tmp_path: Path, emu: EmulatorProcess) -> None:
    journal = a_journal(tmp_path, emu, "j.db")
    other = tmp_path / "elsewhere.db"
    os.link(journal, other)
    result = cli(tmp_path, "resume", "--journal", str(journal))
    assert_refused(result, "j.db", "2 hard links")
    os.unlink(other)
    victim = precious(tmp_path)
    os.unlink(tmp_path / "j.db.lock")
    os.link(victim, tmp_path / "j.db.lock")
    result = cli(tmp_path, "resume", "--journal", str(journal))
    assert_refused(result, "j.db.lock", "2 hard links")
    assert victim.read_bytes() == PRECIOUS
