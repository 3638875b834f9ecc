"""Group commit: one thread, one connection, one durable transaction per batch of writes.

Callers on the event loop :meth:`GroupWriter.submit` a unit of work (a function of the
connection) and await the returned future. Units submitted within ``window`` seconds of the
first are handed to the writer thread together, in one queue operation (waking a thread is a
GIL hand-off: once per window, not once per write). The thread takes what is queued (up to
``max_batch`` units), runs it all in one ``BEGIN IMMEDIATE ... COMMIT`` and only after the
commit (``synchronous=FULL``: on disk) resolves every future of the batch with a single
``call_soon_threadsafe``. So a caller
learns "done" only for what is durable, and fsyncs are shared by everything in flight.

Failures:

* A unit that is wrong on its own (constraint violation, unknown target, bad parameter) is
  *rejected*: the transaction is rolled back and re-run without it, so one bad call cannot
  sink its batch-mates; its caller gets ``JournalError`` (or the ``JournalError`` the unit
  raised itself to refuse, such as ``UnfinishedRun``).
* Anything else (disk full, I/O error, damaged file) fails the whole batch and *poisons* the
  writer: every later write fails at once with ``JournalError``, because after such an error
  nothing more may be reported as durable. The run must stop.

Units run in submission order, which is the order callers reached ``submit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from fleet_reimage.journal.base import Rejected, copy_error
from fleet_reimage.journal.model import JournalError, QueuedWrite, WriterStats
from fleet_reimage.journal.sqlite_schema import rollback

Work = Callable[[sqlite3.Connection], Any]
# A unit's function -> the same work for many records at once (executemany). It raises
# ``Rejected`` when a record does not fit, and the group is then re-run unit by unit.
Batchers = dict[Callable[..., Any], Callable[[sqlite3.Connection, list[Any]], None]]
# Called inside each batch's transaction, just before COMMIT, with {run_id: latest time}.
BatchHook = Callable[[sqlite3.Connection, dict[str, float]], None]

_STOP: Final = object()
# Errors that say "this unit is wrong", not "the journal is broken".
_UNIT_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


_Unit = QueuedWrite[Work]


class _UnitFailed(Exception):
    def __init__(self, unit: _Unit, error: BaseException) -> None:
        super().__init__(str(error))
        self.unit = unit
        self.error = error


Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class GroupWriter:
    """Owns ``conn`` from construction on; closes it when stopped."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        location: str,
        *,
        on_batch: BatchHook,
        window: float = 0.002,
        max_batch: int = 4096,
        batchers: Batchers | None = None,
    ) -> None:
        self._conn = conn
        self._batchers = batchers or {}
        self._loop = loop
        self._location = location
        self._on_batch = on_batch
        self._window = window
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[list[_Unit] | object] = queue.SimpleQueue()
        self._pending: list[_Unit] = []  # submitted during this loop iteration (loop thread)
        self.failure: JournalError | None = None
        self._transactions = 0
        self._units = 0
        self._largest = 0
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._transactions, self._units, self._largest)

    def submit(
        self, work: Work, what: str, run_id: str | None = None, at: float = 0.0
    ) -> asyncio.Future[Any]:
        """Queue ``work`` (call on the loop thread); the future resolves once it is durable."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.failure is not None:
            future.set_exception(copy_error(self.failure))
            return future
        pending = self._pending
        # The bare class: calling the subscripted alias costs ~1 µs more per write.
        pending.append(QueuedWrite(work, future, what, run_id, at))
        if len(pending) == 1:  # the first of a window: hand them all over when it ends
            if self._window > 0:
                self._loop.call_later(self._window, self._hand_over)
            else:
                self._loop.call_soon(self._hand_over)
        return future

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)

    def stop(self) -> None:
        """Ask the thread to finish what is queued, close the connection and exit."""
        self._hand_over()
        self._queue.put(_STOP)

    def join(self) -> None:
        """Wait for the thread to exit (blocking: call from a worker thread)."""
        self._thread.join()

    # --- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = self._collect()
                if batch:
                    self._process(batch)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()  # the last connection checkpoints and removes the WAL

    def _collect(self) -> tuple[list[_Unit], bool]:
        first = self._queue.get()
        if not isinstance(first, list):
            return [], True
        batch: list[_Unit] = first
        while len(batch) < self._max_batch:  # and whatever queued up during the last commit
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, list):
                return batch, True
            batch.extend(item)
        return batch, False

    def _process(self, batch: list[_Unit]) -> None:
        outcomes: list[Outcome] = []
        try:
            self._commit_batch(batch, outcomes)
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            rollback(self._conn)
            self.failure = self.failure or self._broken(exc)
            done = {id(future) for future, _, _ in outcomes}
            outcomes.extend(
                (u.future, None, self.failure) for u in batch if id(u.future) not in done
            )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._settle(outcomes)

    def _commit_batch(self, batch: list[_Unit], outcomes: list[Outcome]) -> None:
        if self.failure is not None:
            outcomes.extend((u.future, None, self.failure) for u in batch)
            return
        pending = batch
        while pending:
            try:
                results = self._transaction(pending)
            except _UnitFailed as failed:
                rollback(self._conn)
                outcomes.append((failed.unit.future, None, self._rejected(failed)))
                pending = [u for u in pending if u is not failed.unit]
                continue
            except sqlite3.Error as exc:
                rollback(self._conn)
                self.failure = self._broken(exc)
                outcomes.extend((u.future, None, self.failure) for u in pending)
                return
            outcomes.extend((u.future, r, None) for u, r in zip(pending, results, strict=True))
            self._units += len(pending)
            self._largest = max(self._largest, len(pending))
            return

    def _transaction(self, units: Sequence[_Unit]) -> list[Any]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        results: list[Any] = []
        latest: dict[str, float] = {}
        start = 0
        while start < len(units):
            end = self._group_end(units, start)
            group = units[start:end]
            if len(group) < 2 or not self._run_batched(group):
                results.extend(self._run_one(unit) for unit in group)
            else:
                results.extend([None] * len(group))
            start = end
        for unit in units:
            if unit.run_id is not None and unit.at > latest.get(unit.run_id, float("-inf")):
                latest[unit.run_id] = unit.at
        if latest:
            self._on_batch(conn, latest)
        conn.execute("COMMIT")
        self._transactions += 1
        return results

    def _group_end(self, units: Sequence[_Unit], start: int) -> int:
        """End of the run of consecutive units doing the same batchable work."""
        func = getattr(units[start].work, "func", None)
        if func not in self._batchers:
            return start + 1
        end = start + 1
        while end < len(units) and getattr(units[end].work, "func", None) is func:
            end += 1
        return end

    def _run_batched(self, group: Sequence[_Unit]) -> bool:
        """Run a same-work group with executemany; False (rolled back) if a unit misfits."""
        first = group[0].work
        batch = self._batchers[first.func]  # type: ignore[attr-defined]
        records = [next(iter(u.work.keywords.values())) for u in group]  # type: ignore[attr-defined]
        self._conn.execute("SAVEPOINT batched")
        try:
            batch(self._conn, records)
        except (Rejected, *_UNIT_ERRORS):
            self._conn.execute("ROLLBACK TO batched")
            self._conn.execute("RELEASE batched")
            return False
        self._conn.execute("RELEASE batched")
        return True

    def _run_one(self, unit: _Unit) -> Any:
        try:
            return unit.work(self._conn)
        except _UNIT_ERRORS as exc:
            raise _UnitFailed(unit, exc) from exc
        except sqlite3.Error:
            raise  # the journal, not the unit, is in trouble
        except Exception as exc:
            raise _UnitFailed(unit, exc) from exc

    def _rejected(self, failed: _UnitFailed) -> BaseException:
        if isinstance(failed.error, ValueError | TypeError | JournalError):
            # The caller's own mistake, reported as Python reports it; or a refusal the unit
            # raised itself (e.g. UnfinishedRun), handed over as it is.
            return failed.error
        error = JournalError(f"{failed.unit.what} was not recorded: {failed.error}")
        error.__cause__ = failed.error
        return error

    def _broken(self, exc: BaseException) -> JournalError:
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        error = JournalError(
            f"writing to the journal {self._location} failed ({name}: {exc}); the writes "
            "waiting at that moment were not saved. The run must stop: free disk space or "
            "fix the storage, then resume it."
        )
        error.__cause__ = exc
        return error

    def _settle(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(_resolve, outcomes)


def _resolve(outcomes: list[Outcome]) -> None:
    """On the loop thread: hand each caller its result or error (once per batch)."""
    for future, result, error in outcomes:
        if future.done():  # the caller was cancelled; the write happened (or not) regardless
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(copy_error(error))
