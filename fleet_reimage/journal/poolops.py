"""The pool-operations journal (schema: SQLite 2, PostgreSQL 5): ``action: replace``'s calls.

A replace changes pools, not nodes: each ``removenodes`` and ``resize`` is one row, written
with its client-request-id *before* the call (``PoolOpStart``) and given its outcome after it
(``PoolOpEnd``). A row without an outcome is in doubt: the run that resumes it lists the pool
to learn whether it took effect (did the nodes leave? did the target change?). Each pool's
first row is its ``start``: the targets T it had before anything changed, and the node ids it
had then (so a resumed run tells old nodes from the new ones).

Both backends share the SQL text here: ``{p}`` is the backend's placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

START = "start"  # the pool's T and its nodes, before the first change
REMOVE = "removenodes"
RESIZE = "resize"

ACCEPTED = "accepted"
REJECTED = "rejected"
IN_DOUBT = "in_doubt"
APPLIED = "reconciled_applied"
NOT_APPLIED = "reconciled_not_applied"
RECORDED = "recorded"  # a start row


class PoolOpStart(NamedTuple):
    run_id: str
    account: str
    pool: str
    operation: str  # start | removenodes | resize
    client_request_id: str
    node_ids: tuple[str, ...]  # removenodes: the nodes asked to leave; start: every node
    target_dedicated: int  # resize/start: the targets asked (start: T); removenodes: after it
    target_low_priority: int
    sent_at: float


class PoolOpEnd(NamedTuple):
    run_id: str
    client_request_id: str
    finished_at: float
    outcome: str  # accepted | rejected | in_doubt | reconciled_applied | ... | recorded
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class PoolOpRecord:
    op_id: int
    run_id: str
    account: str
    pool: str
    operation: str
    client_request_id: str
    node_ids: tuple[str, ...]
    target_dedicated: int
    target_low_priority: int
    sent_at: float
    finished_at: float | None
    outcome: str | None
    error_code: str | None
    error_message: str | None

    @property
    def in_doubt(self) -> bool:
        return self.outcome is None or self.outcome == IN_DOUBT


def of_pool(
    ops: Iterable[PoolOpRecord], key: tuple[str, str], operation: str
) -> list[PoolOpRecord]:
    """The ``operation`` rows of one pool (``key``: account, pool), in the order recorded."""
    return [op for op in ops if (op.account, op.pool) == key and op.operation == operation]


@runtime_checkable
class PoolTurns(Protocol):
    """A journal shared by runners (PostgreSQL): one runner at a time per pool."""

    def pool_turn(
        self, run_id: str, account: str, pool: str
    ) -> AbstractAsyncContextManager[None]: ...


INSERT = (
    "INSERT INTO pool_ops (run_id, account, pool, operation, client_request_id, node_ids,"
    " target_dedicated, target_low_priority, sent_at)"
    " VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
)
FINISH = (
    "UPDATE pool_ops SET finished_at = {p}, outcome = {p}, error_code = {p}, error_message = {p}"
    " WHERE run_id = {p} AND client_request_id = {p}"
)
QUERY = (
    "SELECT op_id, run_id, account, pool, operation, client_request_id, node_ids,"
    " target_dedicated, target_low_priority, sent_at, finished_at, outcome, error_code,"
    " error_message FROM pool_ops WHERE run_id = {p} ORDER BY op_id"
)


def start_params(s: PoolOpStart) -> tuple[object, ...]:
    return (s.run_id, s.account, s.pool, s.operation, s.client_request_id,
            json.dumps(list(s.node_ids)), s.target_dedicated, s.target_low_priority,
            s.sent_at)  # fmt: skip


def finish_params(e: PoolOpEnd) -> tuple[object, ...]:
    return (e.finished_at, e.outcome, e.error_code, e.error_message, e.run_id,
            e.client_request_id)  # fmt: skip


def records(rows: Iterable[Sequence[Any]]) -> list[PoolOpRecord]:
    out = []
    for row in rows:
        ids = json.loads(row[6]) if row[6] else []
        out.append(PoolOpRecord(int(row[0]), row[1], row[2], row[3], row[4], row[5],
                                tuple(str(i) for i in ids), int(row[7]), int(row[8]),
                                float(row[9]), row[10], row[11], row[12], row[13]))  # fmt: skip
    return out


def table_ddl(time_type: str, key: str) -> tuple[str, ...]:
    """The table and its index (``key``: the backend's auto-increment primary key)."""
    return (
        f"""CREATE TABLE pool_ops (
            op_id               {key},
            run_id              TEXT NOT NULL REFERENCES runs (run_id),
            account             TEXT NOT NULL,
            pool                TEXT NOT NULL,
            operation           TEXT NOT NULL,
            client_request_id   TEXT NOT NULL UNIQUE,
            node_ids            TEXT NOT NULL,  -- JSON list of node ids
            target_dedicated    INTEGER NOT NULL,
            target_low_priority INTEGER NOT NULL,
            sent_at             {time_type} NOT NULL,
            finished_at         {time_type},
            outcome             TEXT,
            error_code          TEXT,
            error_message       TEXT
        )""",
        "CREATE INDEX pool_ops_run ON pool_ops (run_id, op_id)",
    )
