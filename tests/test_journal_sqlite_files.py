"""SQLite journal files: permissions, the single-writer lock, readers beside a writer, damage."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from test_journal_support import (
    RUN_ID,
    accepted,
    file_state,
    journal_with_run,
    new_run,
    new_targets,
    run_python,
    start,
)

from fleet_reimage.journal import JournalBusy, JournalError, sqlite_schema
from fleet_reimage.journal.sqlite import SqliteJournal
from fleet_reimage.journal.sqlite_schema import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, so 0600 cannot come from it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


async def test_journal_files_are_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "j.db"
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(path, 5)
        async with journal:
            await journal.attempt_started(start(ids[0], "c1", 1.0))
            sidecars = {s: mode(path.with_name("j.db" + s)) for s in ("-wal", "-shm", ".lock")}
            assert sidecars == {"-wal": 0o600, "-shm": 0o600, ".lock": 0o600}
            assert mode(path) == 0o600
    assert (mode(path), mode(path.with_name("j.db.lock"))) == (0o600, 0o600)


async def test_an_existing_wider_lock_file_is_narrowed(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "j.db"
    lock = tmp_path / "j.db.lock"
    lock.write_text("")
    lock.chmod(0o644)
    with anyio.fail_after(10):
        async with await SqliteJournal.open(path):
            assert mode(lock) == 0o600


async def test_a_second_writer_is_told_who_holds_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    owner = "build-host-7 31337 run-2024-06-01"
    other_process = (
        "import sys, anyio\n"
        "from pathlib import Path\n"
        "from fleet_reimage.journal import JournalBusy, open_journal\n"
        "async def main():\n"
        "    try:\n"
        "        await open_journal(Path(sys.argv[1]))\n"
        "    except JournalBusy as exc:\n"
        "        print('BUSY', exc)\n"
        "anyio.run(main)\n"
    )
    with anyio.fail_after(20):
        async with await SqliteJournal.open(path) as first:
            await first.lock_for_writing(owner)
            with pytest.raises(JournalBusy) as busy:
                await SqliteJournal.open(path)
            assert f"in use by {owner}" in str(busy.value)
            done = await anyio.to_thread.run_sync(run_python, other_process, str(path))
            assert done.stdout.startswith(f"BUSY journal {path} is in use by {owner}"), done
            async with await SqliteJournal.open(path, readonly=True):  # readers never lock
                pass
        async with await SqliteJournal.open(path):  # released on close
            pass


async def test_a_reader_reads_while_the_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    total = 3_000
    seen: list[int] = []
    writer_done = anyio.Event()

    async def work(journal: SqliteJournal, ids: list[int], worker: int) -> None:
        for n in range(worker, total, 32):
            await journal.attempt_started(start(ids[n % len(ids)], f"c{n}", float(n)))
            await journal.attempt_finished(accepted(ids[n % len(ids)], f"c{n}", float(n)))

    async def write(journal: SqliteJournal, ids: list[int]) -> None:
        async with anyio.create_task_group() as tg:
            for worker in range(32):
                tg.start_soon(work, journal, ids, worker)
        writer_done.set()

    with anyio.fail_after(30):
        journal, ids = await journal_with_run(path, 500)
        async with journal, await SqliteJournal.open(path, readonly=True) as reader:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, journal, ids)
                while not writer_done.is_set():
                    seen.append(len(await reader.attempts(RUN_ID)))
                    assert len(await reader.targets(RUN_ID)) == 500
            final = await reader.attempts(RUN_ID)
    assert seen == sorted(seen)  # each read sees a committed prefix, never less than before
    assert len(set(seen)) > 2  # and it really ran while the writer was busy
    assert len(final) == total and all(a.outcome is not None for a in final)


# --- damage ------------------------------------------------------------------------------


def truncated_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(64 * 1024))


def a_plan_file(path: Path) -> None:
    path.write_text("pools:\n  - name: batch-a\n    waves: [10, 50]\n")


def another_sqlite_database(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.close()


def newer_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '9.9.9' WHERE key = 'tool_version'")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 98}")
    conn.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncated_half, r"is damaged \(.*\)\. Restore it from a backup"),
    "truncated header": (truncated_header, r"is truncated\. Restore it from a backup"),
    "random bytes": (random_bytes, r"is not a fleet-reimage journal \(it is not a SQLite"),
    "plan file": (a_plan_file, r"is not a fleet-reimage journal \(it is not a SQLite"),
    "other database": (another_sqlite_database, r"a SQLite database but not a fleet-reimage"),
    "newer schema": (
        newer_schema,
        rf"written by a newer fleet-reimage \(schema {SCHEMA_VERSION + 98}\); upgrade "
        r"fleet-reimage to use it \(it was last written by 9\.9\.9",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_an_unusable_file_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "j.db"
    spoil, message = DAMAGE[damage]
    with anyio.fail_after(20):
        journal, _ = await journal_with_run(path, 3_000)
        await journal.close()
        spoil(path)
        before = file_state(path)
        with pytest.raises(JournalError, match=message) as refused:
            await SqliteJournal.open(path)
        assert not isinstance(refused.value, JournalBusy)
        assert "--journal" in str(refused.value) or "upgrade" in str(refused.value)
        assert file_state(path) == before
        assert not path.with_name("j.db-wal").exists()
        # A reader is refused too, at open or at the latest on its first read.
        with pytest.raises(JournalError, match=message):
            async with await SqliteJournal.open(path, readonly=True) as reader:
                await reader.targets(RUN_ID)
        assert file_state(path) == before
        wal = path.with_name("j.db-wal")  # a read-only connection may leave an empty one
        assert not wal.exists() or wal.stat().st_size == 0


async def test_an_empty_file_is_a_new_journal_for_a_writer_only(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.touch(mode=0o600)
    with anyio.fail_after(10):
        with pytest.raises(JournalError, match="is an empty journal"):
            await SqliteJournal.open(path, readonly=True)
        async with await SqliteJournal.open(path) as journal:
            assert await journal.runs() == []


async def test_a_schema_1_journal_migrates_to_2_and_keeps_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 2 adds action: replace's pool-operations table; a journal of the previous
    release is migrated in place, its runs kept."""
    path = tmp_path / "j.db"
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 1)  # what the previous release made
    async with await SqliteJournal.open(path) as old:
        await old.create_run(new_run(), new_targets(2), [])
    monkeypatch.undo()
    async with await SqliteJournal.open(path) as new:
        assert [r.run_id for r in await new.runs()] == [RUN_ID]
        assert await new.pool_ops(RUN_ID) == []
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    finally:
        conn.close()
