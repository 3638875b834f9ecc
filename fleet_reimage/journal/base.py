"""What the SQLite and PostgreSQL journals share: one facade, and the rules of their records.

``JournalBase`` is the part of the ``Journal`` interface that does not depend on the storage:
the journal's lifetime (``async with``, ``close`` once however often it is called), the
refusals of a closed or read-only journal, and the hot-path writes. Each write is a unit
queued to the backend's group writer with what it is (for messages), the run it belongs to
and its time (which moves the run's ``updated_at``); it returns once durable. A backend
(``sqlite.py``, ``postgres.py``) supplies its group writer, its SQL module (the same write
functions in both, see ``sqlite_sql`` and ``postgres_sql``), how a unit is bound to its
input (``_unit``), how it shuts down (``_shut``), and how it opens and reads.

The rules both backends' SQL follow are here too, once: a node listed twice is refused
(``refuse_duplicates``); an attempt's ``last_code`` is its error code, else its HTTP status
(``status_text``); runs, exclusions, attempts and events are read with the same queries and
read back into records the same way (``RUN_COLUMNS``, ``run_record``, ``*_QUERY``,
``*_records``); a unit whose input does not fit the journal fails alone (``Rejected``); an
error handed to many callers is copied for each (``copy_error``); and a journal from a newer
or an older fleet-reimage is refused in the same words (``newer_journal``, ``older_journal``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio

from fleet_reimage.journal.codec import decode_mapping, encode_mapping
from fleet_reimage.journal.model import (
    OUTCOMES_BY_VALUE,
    AttemptEnd,
    AttemptRecord,
    AttemptStart,
    Exclusion,
    JournalError,
    NewTarget,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetChange,
    WriterStats,
)
from fleet_reimage.journal.poolops import PoolOpEnd, PoolOpStart

W = TypeVar("W")  # a backend's write unit
W_contra = TypeVar("W_contra", contravariant=True)


class Rejected(Exception):
    """Raised by a write unit whose input does not fit the journal; only that unit fails.

    ``kind`` is the error its caller gets (``LeaseLost`` for a fenced write refused).
    """

    def __init__(self, message: str, kind: type[JournalError] = JournalError) -> None:
        super().__init__(message)
        self.kind = kind


def copy_error(error: BaseException) -> BaseException:
    """The error for one more caller: one exception object raised in many tasks would collect
    all their tracebacks."""
    if isinstance(error, JournalError):
        copy = type(error)(str(error))
        copy.__dict__.update(error.__dict__)  # e.g. UnfinishedRun.run_id
        copy.__cause__ = error.__cause__
        return copy
    return error


def refuse_duplicates(targets: Sequence[NewTarget]) -> None:
    """``ValueError`` when a node is listed twice in a new run."""
    seen: set[tuple[str, str, str]] = set()
    for t in targets:
        key = (t.account, t.pool, t.node_id)
        if key in seen:
            raise ValueError(f"node {t.node_id} of pool {t.pool} ({t.account}) is listed twice")
        seen.add(key)


def status_text(status: int | None) -> str | None:
    """An attempt's HTTP status as its ``last_code``, when the answer had no error code."""
    return None if status is None else str(status)


RUN_COLUMNS = (
    "run_id, name, action, plan_path, plan_text, plan_sha256, options, created_at, updated_at,"
    " ended_at, status, reason, host, pid"
)


def run_record(row: tuple[Any, ...]) -> RunRecord:
    """A ``RunRecord`` from a row of exactly ``RUN_COLUMNS``."""
    (run_id, name, action, plan_path, plan_text, plan_sha256, options, created_at, updated_at,
     ended_at, status, reason, host, pid) = row  # fmt: skip
    return RunRecord(
        run_id, name, action, plan_path, plan_text, plan_sha256, decode_mapping(options),
        created_at, updated_at, ended_at, RunStatus(status), reason, host, pid,
    )  # fmt: skip


# The reads both backends make alike; ``{p}`` is the backend's parameter marker.
EXCLUSIONS_QUERY = (
    "SELECT account, pool, node_id, reason FROM exclusions WHERE run_id = {p} ORDER BY exclusion_id"
)
ATTEMPTS_QUERY = (
    "SELECT run_id, target_id, attempt_no, operation, client_request_id, sent_at, finished_at,"
    " outcome, status, request_id, error_code, error_message, latency_ms"
    " FROM attempts WHERE run_id = {p} ORDER BY sent_at, attempt_pk"
)
EVENTS_QUERY = (
    "SELECT run_id, at, kind, account, pool, data FROM events WHERE run_id = {p}"
    " ORDER BY at, event_id"
)


def exclusion_records(rows: Iterable[Sequence[Any]]) -> list[Exclusion]:
    return [Exclusion(*row) for row in rows]


def attempt_records(rows: Iterable[Sequence[Any]]) -> list[AttemptRecord]:
    outcomes = OUTCOMES_BY_VALUE
    return [
        AttemptRecord(a, b, c, d, e, f, g, None if h is None else outcomes[h], i, j, k, m, n)
        for (a, b, c, d, e, f, g, h, i, j, k, m, n) in rows
    ]


def event_records(rows: Iterable[Sequence[Any]]) -> list[RunEvent]:
    return [
        RunEvent(run_id=r, at=at, kind=kind, account=acct, pool=pool, data=decode_mapping(data))
        for (r, at, kind, acct, pool, data) in rows
    ]


def newer_journal(where: str, version: int, known: int, written_by: str | None) -> JournalError:
    """The refusal of a journal whose schema is newer than this fleet-reimage knows."""
    return JournalError(
        f"the journal {where} was written by a newer fleet-reimage (schema {version}); upgrade "
        f"fleet-reimage to use it (it was last written by {written_by or 'an unknown version'}; "
        f"this is {tool_version()}, which knows schema {known}). The journal was left unchanged."
    )


def older_journal(where: str, version: int, known: int) -> JournalError:
    """The refusal to read a journal of an older schema (writing it would upgrade it)."""
    return JournalError(
        f"the journal {where} uses schema {version}, older than this fleet-reimage's {known}; "
        "open it for writing once (resume a run) to upgrade it, then try again"
    )


def tool_version() -> str:
    """This fleet-reimage's version, as recorded in a journal's ``meta``.

    The package's own ``__version__`` (the one ``--version`` prints), not the installed
    distribution's metadata: ``importlib.metadata`` alone adds ~17 ms to every start-up.
    """
    from fleet_reimage import __version__

    return __version__


class GroupWriting(Protocol[W_contra]):
    """A backend's group-commit writer, as the facade uses it."""

    @property
    def stats(self) -> WriterStats: ...

    def submit(
        self, work: W_contra, what: str, run_id: str | None = None, at: float = 0.0
    ) -> asyncio.Future[Any]: ...


class JournalBase(ABC, Generic[W]):
    """The storage-independent part of a journal (see the module docstring)."""

    location: str
    _sql: ModuleType  # the backend's SQL module: the write functions both backends name alike

    def __init__(self, location: str, writer: GroupWriting[W] | None) -> None:
        self.location = location
        self._writer = writer
        self._closed = False
        self._close_done: anyio.Event | None = None

    # --- lifetime ----------------------------------------------------------------------

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

    async def close(self) -> None:
        """Flush queued writes, stop the writer, release the lock. Safe to call again."""
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._closed = True
        self._close_done = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                await self._shut()
        finally:
            self._close_done.set()

    @abstractmethod
    async def _shut(self) -> None:
        """Settle everything queued, stop the writer, release the lock, close connections."""

    # --- writes ------------------------------------------------------------------------

    @abstractmethod
    def _unit(self, write: Callable[..., Any], **input: Any) -> W:
        """The write unit that runs ``write`` (a function of ``_sql``) on ``input``."""

    def _writable(self) -> GroupWriting[W]:
        if self._closed:
            raise JournalError(f"the journal {self.location} is closed")
        if self._writer is None:
            raise JournalError(f"the journal {self.location} was opened read-only")
        return self._writer

    async def _write(self, work: W, what: str, run_id: str | None, at: float) -> Any:
        """Queue ``work``; returns (its result) once it is durable."""
        return await self._writable().submit(work, what, run_id, at)

    async def attempt_started(self, start: AttemptStart) -> None:
        work = self._unit(self._sql.attempt_started, s=start)
        what = f"start of attempt {start.client_request_id}"
        await self._write(work, what, start.run_id, start.sent_at)

    async def attempt_finished(self, end: AttemptEnd) -> None:
        work = self._unit(self._sql.attempt_finished, e=end)
        what = f"end of attempt {end.client_request_id}"
        await self._write(work, what, end.run_id, end.finished_at)

    async def target_changed(self, change: TargetChange) -> None:
        work = self._unit(self._sql.target_changed, c=change)
        what = f"change of target {change.target_id} to {change.state.value}"
        await self._write(work, what, change.run_id, change.at)

    async def record_event(self, event: RunEvent) -> None:
        data_json = encode_mapping(event.data, f"event {event.kind} data")
        work = self._unit(self._sql.insert_event, ev=event, data_json=data_json)
        await self._write(work, f"event {event.kind}", event.run_id, event.at)

    async def pool_op_started(self, start: PoolOpStart) -> None:
        """A pool operation (``poolops.py``), recorded before it is sent."""
        work = self._unit(self._sql.pool_op_started, s=start)
        what = f"start of pool operation {start.client_request_id}"
        await self._write(work, what, start.run_id, start.sent_at)

    async def pool_op_finished(self, end: PoolOpEnd) -> None:
        work = self._unit(self._sql.pool_op_finished, e=end)
        what = f"end of pool operation {end.client_request_id}"
        await self._write(work, what, end.run_id, end.finished_at)

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
        work = self._unit(
            self._sql.set_run_status, run_id=run_id, status=status, reason=reason, at=at,
            options_json=options_json, runner=(socket.gethostname(), os.getpid()),
        )  # fmt: skip
        await self._write(work, f"status {status.value} of run {run_id}", run_id, at)

    async def replace_plan(self, run_id: str, plan_text: str, plan_sha256: str) -> None:
        """After the operator accepted a changed plan (--force-plan) on resume."""
        now = time.time()
        work = self._unit(self._sql.replace_plan, run_id=run_id, plan_text=plan_text,
                          plan_sha256=plan_sha256, at=now)  # fmt: skip
        await self._write(work, f"new plan of run {run_id}", run_id, now)
