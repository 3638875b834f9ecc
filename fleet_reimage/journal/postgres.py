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

import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal import postgres_schema as schema_mod
from fleet_reimage.journal import postgres_sql as sql
from fleet_reimage.journal.codec import encode_mapping
from fleet_reimage.journal.model import (
    AttemptEnd,
    AttemptRecord,
    AttemptStart,
    Claim,
    Exclusion,
    JournalError,
    NewRun,
    NewTarget,
    RunEvent,
    RunnerInfo,
    RunRecord,
    RunStatus,
    TargetChange,
    TargetRecord,
    WriterStats,
)
from fleet_reimage.journal.postgres_conn import DEFAULT_SCHEMA
from fleet_reimage.journal.postgres_lock import WriterLock, default_owner
from fleet_reimage.journal.postgres_shared import SharedStore
from fleet_reimage.journal.postgres_shared_claim import ClaimRequest
from fleet_reimage.journal.postgres_writer import Conn, GroupWriter, Statement, Work

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


class PostgresJournal:
    """A :class:`~fleet_reimage.journal.model.Journal` in one schema of a PostgreSQL database."""

    location: str

    def __init__(self, location: str, schema: str, url: str, opened: _Opened) -> None:
        if opened.pool is None:  # pragma: no cover - open() always makes the pool
            raise JournalError(f"the journal {location} has no connections")
        self.location = location
        self.schema = schema
        self._url = url  # for libpq only (may hold the password): never shown
        self._pool = opened.pool
        self._lock = opened.lock
        self._writer = opened.writer
        self._shared = None if opened.writer is None else SharedStore(url, schema, location)
        self.owner: str | None = None  # "host pid run" from lock_for_writing, for messages
        self._closed = False
        self._close_done: anyio.Event | None = None

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def readonly(self) -> bool:
        return self._writer is None

    @property
    def writer_stats(self) -> WriterStats | None:
        """Group-commit counters (for tests and benchmarks); None when read-only."""
        return None if self._writer is None else self._writer.stats

    @property
    def writer_backend_pid(self) -> int | None:
        """The server process of the writer connection (diagnostics, tests); None: read-only."""
        return None if self._writer is None else self._writer.backend_pid

    @property
    def lock_backend_pid(self) -> int | None:
        """The server process holding the writer lock; None when read-only."""
        return None if self._lock is None else self._lock.backend_pid

    async def close(self) -> None:
        """Flush queued writes, stop the writer, release the lock. Safe to call again."""
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._closed = True
        self._close_done = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                if self._writer is not None:
                    await self._writer.stop()  # everything queued before close() is settled
                if self._shared is not None:
                    await self._shared.close()
                if self._lock is not None:
                    await self._lock.release()  # only now: nothing more will be written
                await self._pool.close()
        finally:
            self._close_done.set()

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

    def _writable(self) -> GroupWriter:
        if self._closed:
            raise JournalError(f"the journal {self.location} is closed")
        if self._writer is None:
            raise JournalError(f"the journal {self.location} was opened read-only")
        return self._writer

    async def _write(self, work: Work, what: str, run_id: str | None, at: float) -> None:
        await self._writable().submit(work, what, run_id, at)

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

    async def attempt_started(self, start: AttemptStart) -> None:
        what = f"start of attempt {start.client_request_id}"
        await self._write(sql.attempt_started(start), what, start.run_id, start.sent_at)

    async def attempt_finished(self, end: AttemptEnd) -> None:
        what = f"end of attempt {end.client_request_id}"
        await self._write(sql.attempt_finished(end), what, end.run_id, end.finished_at)

    async def target_changed(self, change: TargetChange) -> None:
        what = f"change of target {change.target_id} to {change.state.value}"
        await self._write(sql.target_changed(change), what, change.run_id, change.at)

    async def record_event(self, event: RunEvent) -> None:
        data_json = encode_mapping(event.data, f"event {event.kind} data")
        work = sql.insert_event(event, data_json)
        await self._write(work, f"event {event.kind}", event.run_id, event.at)

    async def set_run_status(
        self,
        run_id: str,
        status: RunStatus,
        reason: str | None,
        at: float,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the status; RUNNING clears ``ended_at`` and records this process as the runner."""
        options_json = None if options is None else encode_mapping(options, "options")
        runner = (socket.gethostname(), os.getpid())
        work = sql.set_run_status(run_id, status, reason, at, options_json, runner)
        await self._write(work, f"status {status.value} of run {run_id}", run_id, at)

    async def replace_plan(self, run_id: str, plan_text: str, plan_sha256: str) -> None:
        now = time.time()
        work = sql.replace_plan(run_id, plan_text, plan_sha256, now)
        await self._write(work, f"new plan of run {run_id}", run_id, now)

    # --- several runners sharing one run (SharedRuns; see postgres_shared) ---------------

    def _sharing(self) -> SharedStore:
        self._writable()
        if self._shared is None:  # pragma: no cover - every writable journal has one
            raise JournalError(f"the journal {self.location} cannot share runs")
        return self._shared

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

    async def claim(
        self,
        run_id: str,
        runner_id: str,
        account: str,
        pool: str,
        *,
        limit: int,
        max_unavailable: int,
        baseline: int,
        pause: float,
        failure_budget: int,
        forgiven_failures: int,
        lease: float,
        now: float,
    ) -> Claim:
        """Claim pending targets of the pool's current wave as room allows; take over the
        in-flight/accepted ones whose owner's lease expired (see ``postgres_shared_claim``)."""
        request = ClaimRequest(run_id, runner_id, account, pool, limit, max_unavailable,
                               baseline, pause, failure_budget, forgiven_failures, lease,
                               now)  # fmt: skip
        return await self._sharing().claim(request)

    async def release(self, run_id: str, runner_id: str, target_ids: Sequence[int]) -> None:
        """Give back claimed targets that were never sent (owner cleared)."""
        await self._sharing().release(run_id, runner_id, target_ids)

    async def set_pool_baseline(self, run_id: str, account: str, pool: str, baseline: int) -> None:
        """Record the pool's nodes unavailable for other reasons (from a health poll)."""
        await self._sharing().set_pool_baseline(run_id, account, pool, baseline)

    async def share_pause(self, run_id: str, account: str, paused_until: float) -> float:
        """Raise the account's shared pause to ``paused_until`` if later; the shared value."""
        return await self._sharing().share_pause(run_id, account, paused_until)

    async def leave(self, run_id: str, runner_id: str) -> None:
        """Release every target this runner owns that is not terminal, and unregister."""
        await self._sharing().leave(run_id, runner_id)

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
