"""The SQL behind :class:`~fleet_reimage.journal.sqlite.SqliteJournal`: write units and reads.

Write units are plain functions of ``(connection, record)``; the group writer runs them inside
its batch transaction on the writer thread. Reads run on a worker thread. Nothing here touches
the event loop.

Target bookkeeping rules (also what the PostgreSQL backend must do):

* ``attempt_started``: target -> ``in_flight``, ``last_sent_at`` = sent_at, ``first_sent_at``
  set if unset, ``attempts`` + 1, ``reason`` and ``finished_at`` cleared.
* ``attempt_finished`` / ``target_changed``: target -> the new state with its reason;
  ``accepted_at`` set when the target *becomes* accepted (or done_unverified) from another
  state; ``finished_at`` set when the new state is terminal and cleared otherwise;
  ``attempt_finished`` sets ``last_code`` to the error code, else the HTTP status, else keeps it.
* Each batch sets its runs' ``updated_at`` to the latest time it carried.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from fleet_reimage.journal import poolops
from fleet_reimage.journal.base import (
    ATTEMPTS_QUERY,
    EVENTS_QUERY,
    EXCLUSIONS_QUERY,
    RUN_COLUMNS,
    Rejected,
    attempt_records,
    event_records,
    exclusion_records,
    refuse_duplicates,
    run_record,
    status_text,
)
from fleet_reimage.journal.model import (
    ACCEPTED_STATES,
    STATES_BY_VALUE,
    AttemptEnd,
    AttemptRecord,
    AttemptStart,
    Exclusion,
    NewRun,
    NewTarget,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetChange,
    TargetRecord,
    TargetState,
    unfinished_run,
)

_STATES = STATES_BY_VALUE
_ACCEPTED = ACCEPTED_STATES

# --- writes ------------------------------------------------------------------------------


def insert_run(
    conn: sqlite3.Connection,
    run: NewRun,
    options_json: str,
    targets: Sequence[NewTarget],
    exclusions: Sequence[Exclusion],
    unless_unfinished_of: str | None = None,
) -> int | None:
    """Insert the run; returns the first target_id when the run's ids are ``first, first + 1,
    ...`` in the order given (they are: one writer appends them in one transaction), else
    None (the caller then reads them back).

    ``unless_unfinished_of``: refuse (``UnfinishedRun``) if a run of that plan hash is not
    finished. Atomic with the insert: this runs inside the writer's ``BEGIN IMMEDIATE``, and
    only the holder of the file's writer lock writes at all."""
    refuse_duplicates(targets)
    if unless_unfinished_of is not None:
        row = conn.execute(
            "SELECT run_id, status, host, pid FROM runs WHERE plan_sha256 = ? AND status != ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (unless_unfinished_of, RunStatus.FINISHED.value),
        ).fetchone()
        if row is not None:
            raise unfinished_run(str(row[0]), str(row[1]), str(row[2]), int(row[3]))
    try:
        conn.execute(
            "INSERT INTO runs (run_id, name, action, plan_path, plan_text, plan_sha256, options,"
            " created_at, updated_at, status, host, pid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run.run_id, run.name, run.action, run.plan_path, run.plan_text, run.plan_sha256,
             options_json, run.created_at, run.created_at, RunStatus.RUNNING.value, run.host,
             run.pid),
        )  # fmt: skip
    except sqlite3.IntegrityError as exc:
        raise Rejected(f"run {run.run_id} already exists in the journal") from exc
    run_id, now, pending = run.run_id, run.created_at, TargetState.PENDING.value
    conn.executemany(
        "INSERT INTO targets (run_id, account, pool, node_id, wave, position, state, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_id, t.account, t.pool, t.node_id, t.wave, t.position, pending, now)
         for t in targets],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO exclusions (run_id, account, pool, node_id, reason) VALUES (?, ?, ?, ?, ?)",
        [(run_id, e.account, e.pool, e.node_id, e.reason) for e in exclusions],
    )
    first, last, count = conn.execute(
        "SELECT min(target_id), max(target_id), count(*) FROM targets WHERE run_id = ?", (run_id,)
    ).fetchone()
    if count != len(targets) or not targets or last - first + 1 != count:
        return None
    return int(first)


_START_TARGET_SQL = (
    "UPDATE targets SET state = 'in_flight', reason = NULL, updated_at = ?,"
    " first_sent_at = COALESCE(first_sent_at, ?), last_sent_at = ?, finished_at = NULL,"
    " attempts = attempts + 1 WHERE target_id = ? AND run_id = ?"
)
_START_ATTEMPT_SQL = (
    "INSERT INTO attempts (run_id, target_id, attempt_no, operation, client_request_id,"
    " sent_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_FINISH_ATTEMPT_SQL = (
    "UPDATE attempts SET finished_at = ?, outcome = ?, status = ?, request_id = ?,"
    " error_code = ?, error_message = ?, latency_ms = ?"
    " WHERE client_request_id = ? AND run_id = ? AND target_id = ?"
)
_MOVE_TARGET_SQL = (
    "UPDATE targets SET state = ?, reason = ?, updated_at = ?,"
    " accepted_at = CASE WHEN ? AND state NOT IN ('accepted', 'done_unverified')"
    "   THEN ? ELSE accepted_at END,"
    " finished_at = CASE WHEN ? THEN ? ELSE NULL END,"
    " last_code = COALESCE(?, last_code)"
    " WHERE target_id = ? AND run_id = ?"
)


def _move_params(
    run_id: str, target_id: int, state: TargetState, at: float, reason: str | None, code: str | None
) -> tuple[object, ...]:
    return (
        state.value,
        reason,
        at,
        state in _ACCEPTED,
        at,
        state.terminal,
        at,
        code,
        target_id,
        run_id,
    )


def _many(conn: sqlite3.Connection, sql: str, rows: list[tuple[object, ...]]) -> None:
    """executemany that insists every row touched exactly one record."""
    if conn.executemany(sql, rows).rowcount != len(rows):
        raise Rejected("a record in the batch does not match the journal")


def _start_rows(s: AttemptStart) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The target update and the attempt insert of one ``attempt_started``."""
    return (
        (s.sent_at, s.sent_at, s.sent_at, s.target_id, s.run_id),
        (s.run_id, s.target_id, s.attempt_no, s.operation, s.client_request_id, s.sent_at),
    )


def _finish_rows(e: AttemptEnd) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The attempt update and the target move of one ``attempt_finished``."""
    code = e.error_code if e.error_code is not None else status_text(e.status)
    return (
        (e.finished_at, e.outcome.value, e.status, e.request_id, e.error_code,
         e.error_message, e.latency_ms, e.client_request_id, e.run_id, e.target_id),
        _move_params(e.run_id, e.target_id, e.target_state, e.finished_at, e.reason, code),
    )  # fmt: skip


def attempt_started(conn: sqlite3.Connection, s: AttemptStart) -> None:
    target_row, attempt_row = _start_rows(s)
    _update_target(conn, _START_TARGET_SQL, target_row, s.run_id, s.target_id)
    conn.execute(_START_ATTEMPT_SQL, attempt_row)


def attempt_finished(conn: sqlite3.Connection, e: AttemptEnd) -> None:
    attempt_row, target_row = _finish_rows(e)
    if conn.execute(_FINISH_ATTEMPT_SQL, attempt_row).rowcount != 1:
        raise Rejected(
            f"no attempt {e.client_request_id} for target {e.target_id} of run {e.run_id}"
        )
    _update_target(conn, _MOVE_TARGET_SQL, target_row, e.run_id, e.target_id)


def attempts_started(conn: sqlite3.Connection, starts: list[AttemptStart]) -> None:
    """Many ``attempt_started`` at once (the group writer's fast path)."""
    rows = [_start_rows(s) for s in starts]
    _many(conn, _START_TARGET_SQL, [target for target, _ in rows])
    conn.executemany(_START_ATTEMPT_SQL, [attempt for _, attempt in rows])


def attempts_finished(conn: sqlite3.Connection, ends: list[AttemptEnd]) -> None:
    """Many ``attempt_finished`` at once (the group writer's fast path)."""
    rows = [_finish_rows(e) for e in ends]
    _many(conn, _FINISH_ATTEMPT_SQL, [attempt for attempt, _ in rows])
    _many(conn, _MOVE_TARGET_SQL, [target for _, target in rows])


def targets_changed(conn: sqlite3.Connection, changes: list[TargetChange]) -> None:
    """Many ``target_changed`` at once (the group writer's fast path)."""
    _many(
        conn,
        _MOVE_TARGET_SQL,
        [_move_params(c.run_id, c.target_id, c.state, c.at, c.reason, None) for c in changes],
    )


def target_changed(conn: sqlite3.Connection, c: TargetChange) -> None:
    _update_target(
        conn,
        _MOVE_TARGET_SQL,
        _move_params(c.run_id, c.target_id, c.state, c.at, c.reason, None),
        c.run_id,
        c.target_id,
    )


BATCHERS: dict[Any, Any] = {
    attempt_started: attempts_started,
    attempt_finished: attempts_finished,
    target_changed: targets_changed,
}


def _update_target(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], run_id: str, target_id: int
) -> None:
    if conn.execute(sql, params).rowcount != 1:
        raise Rejected(f"no target {target_id} in run {run_id}")


def insert_event(conn: sqlite3.Connection, ev: RunEvent, data_json: str) -> None:
    conn.execute(
        "INSERT INTO events (run_id, at, kind, account, pool, data) VALUES (?, ?, ?, ?, ?, ?)",
        (ev.run_id, ev.at, ev.kind, ev.account, ev.pool, data_json),
    )


def set_run_status(
    conn: sqlite3.Connection,
    run_id: str,
    status: RunStatus,
    reason: str | None,
    at: float,
    options_json: str | None,
    runner: tuple[str, int],
) -> None:
    # A run set running again (resume) is now run by this process: status shows who has it.
    running = status is RunStatus.RUNNING
    cursor = conn.execute(
        "UPDATE runs SET status = ?, reason = ?, updated_at = ?, ended_at = ?,"
        " options = COALESCE(?, options),"
        " host = CASE WHEN ? THEN ? ELSE host END, pid = CASE WHEN ? THEN ? ELSE pid END"
        " WHERE run_id = ?",
        (status.value, reason, at, None if running else at, options_json,
         running, runner[0], running, runner[1], run_id),
    )  # fmt: skip
    if cursor.rowcount != 1:
        raise Rejected(f"no run {run_id} in the journal")


def replace_plan(
    conn: sqlite3.Connection, run_id: str, plan_text: str, plan_sha256: str, at: float
) -> None:
    cursor = conn.execute(
        "UPDATE runs SET plan_text = ?, plan_sha256 = ?, updated_at = MAX(updated_at, ?)"
        " WHERE run_id = ?",
        (plan_text, plan_sha256, at, run_id),
    )
    if cursor.rowcount != 1:
        raise Rejected(f"no run {run_id} in the journal")


def touch_runs(conn: sqlite3.Connection, latest: dict[str, float]) -> None:
    """Batch hook: move each run's ``updated_at`` to the latest time its writes carried."""
    conn.executemany(
        "UPDATE runs SET updated_at = MAX(updated_at, ?) WHERE run_id = ?",
        [(at, run_id) for run_id, at in latest.items()],
    )


# --- reads -------------------------------------------------------------------------------


def read_runs(conn: sqlite3.Connection) -> list[RunRecord]:
    rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC")
    return [run_record(row) for row in rows]


def read_run(conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
    row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else run_record(row)


def read_targets(conn: sqlite3.Connection, run_id: str) -> list[TargetRecord]:
    rows = conn.execute(
        "SELECT target_id, run_id, account, pool, node_id, wave, position, state, reason,"
        " updated_at, first_sent_at, last_sent_at, accepted_at, finished_at, attempts, last_code"
        " FROM targets WHERE run_id = ? ORDER BY target_id",
        (run_id,),
    ).fetchall()
    states = _STATES
    # Positional construction straight from the row: this is the 100k-row path.
    return [
        TargetRecord(a, b, c, d, e, f, g, states[h], i, j, k, m, n, o, p, q)
        for (a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q) in rows
    ]


def read_exclusions(conn: sqlite3.Connection, run_id: str) -> list[Exclusion]:
    return exclusion_records(conn.execute(EXCLUSIONS_QUERY.format(p="?"), (run_id,)))


def read_attempts(conn: sqlite3.Connection, run_id: str) -> list[AttemptRecord]:
    return attempt_records(conn.execute(ATTEMPTS_QUERY.format(p="?"), (run_id,)))


def read_events(conn: sqlite3.Connection, run_id: str) -> list[RunEvent]:
    return event_records(conn.execute(EVENTS_QUERY.format(p="?"), (run_id,)))


def pool_op_started(conn: sqlite3.Connection, s: poolops.PoolOpStart) -> None:
    conn.execute(poolops.INSERT.format(p="?"), poolops.start_params(s))


def pool_op_finished(conn: sqlite3.Connection, e: poolops.PoolOpEnd) -> None:
    if conn.execute(poolops.FINISH.format(p="?"), poolops.finish_params(e)).rowcount != 1:
        raise Rejected(f"no pool operation {e.client_request_id} in run {e.run_id}")


def read_pool_ops(conn: sqlite3.Connection, run_id: str) -> list[poolops.PoolOpRecord]:
    return poolops.records(conn.execute(poolops.QUERY.format(p="?"), (run_id,)))
