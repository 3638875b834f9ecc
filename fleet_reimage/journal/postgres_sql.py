"""The SQL behind :class:`~fleet_reimage.journal.postgres.PostgresJournal`: write units and reads.

Write units (``Work``) are built here on the caller's side and run by the group writer inside
its batch transaction; reads run on a pooled read-only connection. Table names are unqualified:
every journal connection's ``search_path`` is the journal's schema alone.

The target bookkeeping rules are the SQLite backend's (see ``sqlite_sql``):

* ``attempt_started``: target -> ``in_flight``, ``last_sent_at`` = sent_at, ``first_sent_at``
  set if unset, ``attempts`` + 1, ``reason`` and ``finished_at`` cleared.
* ``attempt_finished`` / ``target_changed``: target -> the new state with its reason;
  ``accepted_at`` set when the target *becomes* accepted (or done_unverified) from another
  state; ``finished_at`` set when the new state is terminal and cleared otherwise;
  ``attempt_finished`` sets ``last_code`` to the error code, else the HTTP status, else keeps it.
* Each batch moves its runs' ``updated_at`` to the latest time it carried, never back.

Each hot-path unit is a single statement (data-modifying CTEs), so a batch of them is one
pipelined round trip and "no such target" shows as a row count of zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

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
    LeaseLost,
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
from fleet_reimage.journal.postgres_schema import PLAN_LOCK_CLASS
from fleet_reimage.journal.postgres_writer import Conn, Statement, Work

_STATES = STATES_BY_VALUE
_ACCEPTED = ACCEPTED_STATES

# --- writes ------------------------------------------------------------------------------


def create_run(
    run: NewRun,
    options_json: str,
    targets: Sequence[NewTarget],
    exclusions: Sequence[Exclusion],
    unless_unfinished: tuple[str, int] | None = None,
) -> Work:
    """The run, its targets and exclusions (``ValueError`` now if a node is listed twice).

    ``unless_unfinished`` (the plan's sha256, its ``plan_lock_key``): first take the plan's
    transaction-level advisory lock, then refuse (``UnfinishedRun``) if a run of that plan is
    not finished. Writers creating a run of the same plan queue on the lock, and each one's
    check (READ COMMITTED: a new snapshot per statement) sees the run the one before it
    committed; the lock is released with the transaction, after the run is durable."""
    refuse_duplicates(targets)
    targets, exclusions = list(targets), list(exclusions)

    async def bulk(conn: Conn) -> None:
        if unless_unfinished is not None:
            await _refuse_unfinished(conn, *unless_unfinished)
        cursor = await conn.execute(
            "INSERT INTO runs (run_id, name, action, plan_path, plan_text, plan_sha256, options,"
            " created_at, updated_at, status, host, pid)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (run_id) DO NOTHING",
            (run.run_id, run.name, run.action, run.plan_path, run.plan_text, run.plan_sha256,
             options_json, run.created_at, run.created_at, RunStatus.RUNNING.value, run.host,
             run.pid),
        )  # fmt: skip
        if cursor.rowcount != 1:
            raise Rejected(f"run {run.run_id} already exists in the journal")
        await _copy_rows(conn, run, targets, exclusions)

    return Work(bulk=bulk)


async def _refuse_unfinished(conn: Conn, plan_sha256: str, lock_key: int) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)",
                       (PLAN_LOCK_CLASS, lock_key))  # fmt: skip
    cursor = await conn.execute(
        "SELECT run_id, status, host, pid FROM runs WHERE plan_sha256 = %s AND status <> %s"
        " ORDER BY created_at DESC, run_seq DESC LIMIT 1",
        (plan_sha256, RunStatus.FINISHED.value),
    )
    row = await cursor.fetchone()
    if row is not None:
        raise unfinished_run(str(row[0]), str(row[1]), str(row[2]), int(row[3]))


async def _copy_rows(
    conn: Conn, run: NewRun, targets: list[NewTarget], exclusions: list[Exclusion]
) -> None:
    # COPY assigns the identity values row by row in the order sent, so target ids ascend in
    # the order given, as the contract requires; it is also by far the fastest way in.
    run_id, now, pending = run.run_id, run.created_at, TargetState.PENDING.value
    cursor = conn.cursor()
    async with cursor.copy(
        "COPY targets (run_id, account, pool, node_id, wave, position, state, updated_at)"
        " FROM STDIN"
    ) as copy:
        for t in targets:
            await copy.write_row((run_id, t.account, t.pool, t.node_id, t.wave, t.position,
                                  pending, now))  # fmt: skip
    if exclusions:
        async with cursor.copy(
            "COPY exclusions (run_id, account, pool, node_id, reason) FROM STDIN"
        ) as copy:
            for e in exclusions:
                await copy.write_row((run_id, e.account, e.pool, e.node_id, e.reason))


# The fence: with a runner given (a shared run), only while that runner owns the target and
# its lease holds now, by the database's clock (never the runner's); otherwise the row count
# is zero and the unit is refused as LeaseLost. The row lock the UPDATE takes until COMMIT
# keeps a concurrent claim (FOR UPDATE SKIP LOCKED) from taking the target over between this
# check and the commit.
_ATTEMPT_STARTED = (
    "WITH t AS ("
    " UPDATE targets SET state = 'in_flight', reason = NULL, updated_at = %(at)s,"
    "  first_sent_at = COALESCE(first_sent_at, %(at)s), last_sent_at = %(at)s,"
    "  finished_at = NULL, attempts = attempts + 1"
    " WHERE target_id = %(target)s AND run_id = %(run)s"
    "  AND (%(runner)s::text IS NULL OR (owner = %(runner)s"
    "   AND lease_until >= extract(epoch FROM clock_timestamp())))"
    " RETURNING target_id)"
    " INSERT INTO attempts (run_id, target_id, attempt_no, operation, client_request_id, sent_at)"
    " SELECT %(run)s, t.target_id, %(no)s, %(op)s, %(crid)s, %(at)s FROM t"
)


def attempt_started(s: AttemptStart) -> Work:
    params = {"at": s.sent_at, "target": s.target_id, "run": s.run_id, "no": s.attempt_no,
              "op": s.operation, "crid": s.client_request_id, "runner": s.runner_id}  # fmt: skip
    if s.runner_id is None:
        missing = f"no target {s.target_id} in run {s.run_id}"
        return Work((Statement(_ATTEMPT_STARTED, params, missing),))
    missing = (
        f"target {s.target_id} of run {s.run_id} is not owned by runner {s.runner_id} "
        "(its lease expired or another runner took it over); do not send"
    )
    return Work((Statement(_ATTEMPT_STARTED, params, missing, refusal=LeaseLost),))


# The target's new values, shared by attempt_finished and target_changed.
_MOVE = (
    "state = %(state)s, reason = %(reason)s, updated_at = %(at)s,"
    " accepted_at = CASE WHEN %(accepted)s AND t.state NOT IN ('accepted', 'done_unverified')"
    "  THEN %(at)s ELSE t.accepted_at END,"
    " finished_at = %(finished)s, last_code = COALESCE(%(code)s, t.last_code)"
)

_ATTEMPT_FINISHED = (
    "WITH a AS ("
    " UPDATE attempts SET finished_at = %(at)s, outcome = %(outcome)s, status = %(status)s,"
    "  request_id = %(request_id)s, error_code = %(error_code)s,"
    "  error_message = %(error_message)s, latency_ms = %(latency)s"
    " WHERE client_request_id = %(crid)s AND run_id = %(run)s AND target_id = %(target)s"
    " RETURNING target_id)"
    f" UPDATE targets t SET {_MOVE} FROM a"
    " WHERE t.target_id = a.target_id AND t.run_id = %(run)s"
)

_TARGET_CHANGED = (
    f"UPDATE targets t SET {_MOVE} WHERE t.target_id = %(target)s AND t.run_id = %(run)s"
)


def _move(
    run_id: str, target_id: int, state: TargetState, at: float, reason: str | None, code: str | None
) -> dict[str, Any]:
    return {"run": run_id, "target": target_id, "state": state.value, "reason": reason, "at": at,
            "accepted": state in _ACCEPTED, "finished": at if state.terminal else None,
            "code": code}  # fmt: skip


def attempt_finished(e: AttemptEnd) -> Work:
    code = e.error_code if e.error_code is not None else status_text(e.status)
    params = _move(e.run_id, e.target_id, e.target_state, e.finished_at, e.reason, code)
    params.update(outcome=e.outcome.value, status=e.status, request_id=e.request_id,
                  error_code=e.error_code, error_message=e.error_message, latency=e.latency_ms,
                  crid=e.client_request_id)  # fmt: skip
    # The attempt row references its target, so zero rows means no such attempt.
    missing = f"no attempt {e.client_request_id} for target {e.target_id} of run {e.run_id}"
    return Work((Statement(_ATTEMPT_FINISHED, params, missing),))


def target_changed(c: TargetChange) -> Work:
    params = _move(c.run_id, c.target_id, c.state, c.at, c.reason, None)
    return Work((Statement(_TARGET_CHANGED, params, f"no target {c.target_id} in run {c.run_id}"),))


def insert_event(ev: RunEvent, data_json: str) -> Work:
    return Work(
        (
            Statement(
                "INSERT INTO events (run_id, at, kind, account, pool, data)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (ev.run_id, ev.at, ev.kind, ev.account, ev.pool, data_json),
            ),
        )
    )


def set_run_status(
    run_id: str,
    status: RunStatus,
    reason: str | None,
    at: float,
    options_json: str | None,
    runner: tuple[str, int],
) -> Work:
    # A run set running again (resume) is now run by this process: status shows who has it.
    running = status is RunStatus.RUNNING
    query = (
        "UPDATE runs SET status = %s, reason = %s, updated_at = %s, ended_at = %s,"
        " options = COALESCE(%s, options),"
        " host = CASE WHEN %s THEN %s ELSE host END, pid = CASE WHEN %s THEN %s ELSE pid END"
        " WHERE run_id = %s"
    )
    params = (status.value, reason, at, None if running else at, options_json,
              running, runner[0], running, runner[1], run_id)  # fmt: skip
    return Work((Statement(query, params, f"no run {run_id} in the journal"),))


def replace_plan(run_id: str, plan_text: str, plan_sha256: str, at: float) -> Work:
    query = (
        "UPDATE runs SET plan_text = %s, plan_sha256 = %s, updated_at = GREATEST(updated_at, %s)"
        " WHERE run_id = %s"
    )
    params = (plan_text, plan_sha256, at, run_id)
    return Work((Statement(query, params, f"no run {run_id} in the journal"),))


def touch_runs(latest: dict[str, float]) -> list[Statement]:
    """Batch hook: move each run's ``updated_at`` to the latest time its writes carried."""
    if not latest:
        return []
    query = (
        "UPDATE runs r SET updated_at = GREATEST(r.updated_at, v.at)"
        " FROM unnest(%s::text[], %s::float8[]) AS v (run_id, at) WHERE r.run_id = v.run_id"
    )
    return [Statement(query, (list(latest), list(latest.values())))]


# --- reads -------------------------------------------------------------------------------


async def _rows(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    # Binary results: no text parsing of the many floats and ints in a big run.
    cursor: psycopg.AsyncCursor[tuple[Any, ...]] = conn.cursor(binary=True)
    await cursor.execute(query, params or None)
    return await cursor.fetchall()


async def read_runs(conn: Conn) -> list[RunRecord]:
    query = f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, run_seq DESC"
    rows = await _rows(conn, query)
    return [run_record(row) for row in rows]


async def read_run(conn: Conn, run_id: str) -> RunRecord | None:
    rows = await _rows(conn, f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = %s", (run_id,))
    return run_record(rows[0]) if rows else None


TARGET_COLUMNS = (
    "target_id", "run_id", "account", "pool", "node_id", "wave", "position", "state", "reason",
    "updated_at", "first_sent_at", "last_sent_at", "accepted_at", "finished_at", "attempts",
    "last_code",
)  # fmt: skip


def target_records(rows: list[tuple[Any, ...]]) -> list[TargetRecord]:
    """``TargetRecord``s from rows of exactly ``TARGET_COLUMNS``."""
    states = _STATES
    # Positional construction straight from the row: this is the 100k-row path.
    return [
        TargetRecord(a, b, c, d, e, f, g, states[h], i, j, k, m, n, o, p, q)
        for (a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q) in rows
    ]


async def read_targets(conn: Conn, run_id: str) -> list[TargetRecord]:
    query = f"SELECT {', '.join(TARGET_COLUMNS)} FROM targets WHERE run_id = %s ORDER BY target_id"
    return target_records(await _rows(conn, query, (run_id,)))


async def read_exclusions(conn: Conn, run_id: str) -> list[Exclusion]:
    return exclusion_records(await _rows(conn, EXCLUSIONS_QUERY.format(p="%s"), (run_id,)))


async def read_attempts(conn: Conn, run_id: str) -> list[AttemptRecord]:
    return attempt_records(await _rows(conn, ATTEMPTS_QUERY.format(p="%s"), (run_id,)))


async def read_events(conn: Conn, run_id: str) -> list[RunEvent]:
    return event_records(await _rows(conn, EVENTS_QUERY.format(p="%s"), (run_id,)))


def pool_op_started(s: poolops.PoolOpStart) -> Work:
    return Work((Statement(poolops.INSERT.format(p="%s"), poolops.start_params(s)),))


def pool_op_finished(e: poolops.PoolOpEnd) -> Work:
    missing = f"no pool operation {e.client_request_id} in run {e.run_id}"
    return Work((Statement(poolops.FINISH.format(p="%s"), poolops.finish_params(e), missing),))


async def read_pool_ops(conn: Conn, run_id: str) -> list[poolops.PoolOpRecord]:
    return poolops.records(await _rows(conn, poolops.QUERY.format(p="%s"), (run_id,)))
