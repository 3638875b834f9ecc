"""Helpers shared by the PostgreSQL journal tests (no tests here; the name keeps it among them).

Import with ``from test_journal_pg_support import ...``. The server and per-test schemas come
from ``pgserver``; this module has the journal-level pieces: a journal holding a run, the
backends the contract tests run against, and server-side tricks (an operator's connection, a
table lock that stalls the writer mid-batch, terminating a backend).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import psycopg
from pgserver import PgSchema
from psycopg import sql
from test_journal_support import RUN_ID, new_run, new_targets

from fleet_reimage.journal import Exclusion
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.sqlite import SqliteJournal


async def journal_with_run(
    pg: PgSchema, count: int = 10, batch_window: float = 0.002
) -> tuple[PostgresJournal, list[int]]:
    """A writable journal in ``pg`` holding RUN_ID with ``count`` targets, and the target ids."""
    journal = await PostgresJournal.open(pg.url, schema=pg.name, batch_window=batch_window)
    try:
        await journal.create_run(new_run(), new_targets(count), [])
        ids = [t.target_id for t in await journal.targets(RUN_ID)]
    except BaseException:
        await journal.close()
        raise
    return journal, ids


# --- the backends the contract runs against -----------------------------------------------

AnyJournal = SqliteJournal | PostgresJournal


class Backend:
    """Opens journals of one backend, all at the same fresh location of this test."""

    name: str
    duplicate_crid: str  # how the backend words a second attempt with the same request id

    async def open(self, *, batch_window: float = 0.002) -> AnyJournal:
        raise NotImplementedError

    async def open_reader(self) -> AnyJournal:
        raise NotImplementedError

    async def with_run(
        self, count: int = 10, exclusions: Sequence[Exclusion] = (), batch_window: float = 0.002
    ) -> tuple[AnyJournal, list[int]]:
        """A writable journal holding RUN_ID with ``count`` targets, and the target ids."""
        journal = await self.open(batch_window=batch_window)
        try:
            await journal.create_run(new_run(), new_targets(count), list(exclusions))
            ids = [t.target_id for t in await journal.targets(RUN_ID)]
        except BaseException:
            await journal.close()
            raise
        return journal, ids


class SqliteBackend(Backend):
    name = "sqlite"
    duplicate_crid = r"UNIQUE constraint failed: attempts\.client_request_id"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, *, batch_window: float = 0.002) -> AnyJournal:
        return await SqliteJournal.open(self.path, batch_window=batch_window)

    async def open_reader(self) -> AnyJournal:
        return await SqliteJournal.open(self.path, readonly=True)


class PostgresBackend(Backend):
    name = "postgres"
    duplicate_crid = r"duplicate key value violates unique constraint.*client_request_id"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema

    async def open(self, *, batch_window: float = 0.002) -> AnyJournal:
        return await PostgresJournal.open(self.url, schema=self.schema, batch_window=batch_window)

    async def open_reader(self) -> AnyJournal:
        return await PostgresJournal.open(self.url, schema=self.schema, readonly=True)


async def admin(url: str) -> psycopg.AsyncConnection[Any]:
    """A separate autocommit connection, as an operator's psql would be."""
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


@contextlib.asynccontextmanager
async def stalled_writes(pg: PgSchema, table: str = "attempts") -> AsyncIterator[None]:
    """While inside, writes to ``table`` wait (another session holds a SHARE lock on it).

    Readers are not blocked (SHARE does not conflict with the ACCESS SHARE of a SELECT), so a
    test can look at the journal while its writer is stuck inside a batch transaction.
    """
    conn = await admin(pg.url)
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                sql.SQL("LOCK TABLE {}.{} IN SHARE MODE").format(
                    sql.Identifier(pg.name), sql.Identifier(table)
                )
            )
            yield
    finally:
        await conn.close()


async def waiting_on_lock(pg: PgSchema, pid: int) -> bool:
    """True when backend ``pid`` is waiting for a lock (a stalled batch)."""
    conn = await admin(pg.url)
    async with conn:
        cursor = await conn.execute(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cursor.fetchone()
    return bool(row and row[0])


async def until_waiting_on_lock(pg: PgSchema, pid: int, timeout: float = 10.0) -> None:
    """Return once backend ``pid`` waits for a lock (its batch is stuck mid-transaction)."""
    with anyio.fail_after(timeout):
        for _ in itertools.count():
            if await waiting_on_lock(pg, pid):
                return
            await anyio.sleep(0.01)


def terminate(url: str, pid: int) -> bool:
    """``pg_terminate_backend(pid)`` from a separate connection (as an operator would)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    return bool(row and row[0])
