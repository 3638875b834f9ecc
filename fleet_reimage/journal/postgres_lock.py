"""The writer lock of a PostgreSQL journal: a *shared* session advisory lock on its own connection.

Since schema 2 several runners may write one journal at once (even one run: see
``postgres_shared``), so writers of this version take the advisory lock in shared mode and never
exclude one another; who runs a run is decided per run, by ``register_runner``. The lock still
matters against fleet-reimage versions from before shared runs, which take the same lock
exclusively and do not know about row leases: while one of them holds it, this writer is
refused (``JournalBusy`` naming it), and while writers of this version hold it, the old tool is
refused. The server drops the lock when its session ends, so a crashed runner never leaves a
stale lock behind (a runner killed outright ends its session at once; one cut off by the network
ends it when TCP keepalives give up). The latest writer's "host pid run" sits in the ``writer``
table with the backend pid that holds the lock, so that a refused writer can name it.

The lock lives on a connection of its own, not the writer's: the group writer checks in every
batch transaction that this connection still holds it (see ``holds_statement``), so a lock
lost with its connection stops the writes instead of letting an old exclusive writer in beside
this one.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import anyio
import psycopg

from fleet_reimage.journal.model import JournalBusy, JournalError
from fleet_reimage.journal.postgres_schema import WRITER_LOCK_CLASS, lock_key

_OWNER_READ_TRIES = 20  # the holder records its name just after locking; give it a moment
_OWNER_READ_PAUSE = 0.01

# The lock as pg_locks shows it: an advisory (int4, int4) lock has objsubid 2.
_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 2"
)
# Who keeps a shared request out: only an exclusive holder can (an older fleet-reimage).
_EXCLUSIVE_HOLDER = f"{_HOLDER} AND mode = 'ExclusiveLock'"


class WriterLock:
    """An acquired lock; :meth:`release` (idempotent) gives it up with its connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str, location: str) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = conn
        self.key = lock_key(schema)
        self.location = location
        self.backend_pid = conn.info.backend_pid

    @classmethod
    async def acquire(
        cls, conn: psycopg.AsyncConnection[Any], schema: str, location: str
    ) -> WriterLock:
        """Share the journal's lock through ``conn``, or raise ``JournalBusy`` naming the
        exclusive holder (an older fleet-reimage, which cannot share a journal).

        ``conn`` becomes the lock's; on failure the caller still owns (and closes) it.
        """
        key = lock_key(schema)
        cursor = await conn.execute(
            "SELECT pg_try_advisory_lock_shared(%s::int4, %s::int4)", (WRITER_LOCK_CLASS, key)
        )
        row = await cursor.fetchone()
        if row is None or not row[0]:
            holder = await _read_holder(conn, key)
            raise JournalBusy(
                f"journal {location} (schema {schema}) is in use by {holder}, an older "
                "fleet-reimage that cannot share a journal; wait for that run to end, or stop "
                "it, then try again"
            )
        return cls(conn, schema, location)

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            raise JournalError(f"the writer lock of {self.location} is no longer held")
        return self._conn

    def holds_statement(self) -> tuple[str, tuple[int, int, int]]:
        """A query returning one row exactly while this lock is still held (by its session)."""
        return f"{_HOLDER} AND pid = %s", (WRITER_LOCK_CLASS, self.key, self.backend_pid)

    async def set_owner(self, owner: str) -> None:
        """Record this writer as the latest holder (needs the journal's tables: call after
        migrating). With shared holders the row names only the latest; it is for messages."""
        try:
            await self.conn.execute(
                "INSERT INTO writer (id, owner, backend_pid, since) VALUES (1, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
                " backend_pid = excluded.backend_pid, since = excluded.since",
                (owner.replace("\n", " "), self.backend_pid, time.time()),
            )
        except psycopg.Error as exc:
            raise JournalError(
                f"cannot record the writer of the journal {self.location}: "
                f"{type(exc).__name__}: {str(exc).strip()}"
            ) from exc

    async def release(self) -> None:
        """Close the lock's connection, which drops the lock (safe to call again)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def default_owner() -> str:
    """What a fresh writer records until ``lock_for_writing`` names its run."""
    return f"{socket.gethostname()} {os.getpid()}"


async def _read_holder(conn: psycopg.AsyncConnection[Any], key: int) -> str:
    """The holder's recorded name, or what is known about it."""
    pid: int | None = None
    for _ in range(_OWNER_READ_TRIES):
        cursor = await conn.execute(_EXCLUSIVE_HOLDER, (WRITER_LOCK_CLASS, key))
        row = await cursor.fetchone()
        pid = None if row is None else int(row[0])
        if pid is None:
            return "another process, which has just let go of it"
        owner = await _recorded_owner(conn, pid)
        if owner is not None:
            return owner
        await anyio.sleep(_OWNER_READ_PAUSE)  # the holder is between locking and recording
    return f"another process (PostgreSQL backend pid {pid})"


async def _recorded_owner(conn: psycopg.AsyncConnection[Any], pid: int) -> str | None:
    try:
        cursor = await conn.execute("SELECT owner FROM writer WHERE backend_pid = %s", (pid,))
    except psycopg.errors.UndefinedTable:
        return None  # the holder has not created the tables yet
    row = await cursor.fetchone()
    return None if row is None else str(row[0])
