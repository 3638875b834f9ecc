"""Helpers shared by the PostgreSQL journal tests (no tests here; the name keeps it among them).

Import with ``from test_journal_pg_support import ...``. The server and per-test schemas come
from ``pgserver``; this module has the journal-level pieces: a journal holding a run, the
backends the contract tests run against, server-side tricks (an operator's connection, a
table lock that stalls the writer mid-batch, terminating a backend), and the pieces of the
shared-run tests (runners, pools with waves, claims with roomy defaults, fenced starts).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
from pgserver import PgSchema
from psycopg import sql
from test_journal_support import RUN_ID, new_run, new_targets

from fleet_reimage.journal import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Exclusion,
    NewTarget,
    TargetRecord,
    TargetState,
)
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.postgres_shared_claim import ClaimRequest
from fleet_reimage.journal.shared import PoolState, RunnerInfo
from fleet_reimage.journal.sqlite import SqliteJournal
from fleet_reimage.rollout.budget import BudgetRule
from fleet_reimage.rollout.policy import RolloutRules, WaveCompleted, decide


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
    """``pg_terminate_backend(pid)`` from a separate connection (as an operator would).

    Returns once the backend has gone (its locks with it): the function itself only signals
    it, and a test that acts at once would race the backend's exit.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        for _ in range(1000):  # at most 10 s
            gone = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)"
                " AND NOT EXISTS (SELECT 1 FROM pg_locks WHERE pid = %s)",
                (pid, pid),
            ).fetchone()
            if gone and gone[0]:
                break
            time.sleep(0.01)
    return bool(row and row[0])


# --- several runners sharing one run ------------------------------------------------------

LEASE = 60.0  # long enough that no test's claims expire unless the test means them to


def runner(name: str, pid: int = 100) -> RunnerInfo:
    return RunnerInfo(f"{name}:{pid}:t", name, pid)


def pool_targets(pool: str, waves: Sequence[int], account: str = "acct") -> list[NewTarget]:
    """``waves[w]`` targets in wave ``w`` of ``pool``, positions in order."""
    targets: list[NewTarget] = []
    for wave, count in enumerate(waves):
        for _ in range(count):
            n = len(targets)
            targets.append(NewTarget(account, pool, f"{pool}-n{n:04d}", wave, n))
    return targets


async def shared_run(
    pg: PgSchema, targets: Sequence[NewTarget], journals: int = 2
) -> list[PostgresJournal]:
    """``journals`` writable journals on ``pg`` (as separate runners would open), RUN_ID made."""
    opened: list[PostgresJournal] = []
    try:
        for _ in range(journals):
            opened.append(await PostgresJournal.open(pg.url, schema=pg.name))
        await opened[0].create_run(new_run(), list(targets), [])
    except BaseException:
        for journal in opened:
            await journal.close()
        raise
    return opened


@contextlib.asynccontextmanager
async def all_closed(journals: Sequence[PostgresJournal]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for journal in journals:
            await journal.close()


@dataclass(frozen=True)
class Claimed:
    """A claim, and what the rollout policy decided in it, as the tests look at them."""

    targets: list[TargetRecord]
    takeovers: list[TargetRecord]
    wave: int | None
    blocked: str | None  # after what was taken: budget, held, pause, unavailable, wave
    opens_at: float | None  # the database's clock: when a pause ends
    finished: bool
    completed: WaveCompleted | None
    state: PoolState


async def claim(
    journal: PostgresJournal,
    who: RunnerInfo,
    pool: str = "p",
    *,
    limit: int = 1000,
    max_unavailable: int = 1000,
    baseline: int = 0,
    pause: float = 0.0,
    budget: int = 1000,
    forgiven: int = 0,
    checkpoint: int | None = None,
    lease: float = LEASE,
    now: float | None = None,
) -> Claimed:
    """A claim with the rollout policy and roomy defaults: a test names only the limit it is
    about. ``now``: the policy's clock for this claim (else the database's)."""
    rules = RolloutRules(max_unavailable, pause, checkpoint, BudgetRule(budget, forgiven))
    request = ClaimRequest(RUN_ID, who.runner_id, "acct", pool, limit, baseline, lease, now)
    got = await journal.shared_store.claim(request, functools.partial(decide, rules))
    decision = got.decision
    return Claimed(
        got.targets, got.takeovers, decision.wave,
        decision.after_taking(len(got.targets), got.more_pending), decision.opens_at,
        decision.finished, decision.completed, got.state,
    )  # fmt: skip


def fenced(target_id: int, who: RunnerInfo, sent_at: float | None = None) -> AttemptStart:
    """A start written by runner ``who`` (fenced), its request id unique per target and runner."""
    at = time.time() if sent_at is None else sent_at
    crid = f"{who.host}-{target_id}-{at}"
    return AttemptStart(RUN_ID, target_id, 1, "reimage", crid, at, runner_id=who.runner_id)


def ended(start: AttemptStart, state: TargetState, at: float | None = None) -> AttemptEnd:
    outcome = (
        AttemptOutcome.ACCEPTED if state is not TargetState.FAILED else AttemptOutcome.REJECTED
    )
    return AttemptEnd(
        RUN_ID, start.target_id, start.client_request_id, time.time() if at is None else at,
        outcome, state, status=202 if outcome is AttemptOutcome.ACCEPTED else 409,
    )  # fmt: skip


async def owners(pg: PgSchema) -> dict[int, tuple[str | None, str]]:
    """{target_id: (owner, state)} straight from the table."""
    conn = await admin(pg.url)
    async with conn:
        cursor = await conn.execute(
            sql.SQL("SELECT target_id, owner, state FROM {}.targets").format(
                sql.Identifier(pg.name)
            )
        )
        rows = await cursor.fetchall()
    return {int(t): (o, s) for t, o, s in rows}
