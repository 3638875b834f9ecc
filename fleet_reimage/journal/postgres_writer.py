"""Group commit for PostgreSQL: one task, one connection, one transaction per batch of writes.

Callers :meth:`GroupWriter.submit` a unit of work and await the returned future. The writer
task takes the first queued unit, lets the event loop run the other callers that are ready as
long as they keep adding units (at most ``window`` seconds, at most ``max_batch`` units), and
runs them all in one transaction: the statements go out in pipeline mode
(one round trip for the lot), are checked, and only after ``COMMIT`` returns (the writer's
``synchronous_commit`` is on: flushed on the server) are the callers' futures resolved. So a
caller learns "done" only for what is durable, and the commit's flush is shared by the batch.

Every batch transaction first checks that the journal's writer lock is still held by its lock
connection (``lock_check``): a lock lost with its connection must stop the writes, since an
older, exclusive writer may take it (see ``postgres_lock``).

Failures:

* A unit that is wrong on its own (unknown target or attempt, duplicate id, a value the server
  refuses) is *rejected*: the batch is rolled back and run again one unit at a time, each in a
  savepoint, so one bad call cannot sink its batch-mates; its caller gets ``JournalError``
  (``ValueError``/``TypeError`` for the caller's own mistakes; ``LeaseLost`` for a fenced
  write whose target another runner owns, see ``Statement.refusal``; a ``JournalError`` the
  unit raised itself to refuse, such as ``UnfinishedRun``, as it is).
* Anything else (connection lost, server shutting down, disk full on the server, the lock
  lost) fails the whole batch and *poisons* the writer: every later write fails at once with
  ``JournalError``, because after such an error nothing more may be reported as durable (a
  commit interrupted by a lost connection may or may not have happened). The run must stop.

Units run in submission order. A unit is a few statements (pipelined) or a bulk function that
needs the connection to itself (``COPY`` cannot run in a pipeline); the batch is cut around
bulk units, still in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from fleet_reimage.journal.base import Rejected, copy_error
from fleet_reimage.journal.model import JournalError, QueuedWrite, WriterStats

Conn = psycopg.AsyncConnection[Any]
Bulk = Callable[[Conn], Awaitable[None]]
# Called at the end of each batch with {run_id: latest time}; statements to add to it.
BatchHook = Callable[[dict[str, float]], Sequence["Statement"]]


@dataclass(frozen=True, slots=True)
class Statement:
    query: str
    params: Sequence[Any] | Mapping[str, Any] = ()
    # When set, the statement must affect (or return) exactly one row, else the unit is
    # rejected with this message, as a ``refusal`` (a JournalError or a subclass of it).
    missing: str | None = None
    refusal: type[JournalError] = JournalError


@dataclass(frozen=True, slots=True)
class Work:
    statements: tuple[Statement, ...] = ()
    bulk: Bulk | None = None


_Unit = QueuedWrite[Work]


class _Retry(Exception):
    """The fast path met a unit-level problem; run the batch unit by unit instead."""


class _LockLost(Exception):
    pass


# Errors that say "this unit is wrong", not "the journal is broken".
_UNIT_ERRORS: tuple[type[BaseException], ...] = (
    Rejected,
    JournalError,  # a refusal the unit raised itself (UnfinishedRun), handed over as it is
    ValueError,
    TypeError,
    psycopg.errors.IntegrityError,
    psycopg.errors.DataError,
)
# In pipeline mode the statements after a failed one fail with PipelineAborted (an
# OperationalError); the careful path re-runs them and tells a unit's fault from a broken link.
_RETRY_ERRORS: tuple[type[BaseException], ...] = (*_UNIT_ERRORS, psycopg.errors.PipelineAborted)

Outcome = tuple[asyncio.Future[None], BaseException | None]


class GroupWriter:
    """Owns ``conn`` from construction on; closes it when stopped."""

    def __init__(
        self,
        conn: Conn,
        location: str,
        *,
        lock_check: Statement,
        on_batch: BatchHook,
        describe: Callable[[BaseException], str],
        window: float = 0.002,
        max_batch: int = 4096,
    ) -> None:
        self._conn = conn
        self._location = location
        self._lock_check = lock_check
        self._on_batch = on_batch
        self._describe = describe
        self._window = window
        self._max_batch = max(1, max_batch)
        self._queue: deque[_Unit] = deque()
        self._wake = asyncio.Event()  # something was queued (or stop was asked)
        self._stopping = False
        self.failure: JournalError | None = None
        self._transactions = 0
        self._units = 0
        self._largest = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-writer")

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._transactions, self._units, self._largest)

    @property
    def backend_pid(self) -> int:
        return self._conn.info.backend_pid

    def submit(
        self, work: Work, what: str, run_id: str | None = None, at: float = 0.0
    ) -> asyncio.Future[None]:
        """Queue ``work``; the future resolves once it is durable (or fails)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(copy_error(self.failure))
            return future
        self._queue.append(QueuedWrite(work, future, what, run_id, at))
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Finish what is queued, close the connection; returns when the task has ended."""
        self._stopping = True
        self._wake.set()
        await asyncio.shield(self._task)

    # --- the writer task ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while batch := await self._collect():
                await self._process(batch)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self.failure = self.failure or self._broken(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            # Nothing is left queued on a normal stop; never report a leftover as durable.
            leftover = self.failure or JournalError(f"the journal {self._location} is closed")
            self._settle([(u.future, leftover) for u in self._queue])
            self._queue.clear()
            with contextlib.suppress(psycopg.Error, OSError):
                await self._conn.close()

    async def _collect(self) -> list[_Unit]:
        while not self._queue:
            if self._stopping:
                return []
            self._wake.clear()
            await self._wake.wait()
        # Let the callers that are ready to write queue up too, for as long as more keep
        # coming, up to the window: on one event loop, "concurrent" callers are the ones that
        # are runnable now. A fixed wait would only add latency, since whatever arrives while
        # a batch commits forms the next batch anyway.
        deadline = asyncio.get_running_loop().time() + self._window
        seen = 0
        while seen < len(self._queue) < self._max_batch and not self._stopping:
            seen = len(self._queue)
            await asyncio.sleep(0)
            if asyncio.get_running_loop().time() >= deadline:
                break
        count = min(len(self._queue), self._max_batch)
        return [self._queue.popleft() for _ in range(count)]

    async def _process(self, batch: list[_Unit]) -> None:
        if self.failure is not None:
            self._settle([(u.future, self.failure) for u in batch])
            return
        try:
            try:
                await self._fast(batch)
                outcomes: list[Outcome] = [(u.future, None) for u in batch]
            except _Retry:
                outcomes = await self._careful(batch)
        except Exception as exc:
            self.failure = self._broken(exc)
            outcomes = [(u.future, self.failure) for u in batch]
        except BaseException as exc:  # cancelled mid-batch: the outcome is unknown
            self.failure = self._broken(exc)
            self._settle([(u.future, self.failure) for u in batch])
            raise
        self._settle(outcomes)

    async def _fast(self, batch: list[_Unit]) -> None:
        """The whole batch in one pipelined transaction; ``_Retry`` on a unit's problem."""
        steps: list[tuple[_Unit | None, Statement]] = [(None, self._lock_check)]
        async with self._conn.transaction():
            for unit in batch:
                if unit.work.bulk is None:
                    steps.extend((unit, s) for s in unit.work.statements)
                    continue
                await self._pipeline(steps)
                steps = []
                try:
                    await unit.work.bulk(self._conn)
                except _UNIT_ERRORS as exc:
                    raise _Retry from exc
            steps.extend((None, s) for s in self._on_batch(_latest(batch)))
            await self._pipeline(steps)
        self._committed(len(batch))

    async def _pipeline(self, steps: list[tuple[_Unit | None, Statement]]) -> None:
        if not steps:
            return
        checked: list[tuple[_Unit | None, Statement, psycopg.AsyncCursor[Any]]] = []
        try:
            async with self._conn.pipeline() as pipeline:
                shared = self._conn.cursor()
                for unit, statement in steps:
                    # A cursor holds one result: a statement whose row count matters gets its
                    # own, the rest share one (cursors are cheap, but not free).
                    cursor = self._conn.cursor() if statement.missing else shared
                    await cursor.execute(statement.query, statement.params or None)
                    if statement.missing:
                        checked.append((unit, statement, cursor))
                await pipeline.sync()
        except _RETRY_ERRORS as exc:
            raise _Retry from exc
        for unit, statement, cursor in checked:
            if cursor.rowcount != 1:
                if unit is None:
                    raise _LockLost(statement.missing)
                raise _Retry(statement.missing)

    async def _careful(self, batch: list[_Unit]) -> list[Outcome]:
        """The batch unit by unit, each in a savepoint: refuse the bad ones, commit the rest."""
        outcomes: list[Outcome] = []
        done: list[_Unit] = []
        async with self._conn.transaction():
            await self._execute(self._lock_check, lock=True)
            for unit in batch:
                try:
                    async with self._conn.transaction():  # a savepoint
                        await self._run_unit(unit)
                except _UNIT_ERRORS as exc:
                    outcomes.append((unit.future, self._rejected(unit, exc)))
                    continue
                outcomes.append((unit.future, None))
                done.append(unit)
            for statement in self._on_batch(_latest(done)):
                await self._execute(statement)
        # Only now, committed, do the None outcomes above mean "durable".
        if done:
            self._committed(len(done))
        return outcomes

    async def _run_unit(self, unit: _Unit) -> None:
        if unit.work.bulk is not None:
            await unit.work.bulk(self._conn)
        for statement in unit.work.statements:
            await self._execute(statement)

    async def _execute(self, statement: Statement, *, lock: bool = False) -> None:
        cursor = await self._conn.execute(statement.query, statement.params or None)
        if statement.missing and cursor.rowcount != 1:
            if lock:
                raise _LockLost(statement.missing)
            raise Rejected(statement.missing, statement.refusal)

    def _committed(self, units: int) -> None:
        self._transactions += 1
        self._units += units
        self._largest = max(self._largest, units)

    # --- outcomes ------------------------------------------------------------------------

    def _rejected(self, unit: _Unit, exc: BaseException) -> BaseException:
        if isinstance(exc, ValueError | TypeError | JournalError):
            return exc  # the caller's own mistake, or the unit's own refusal, as it is
        kind = exc.kind if isinstance(exc, Rejected) else JournalError
        error = kind(f"{unit.what} was not recorded: {self._describe(exc)}")
        error.__cause__ = exc
        return error

    def _broken(self, exc: BaseException) -> JournalError:
        if isinstance(exc, _LockLost):
            error = JournalError(
                f"the journal {self._location} lost its writer lock (the connection holding "
                "it ended), so an older fleet-reimage, which knows nothing of this run's "
                "leases, may now take it; the writes waiting at that moment were not saved. "
                "The run must stop; resume it once the server is reachable again."
            )
        else:
            error = JournalError(
                f"writing to the journal {self._location} failed ({type(exc).__name__}: "
                f"{self._describe(exc)}); the writes waiting at that moment may not have been "
                "saved. The run must stop: check the PostgreSQL server and the connection to "
                "it, then resume the run."
            )
        error.__cause__ = exc
        return error

    def _settle(self, outcomes: list[Outcome]) -> None:
        for future, error in outcomes:
            if future.done():  # the caller was cancelled; the write happened (or not) regardless
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(copy_error(error))


def _latest(units: Sequence[_Unit]) -> dict[str, float]:
    latest: dict[str, float] = {}
    for unit in units:
        if unit.run_id is not None and unit.at > latest.get(unit.run_id, float("-inf")):
            latest[unit.run_id] = unit.at
    return latest
