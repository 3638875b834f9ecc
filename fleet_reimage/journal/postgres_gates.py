"""Gates of a shared run: one runner at a time asks a gate, and every runner sees its answer.

A turn at a gate (``SharedRuns.gate_turn``) is a session advisory lock on a connection of its
own, keyed by the run and the gate's ``GateKey`` (its name, ``when``, wave and pool): while one
runner asks the gate (which may take minutes), the others wait for their turn on their own
connections, never on the shared pool's (claims and heartbeats go on). The lock is polled
(``pg_try_advisory_lock``), so a runner stopped while it waits just stops waiting. A runner
that dies mid-gate loses its connection, and with it the lock: the next runner's turn comes.

The answer is the gate's ``gate_passed``/``gate_failed`` event in the run's ``events`` table,
written on the turn's connection before the lock is let go: the next runner to take the turn
reads it (``GateTurn.last``) and need not ask the gate again. No schema change: the events
table and advisory locks are all it needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg

from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal.codec import encode_mapping
from fleet_reimage.journal.model import JournalError, RunEvent
from fleet_reimage.journal.shared import GateKey, GateResult, GateTurn

GATE_LOCK_CLASS = 0x46524A47  # "FRJG" (see postgres_schema for the other classes)
TURN_POLL_S = 0.1  # seconds between two tries for a turn another runner holds

_LAST = (
    "SELECT event_id, kind FROM events WHERE run_id = %(run)s"
    " AND kind IN ('gate_passed', 'gate_failed')"
    " AND account IS NOT DISTINCT FROM %(account)s::text"
    " AND pool IS NOT DISTINCT FROM %(pool)s::text"
    " AND (data::jsonb) ->> 'gate' = %(gate)s AND (data::jsonb) ->> 'when' = %(when)s"
    " AND ((data::jsonb) ->> 'wave') IS NOT DISTINCT FROM %(wave)s::text"
    " ORDER BY event_id DESC LIMIT 1"
)


def gate_lock_key(schema: str, run_id: str, key: GateKey) -> int:
    """The advisory lock key of one gate ask of a run (CRC-32, like the journal's others)."""
    return pgconn.advisory_key(
        schema, run_id, "gate", key.when, key.gate, key.wave, key.account, key.pool
    )


class _Turn:
    def __init__(self, conn: psycopg.AsyncConnection[Any], last: GateResult | None) -> None:
        self._conn = conn
        self._last = last

    @property
    def last(self) -> GateResult | None:
        return self._last

    async def record(self, event: RunEvent) -> None:
        cursor = await self._conn.execute(
            "INSERT INTO events (run_id, at, kind, account, pool, data)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING event_id",
            (event.run_id, event.at, event.kind, event.account, event.pool,
             encode_mapping(event.data, "event data")),
        )  # fmt: skip
        row = await cursor.fetchone()
        assert row is not None
        self._last = GateResult(event.kind == "gate_passed", int(row[0]))


@asynccontextmanager
async def gate_turn(
    url: str, schema: str, location: str, run_id: str, key: GateKey
) -> AsyncIterator[GateTurn]:
    """Hold the turn at ``key`` (see the module docstring) for the body of the ``with``."""
    conn = await pgconn.connect(url, schema, location=location)
    try:
        try:
            await pgconn.prepare_writer(conn)
            lock = (GATE_LOCK_CLASS, gate_lock_key(schema, run_id, key))
            await pgconn.wait_for_advisory_lock(conn, lock, TURN_POLL_S)
            turn = _Turn(conn, await _last(conn, run_id, key))
        except psycopg.Error as exc:
            raise JournalError(
                f"waiting for gate {key.gate!r} in the journal {location} failed "
                f"({type(exc).__name__}: {pgconn.describe(exc, url)})"
            ) from exc
        yield turn
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()  # the session ends, and its advisory lock with it


async def event_mark(conn: psycopg.AsyncConnection[Any], run_id: str) -> int:
    """The id of the run's latest event (0: none yet)."""
    value = await _first(
        conn, "SELECT COALESCE(max(event_id), 0) FROM events WHERE run_id = %s", (run_id,)
    )
    return int(value)


async def _last(conn: psycopg.AsyncConnection[Any], run_id: str, key: GateKey) -> GateResult | None:
    params = {"run": run_id, "account": key.account, "pool": key.pool, "gate": key.gate,
              "when": key.when, "wave": None if key.wave is None else str(key.wave)}  # fmt: skip
    cursor = await conn.execute(_LAST, params)
    row = await cursor.fetchone()
    return None if row is None else GateResult(row[1] == "gate_passed", int(row[0]))


async def _first(conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None
    return row[0]
