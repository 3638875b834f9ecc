"""The SQLite journal: one local file, one writer process, any number of readers.

Opening for writing takes the single-writer lock (``<journal>.lock``, see ``lockfile``) before
SQLite touches the file, creates the file 0600 if needed, checks it (``quick_check``, schema
version), migrates it and switches it to WAL with ``synchronous=FULL``: a commit is on disk
when it returns. Writes go to one writer thread that group-commits them (``sqlite_writer``);
reads use a second, read-only connection on a worker thread (``anyio.to_thread``). Nothing
blocking ever runs on the event-loop thread.

Opening read-only (``status``, ``report`` while a run is going) takes no lock and uses a
``mode=ro`` connection; WAL lets it read while the writer writes, without disturbing it.

The writer needs an asyncio event loop (futures are resolved with ``call_soon_threadsafe``).
Cancelling a caller that awaits a write does not withdraw the write: it was queued and will be
committed (or fail) with its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from fleet_reimage.journal import sqlite_files as files
from fleet_reimage.journal import sqlite_schema as schema
from fleet_reimage.journal import sqlite_sql as sql
from fleet_reimage.journal.base import JournalBase
from fleet_reimage.journal.codec import encode_mapping
from fleet_reimage.journal.lockfile import WriterLock
from fleet_reimage.journal.model import (
    AttemptRecord,
    Exclusion,
    JournalError,
    NewRun,
    NewTarget,
    RunEvent,
    RunRecord,
    TargetRecord,
    TargetState,
)
from fleet_reimage.journal.poolops import PoolOpRecord
from fleet_reimage.journal.sqlite_writer import GroupWriter, Work

T = TypeVar("T")

BUSY_TIMEOUT_S = 10.0  # only checkpoints and readers' WAL recovery can make us wait
_WAL_LIMIT = 64 * 1024 * 1024  # shrink the WAL back to this after a big checkpoint
_NOT_READABLE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass(slots=True)
class _Opened:
    reader: sqlite3.Connection
    writer: sqlite3.Connection | None
    lock: WriterLock | None


class SqliteJournal(JournalBase[Work]):
    """A :class:`~fleet_reimage.journal.model.Journal` in one SQLite file (the part that does
    not depend on the storage is ``JournalBase``'s)."""

    _sql = sql

    def __init__(self, path: Path, opened: _Opened, writer: GroupWriter | None) -> None:
        super().__init__(str(path), writer)
        self.path = path
        self._group_writer = writer
        self._reader: sqlite3.Connection | None = opened.reader
        self._read_lock = threading.Lock()  # one connection, used by one worker at a time
        self._lock = opened.lock

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        create: bool = True,
        readonly: bool = False,
        batch_window: float = 0.002,
        max_batch: int = 4096,
    ) -> SqliteJournal:
        """Open (and with ``create``, create) the journal at ``path``.

        Raises ``JournalBusy`` when another writer holds it and ``JournalError`` when it cannot
        be used (missing, damaged, not a journal, from a newer fleet-reimage). ``batch_window``
        and ``max_batch`` tune group commit.
        """
        loop = asyncio.get_running_loop()
        path = Path(path)
        opener = functools.partial(_open_files, path, create=create, readonly=readonly)
        # Shielded: an abandoned open would leave the lock held by a half-built journal.
        with anyio.CancelScope(shield=True):
            opened = await anyio.to_thread.run_sync(opener)
        writer = None
        if opened.writer is not None:
            writer = GroupWriter(
                opened.writer,
                loop,
                str(path),
                on_batch=sql.touch_runs,
                window=batch_window,
                max_batch=max_batch,
                batchers=sql.BATCHERS,
            )
        journal = cls(path, opened, writer)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await journal.close()
            raise
        return journal

    async def _shut(self) -> None:
        # Reader first, so the writer's connection is the last one and its close checkpoints
        # the WAL back into the file and removes it.
        await anyio.to_thread.run_sync(self._close_reader)
        if self._group_writer is not None:
            self._group_writer.stop()
        await anyio.to_thread.run_sync(self._stop_writing)

    def _stop_writing(self) -> None:
        if self._group_writer is not None:
            self._group_writer.join()  # everything queued before close() is committed (or failed)
        if self._lock is not None:
            self._lock.release()  # only now: the file is consistent and no longer written

    def _close_reader(self) -> None:
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                with contextlib.suppress(sqlite3.Error):
                    reader.close()

    async def lock_for_writing(self, owner: str) -> None:
        """The lock is held since :meth:`open`; this records ``owner`` ("host pid run") in it."""
        self._writable()
        lock = self._lock
        if lock is None:  # pragma: no cover - a writable journal always holds its lock
            raise JournalError(f"the journal {self.location} is not locked")
        await anyio.to_thread.run_sync(lock.set_owner, owner)

    # --- writes ------------------------------------------------------------------------

    def _unit(self, write: Callable[..., Any], **input: Any) -> Work:
        return functools.partial(write, **input)

    async def create_run(
        self,
        run: NewRun,
        targets: Sequence[NewTarget],
        exclusions: Sequence[Exclusion],
        *,
        unless_unfinished_of: str | None = None,
    ) -> list[TargetRecord]:
        """Record a new run, its targets (target_id ascending in the given order), exclusions;
        with ``unless_unfinished_of``, refuse (``UnfinishedRun``) when that plan has a run that
        is not finished, in the same transaction (see ``sqlite_sql.insert_run``).

        The targets as recorded are built here rather than read back: for 20,000 targets
        that is ~50 ms less before the first request.
        """
        options_json = encode_mapping(run.options, "options")
        work = functools.partial(
            sql.insert_run,
            run=run,
            options_json=options_json,
            targets=list(targets),
            exclusions=list(exclusions),
            unless_unfinished_of=unless_unfinished_of,
        )
        first = await self._write(work, f"run {run.run_id}", run.run_id, run.created_at)
        if first is None:
            return await self.targets(run.run_id)
        run_id, pending, now = run.run_id, TargetState.PENDING, run.created_at
        return [
            TargetRecord(first + i, run_id, t.account, t.pool, t.node_id, t.wave, t.position,
                         pending, None, now)
            for i, t in enumerate(targets)
        ]  # fmt: skip

    async def _call_on_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Tests only: run ``work`` on the writer connection, inside a batch transaction."""
        result: T = await self._write(work, "test hook", None, 0.0)
        return result

    # --- reads -------------------------------------------------------------------------

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise JournalError(f"the journal {self.location} is closed")
        return await anyio.to_thread.run_sync(self._read_sync, work)

    def _read_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._read_lock:
            if self._reader is None:
                raise JournalError(f"the journal {self.location} is closed")
            try:
                return work(self._reader)
            except sqlite3.Error as exc:
                raise JournalError(
                    f"reading the journal {self.location} failed ({exc}). If this persists the "
                    f"file may be damaged: {schema.RESTORE_ADVICE}"
                ) from exc

    async def runs(self) -> list[RunRecord]:
        """All runs, newest first."""
        return await self._read(sql.read_runs)

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._read(functools.partial(sql.read_run, run_id=run_id))

    async def targets(self, run_id: str) -> list[TargetRecord]:
        """The run's targets, by target_id (the order ``create_run`` was given them in)."""
        return await self._read(functools.partial(sql.read_targets, run_id=run_id))

    async def exclusions(self, run_id: str) -> list[Exclusion]:
        return await self._read(functools.partial(sql.read_exclusions, run_id=run_id))

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        """The run's attempts by ``sent_at`` (then by the order they were recorded)."""
        return await self._read(functools.partial(sql.read_attempts, run_id=run_id))

    async def events(self, run_id: str) -> list[RunEvent]:
        """The run's events by time (then by the order they were recorded)."""
        return await self._read(functools.partial(sql.read_events, run_id=run_id))

    async def pool_ops(self, run_id: str) -> list[PoolOpRecord]:
        """The run's pool operations (``action: replace``), in the order recorded."""
        return await self._read(functools.partial(sql.read_pool_ops, run_id=run_id))


# --- opening (blocking: runs on a worker thread) ----------------------------------------


def _open_files(path: Path, *, create: bool, readonly: bool) -> _Opened:
    location = str(path)
    if readonly:
        return _open_readonly(path, location)
    # Refuse junk, links, FIFOs and other users' files before even creating the lock.
    if files.check_journal(path, location, writing=True) is None and not create:
        raise JournalError(f"there is no journal at {location}")
    lock_path = path.with_name(path.name + ".lock")
    lock = WriterLock.acquire(lock_path, f"{socket.gethostname()} {os.getpid()}", location)
    try:
        _create_file(path, location)
        # Again: it may have changed before we locked.
        identity = files.check_journal(path, location, writing=True)
        files.check_sidecars(path, writing=True)
        writer = _connect(path, "rw", location)
        try:
            files.check_same_file(path, identity, location)
            _prepare_writer(writer, path, location)
            reader = _connect(path, "ro", location)
        except BaseException:
            writer.close()
            raise
    except BaseException:
        lock.release()
        raise
    return _Opened(reader, writer, lock)


def _open_readonly(path: Path, location: str) -> _Opened:
    identity = files.check_journal(path, location, writing=False)
    if identity is None:
        raise JournalError(f"there is no journal at {location}")
    files.check_sidecars(path, writing=False)
    reader = _connect(path, "ro", location)
    try:
        files.check_same_file(path, identity, location)
        # A damaged page is not always met by the reads a view makes: check them all, or
        # status would print figures from a journal that cannot be trusted.
        schema.quick_check(reader, location)
        info = schema.inspect(reader, location)
        schema.check_usable(info, location, readonly=True)
        reader.execute("PRAGMA query_only = ON")
    except BaseException:
        reader.close()
        raise
    return _Opened(reader, None, None)


def _create_file(path: Path, location: str) -> None:
    """Create the file 0600 before SQLite sees it (SQLite gives -wal/-shm the same mode)."""
    try:
        # O_EXCL: never through a link planted at the name (O_NOFOLLOW says so twice).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return
    except FileNotFoundError as exc:
        raise JournalError(f"cannot create {location}: {path.parent} does not exist") from exc
    except OSError as exc:
        raise JournalError(f"cannot create {location}: {exc.strerror}") from exc
    os.close(fd)
    # The new directory entry must survive a crash too, or the first commit's fsync is moot.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _connect(path: Path, mode: str, location: str) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={mode}"
    try:
        # Autocommit mode: transactions are explicit. Threads: the connection is created
        # here and handed to the writer thread or the read worker, never used concurrently.
        return sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open the journal {location}: {exc}") from exc


def _prepare_writer(conn: sqlite3.Connection, path: Path, location: str) -> None:
    """Check, migrate and configure the writer connection; no write before the checks pass."""
    try:
        schema.quick_check(conn, location)
        info = schema.inspect(conn, location)
        must_migrate = schema.check_usable(info, location, readonly=False)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(
                f"the journal {location} cannot use write-ahead logging here (got {mode}); "
                "put it on a local file system"
            )
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT:d}")
        if must_migrate:
            schema.migrate(conn, info)
    except sqlite3.Error as exc:
        if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in _NOT_READABLE:
            raise schema.damaged(location, exc) from exc
        raise JournalError(f"cannot open the journal {location} for writing: {exc}") from exc
    files.narrow_modes(path)
