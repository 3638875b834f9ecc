"""One runner at a time per pool: a PostgreSQL advisory lock for ``action: replace``.

A replace changes pools, so the runners sharing a run on a PostgreSQL journal take turns
per pool instead of claiming nodes: the runner holding a pool's turn (a session-level
advisory lock on a connection of its own, keyed on the journal's schema, the run, the
account and the pool) is the only one calling removenodes or resize on it. A runner that
dies loses its connection, and with it the turn: the next runner takes the pool over from
the journal, as a resume would (``engine/replace.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import psycopg

from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal.model import JournalError

POOL_TURN_CLASS = 0x46524A54  # "FRJT"
WAIT = 0.2  # seconds between tries for a turn another runner holds


def pool_turn_key(schema: str, run_id: str, account: str, pool: str) -> int:
    return pgconn.advisory_key(schema, run_id, account, pool)


@asynccontextmanager
async def pool_turn(
    url: str, schema: str, location: str, run_id: str, account: str, pool: str
) -> AsyncIterator[None]:
    """Wait for the pool's turn and hold it inside the ``async with``."""
    conn: psycopg.AsyncConnection[Any] = await pgconn.connect(url, schema, location=location)
    try:
        lock = (POOL_TURN_CLASS, pool_turn_key(schema, run_id, account, pool))
        try:
            await pgconn.wait_for_advisory_lock(conn, lock, WAIT)
        except psycopg.Error as exc:  # a journal error, as a gate's turn says it
            raise JournalError(
                f"waiting for the turn of pool {account}/{pool} in the journal {location} "
                f"failed ({type(exc).__name__}: {pgconn.describe(exc, url)})"
            ) from exc
        yield
    finally:
        with anyio.CancelScope(shield=True), suppress(psycopg.Error):
            await conn.close()  # the lock goes with the session
