"""The PostgreSQL journal: one schema in a database, any number of writers and readers.

Several processes may write one journal at once, even one run: a run's runners share it
through row leases (``SharedRuns``, see ``postgres_shared``), and ``register_runner(...,
exclusive=True)``, not the journal, is what keeps a run to one runner.

Opening for writing connects three ways, all with psycopg 3 in asyncio:

* the *lock connection* shares the journal's session advisory lock (``postgres_lock``: it only
  keeps out older, exclusive fleet-reimage versions), creates or migrates the schema
  (``postgres_schema``) and records the writer's name;
* the *writer connection* belongs to the group writer (``postgres_writer``), which batches
  concurrent writes into one pipelined transaction and resolves callers only after ``COMMIT``;
* a small *read pool* (read-only sessions) serves the reads, so ``status`` and a long
  ``targets()`` never wait behind a batch, nor a batch behind them;
* for a shared run only, a small writable pool, opened on first use, for registrations,
  heartbeats and claims (``postgres_shared``): they are not on the hot path.

Opening read-only (``status``, ``report`` while a run is going) takes no lock, never creates or
migrates anything, and only uses the read pool.

``location`` is the URL without its password. The URL itself stays in memory only, for libpq
(the read pool reconnects with it); it is never shown, logged or stored (see ``postgres_conn``).
Cancelling a caller that awaits a write does not withdraw the write: it was queued and will be
committed (or fail) with its batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal import postgres_schema as schema_mod
from fleet_reimage.journal import postgres_sql as sql
from fleet_reimage.journal.base import JournalBase
from fleet_reimage.journal.codec import encode_mapping
from fleet_reimage.journal.model import (
    AttemptRecord,
    Exclusion,
    JournalError,
    NewRun,
    NewTarget,
    RunEvent,
    RunRecord,
    TargetRecord,
)
from fleet_reimage.journal.poolops import PoolOpRecord
from fleet_reimage.journal.postgres_conn import DEFAULT_SCHEMA
from fleet_reimage.journal.postgres_lock import WriterLock, default_owner
from fleet_reimage.journal.postgres_poolturn import pool_turn
from fleet_reimage.journal.postgres_shared import SharedStore
from fleet_reimage.journal.postgres_shared_claim import ClaimRequest
from fleet_reimage.journal.postgres_writer import Conn, GroupWriter, Statement, Work
from fleet_reimage.journal.shared import A, Claim, ClaimPolicy, GateKey, GateTurn, RunnerInfo

T = TypeVar("T")

POOL_SIZE = 4
READ_WAIT_S = 30.0  # for a pooled connection: a server that stays away turns into an error


@dataclass(slots=True)
class _Opened:
    """What :meth:`PostgresJournal.open` has set up so far, to undo if it fails half-way."""

    pool: AsyncConnectionPool[Conn] | None = None
    lock: WriterLock | None = None
    writer: GroupWriter | None = None
    spare: list[Conn] = field(default_factory=list)  # connections not yet owned by the above

    async def aclose(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
        for conn in self.spare:
            await conn.close()
        if self.lock is not None:
            await self.lock.release()
        if self.pool is not None:
            await self.pool.close()


class PostgresJournal(JournalBase[Work]):
    """A :class:`~fleet_reimage.journal.model.Journal` in one schema of a PostgreSQL database
    (the part that does not depend on the storage is ``JournalBase``'s)."""

    _sql = sql

    def __init__(self, location: str, schema: str, url: str, opened: _Opened) -> None:
        if opened.pool is None:  # pragma: no cover - open() always makes the pool
            raise JournalError(f"the journal {location} has no connections")
        super().__init__(location, opened.writer)
        self.schema = schema
        self._url = url  # for libpq only (may hold the password): never shown
        self._pool = opened.pool
        self._lock = opened.lock
        self._group_writer = opened.writer
        self._shared = None if opened.writer is None else SharedStore(url, schema, location)
        self.owner: str | None = None  # "host pid run" from lock_for_writing, for messages

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        readonly: bool = False,
        schema: str = DEFAULT_SCHEMA,
        batch_window: float = 0.002,
        max_batch: int = 4096,
        pool_size: int = POOL_SIZE,
    ) -> PostgresJournal:
        """Open (for writing: lock, and create or migrate) the journal in ``schema`` at ``url``.

        Raises ``JournalBusy`` when an older fleet-reimage (which cannot share a journal) holds
        it, and ``JournalError`` when it cannot be used (unreachable, not a journal, from a
        newer fleet-reimage; read-only: missing).
        ``batch_window`` and ``max_batch`` tune group commit.
        """
        schema = pgconn.check_schema(schema)
        location = pgconn.redact(url)
        opened = _Opened()
        try:
            if readonly:
                await _check_for_reading(url, schema, location)
            else:
                await _open_for_writing(opened, url, schema, location, batch_window, max_batch)
            opened.pool = await _open_pool(url, schema, pool_size)
        except BaseException:
            # Shielded: an abandoned open must not leave the lock or connections behind.
            with anyio.CancelScope(shield=True):
                await opened.aclose()
            raise
        return cls(location, schema, url, opened)

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writer"
        return f"<PostgresJournal {self.location} schema={self.schema} {mode}>"

    @property
    def writer_backend_pid(self) -> int | None:
        """The server process of the writer connection (diagnostics, tests); None: read-only."""
        return None if self._group_writer is None else self._group_writer.backend_pid

    @property
    def lock_backend_pid(self) -> int | None:
        """The server process holding the writer lock; None when read-only."""
        return None if self._lock is None else self._lock.backend_pid

    async def _shut(self) -> None:
        if self._group_writer is not None:
            await self._group_writer.stop()  # everything queued before close() is settled
        if self._shared is not None:
            await self._shared.close()
        if self._lock is not None:
            await self._lock.release()  # only now: nothing more will be written
        await self._pool.close()

    async def lock_for_writing(self, owner: str) -> None:
        """Record ``owner`` ("host pid run") as this writer's name; exclude nobody.

        A PostgreSQL journal has no single writer: several runs, or several runners of one
        run, write it at once. Whether a run may have another runner is decided per run by
        :meth:`register_runner` (``exclusive=True`` unless joining), which every writer of a
        run must call before writing to it.
        """
        self._writable()
        if self._lock is None:  # pragma: no cover - a writable journal always holds its lock
            raise JournalError(f"the journal {self.location} is not locked")
        self.owner = owner
        await self._lock.set_owner(owner)

    # --- writes ------------------------------------------------------------------------

    def _unit(self, write: Callable[..., Any], **input: Any) -> Work:
        unit: Work = write(**input)
        return unit

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
        is not finished, atomically across writers (see ``postgres_sql.create_run``)."""
        self._writable()
        guard = None
        if unless_unfinished_of is not None:
            key = schema_mod.plan_lock_key(self.schema, unless_unfinished_of)
            guard = (unless_unfinished_of, key)
        options_json = encode_mapping(run.options, "options")
        work = sql.create_run(run, options_json, targets, exclusions, guard)
        await self._write(work, f"run {run.run_id}", run.run_id, run.created_at)
        return await self.targets(run.run_id)

    # --- several runners sharing one run (SharedRuns; see postgres_shared) ---------------

    def _sharing(self) -> SharedStore:
        self._writable()
        if self._shared is None:  # pragma: no cover - every writable journal has one
            raise JournalError(f"the journal {self.location} cannot share runs")
        return self._shared

    @property
    def shared_store(self) -> SharedStore:
        """The shared-run operations themselves (tests call a claim with a clock of theirs)."""
        return self._sharing()

    async def register_runner(
        self, run_id: str, runner: RunnerInfo, *, lease: float, exclusive: bool
    ) -> list[RunnerInfo]:
        """Join the run's live runners (returned); ``exclusive``: JournalBusy if any other."""
        return await self._sharing().register_runner(
            run_id, runner, lease=lease, exclusive=exclusive
        )

    async def heartbeat(self, run_id: str, runner_id: str, *, lease: float) -> list[RunnerInfo]:
        """Renew the runner's lease and its targets'; LeaseLost once its lease ran out."""
        return await self._sharing().heartbeat(run_id, runner_id, lease=lease)

    async def server_time(self) -> float:
        """The database's clock (epoch seconds): what every lease and pause is measured by."""
        return await self._sharing().server_time()

    async def claim(
        self,
        run_id: str,
        runner_id: str,
        account: str,
        pool: str,
        *,
        limit: int,
        baseline: int,
        lease: float,
        policy: ClaimPolicy[A],
    ) -> Claim[A]:
        """Take over the pool's in-flight/accepted targets whose owner's lease expired, and
        claim as many pending ones as ``policy`` admits, up to ``limit`` (see
        ``postgres_shared_claim``)."""
        request = ClaimRequest(run_id, runner_id, account, pool, limit, baseline, lease)
        return await self._sharing().claim(request, policy)

    async def release(self, run_id: str, runner_id: str, target_ids: Sequence[int]) -> None:
        """Give back claimed targets that were never sent (owner cleared)."""
        await self._sharing().release(run_id, runner_id, target_ids)

    async def set_pool_baseline(
        self,
        run_id: str,
        account: str,
        pool: str,
        baseline: int,
        down_targets: Sequence[str] | None = None,
    ) -> None:
        """Record the pool's nodes unavailable for other reasons, and its targets seen not
        ready (from a health poll)."""
        await self._sharing().set_pool_baseline(run_id, account, pool, baseline, down_targets)

    async def share_pause(self, run_id: str, account: str, pause_for: float) -> float:
        """Make the account's shared pause last ``pause_for`` s more at least; its rest (s)."""
        return await self._sharing().share_pause(run_id, account, pause_for)

    async def resume_pools(self, run_id: str) -> None:
        """Release every pool's checkpoint and pause (a resume is the operator's go-ahead)."""
        await self._sharing().resume_pools(run_id)

    async def leave(self, run_id: str, runner_id: str) -> None:
        """Release every target this runner owns that is not terminal, and unregister."""
        await self._sharing().leave(run_id, runner_id)

    async def event_mark(self, run_id: str) -> int:
        """The id of the run's latest event (0: none): later events have greater ids."""
        return await self._sharing().event_mark(run_id)

    def gate_turn(self, run_id: str, key: GateKey) -> AbstractAsyncContextManager[GateTurn]:
        """This runner's turn at a gate of the run (see ``postgres_gates``)."""
        return self._sharing().gate_turn(run_id, key)

    # --- reads -------------------------------------------------------------------------

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise JournalError(f"the journal {self.location} is closed")
        try:
            async with self._pool.connection(timeout=READ_WAIT_S) as conn:
                return await work(conn)
        except psycopg.Error as exc:
            raise JournalError(
                f"reading the journal {self.location} failed "
                f"({type(exc).__name__}: {pgconn.describe(exc, self._url)})"
            ) from exc

    async def runs(self) -> list[RunRecord]:
        """All runs, newest first."""
        return await self._read(sql.read_runs)

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._read(lambda conn: sql.read_run(conn, run_id))

    async def targets(self, run_id: str) -> list[TargetRecord]:
        """The run's targets, by target_id (the order ``create_run`` was given them in)."""
        return await self._read(lambda conn: sql.read_targets(conn, run_id))

    async def exclusions(self, run_id: str) -> list[Exclusion]:
        return await self._read(lambda conn: sql.read_exclusions(conn, run_id))

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        """The run's attempts by ``sent_at`` (then by the order they were recorded)."""
        return await self._read(lambda conn: sql.read_attempts(conn, run_id))

    async def events(self, run_id: str) -> list[RunEvent]:
        """The run's events by time (then by the order they were recorded)."""
        return await self._read(lambda conn: sql.read_events(conn, run_id))

    def pool_turn(self, run_id: str, account: str, pool: str) -> AbstractAsyncContextManager[None]:
        """This runner's turn at one pool of an ``action: replace`` run (waits for it)."""
        return pool_turn(self._url, self.schema, self.location, run_id, account, pool)

    async def pool_ops(self, run_id: str) -> list[PoolOpRecord]:
        """The run's pool operations (``action: replace``), in the order recorded."""
        return await self._read(lambda conn: sql.read_pool_ops(conn, run_id))


# --- opening ------------------------------------------------------------------------------


async def _check_for_reading(url: str, schema: str, location: str) -> None:
    conn = await pgconn.connect(url, schema, location=location)
    try:
        state = await schema_mod.inspect(conn, schema)
    except psycopg.Error as exc:
        raise _open_failed("reading", location, url, exc) from exc
    finally:
        await conn.close()
    schema_mod.check_usable(state, location, schema, readonly=True)


async def _open_for_writing(
    opened: _Opened, url: str, schema: str, location: str, window: float, max_batch: int
) -> None:
    conn = await pgconn.connect(url, schema, location=location)
    opened.spare.append(conn)
    try:
        await pgconn.prepare_writer(conn)
        await _refuse_standby(conn, location)
        lock = await WriterLock.acquire(conn, schema, location)
        opened.spare.remove(conn)
        opened.lock = lock
        await schema_mod.migrate(conn, schema, location)
        await lock.set_owner(default_owner())
        writer_conn = await pgconn.connect(url, schema, location=location)
        opened.spare.append(writer_conn)
        await pgconn.prepare_writer(writer_conn)
    except psycopg.Error as exc:
        raise _open_failed("writing", location, url, exc) from exc
    query, params = lock.holds_statement()
    opened.spare.remove(writer_conn)
    opened.writer = GroupWriter(
        writer_conn,
        location,
        lock_check=Statement(query, params, missing="writer lock lost"),
        on_batch=sql.touch_runs,
        describe=lambda exc: pgconn.describe(exc, url),
        window=window,
        max_batch=max_batch,
    )


async def _refuse_standby(conn: Conn, location: str) -> None:
    cursor = await conn.execute("SELECT pg_is_in_recovery()")
    row = await cursor.fetchone()
    if row is not None and row[0]:
        raise JournalError(
            f"{location} is a read-only standby server; point the journal at the primary"
        )


async def _open_pool(url: str, schema: str, size: int) -> AsyncConnectionPool[Conn]:
    async def configure(conn: Conn) -> None:
        await pgconn.prepare_reader(conn, schema)

    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max(1, size),
        kwargs={"autocommit": True, **pgconn.connect_options(url)},
        configure=configure,
        check=AsyncConnectionPool.check_connection,  # a server restart costs no failed read
        name="fleet-reimage-journal",
        open=False,
    )
    await pool.open(wait=False)
    return pool


def _open_failed(mode: str, location: str, url: str, exc: psycopg.Error) -> JournalError:
    return JournalError(
        f"cannot open the journal {location} for {mode}: "
        f"{type(exc).__name__}: {pgconn.describe(exc, url)}"
    )
