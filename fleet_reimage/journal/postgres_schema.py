"""Schema, migrations and the checks that decide whether a PostgreSQL schema may be a journal.

The journal's tables live in one schema (``fleet_reimage`` unless told otherwise), so that it
can share a database the team already uses. Versioning follows the SQLite journal: the
``meta`` table holds ``schema_version`` (what the code trusts), ``created_by`` and
``tool_version`` (which fleet-reimage last opened it for writing, so that a refusal can name
the newer tool). Migrations only ever go up; a journal from a newer tool is refused and left
exactly as it is; nothing is ever dropped or recreated.

Migration runs in one transaction under a transaction-level advisory lock, and re-reads the
schema's state once it holds that lock: two processes opening the same fresh database at once
serialise there, and the second finds the work done. PostgreSQL's DDL is transactional, so a
crash leaves the journal at a whole version.

Schema 2 adds what several runners sharing one run need (``postgres_shared``): a target's
``owner`` and ``lease_until``, the ``runners``, ``run_pools`` and ``run_accounts`` tables, and
partial indexes for the claim queries. Schema 3 gives each pool's row the rollout policy's
memory of the pool. Schema 4 gives it the node ids of its targets that the latest health poll
saw not ready, so that a claim can count the run's failed targets still down. An older journal
migrates up in place, data kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from fleet_reimage.journal import poolops
from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal.base import newer_journal, older_journal, tool_version
from fleet_reimage.journal.model import JournalError

SCHEMA_VERSION = 5

# Advisory lock keys are (class, key) pairs of int4. The classes spell "FRJL" / "FRJM" / "FRJR"
# / "FRJP"; the key is derived from the schema name (and the run for RUN_LOCK_CLASS, the plan's
# hash for PLAN_LOCK_CLASS), since advisory locks are per database, not per schema.
WRITER_LOCK_CLASS = 0x46524A4C
MIGRATION_LOCK_CLASS = 0x46524A4D
RUN_LOCK_CLASS = 0x46524A52
PLAN_LOCK_CLASS = 0x46524A50

_TIME = "double precision"  # UTC epoch seconds, as floats: round-trips exactly

_V1: tuple[str, ...] = (
    """CREATE TABLE meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    )""",
    # Who holds the writer lock, so that a refused writer can name it (see postgres_lock).
    f"""CREATE TABLE writer (
        id          integer PRIMARY KEY CHECK (id = 1),
        owner       text NOT NULL,
        backend_pid integer NOT NULL,
        since       {_TIME} NOT NULL
    )""",
    f"""CREATE TABLE runs (
        run_seq     bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- creation order, for ties
        run_id      text PRIMARY KEY,
        name        text NOT NULL,
        action      text NOT NULL,
        plan_path   text NOT NULL,
        plan_text   text NOT NULL,
        plan_sha256 text NOT NULL,
        options     text NOT NULL,  -- JSON text (codec), not jsonb: stored exactly as encoded
        created_at  {_TIME} NOT NULL,
        updated_at  {_TIME} NOT NULL,
        ended_at    {_TIME},
        status      text NOT NULL,
        reason      text,
        host        text NOT NULL,
        pid         bigint NOT NULL
    )""",
    "CREATE INDEX runs_created ON runs (created_at DESC, run_seq DESC)",
    f"""CREATE TABLE targets (
        target_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id        text NOT NULL REFERENCES runs (run_id),
        account       text NOT NULL,
        pool          text NOT NULL,
        node_id       text NOT NULL,
        wave          bigint NOT NULL,
        position      bigint NOT NULL,
        state         text NOT NULL,
        reason        text,
        updated_at    {_TIME} NOT NULL,
        first_sent_at {_TIME},
        last_sent_at  {_TIME},
        accepted_at   {_TIME},
        finished_at   {_TIME},
        attempts      bigint NOT NULL DEFAULT 0,
        last_code     text,
        UNIQUE (run_id, account, pool, node_id)
    )""",
    "CREATE INDEX targets_run ON targets (run_id, target_id)",
    f"""CREATE TABLE attempts (
        attempt_pk        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id            text NOT NULL REFERENCES runs (run_id),
        target_id         bigint NOT NULL REFERENCES targets (target_id),
        attempt_no        bigint NOT NULL,
        operation         text NOT NULL,
        client_request_id text NOT NULL UNIQUE,
        sent_at           {_TIME} NOT NULL,
        finished_at       {_TIME},
        outcome           text,
        status            integer,
        request_id        text,
        error_code        text,
        error_message     text,
        latency_ms        double precision
    )""",
    "CREATE INDEX attempts_run_sent ON attempts (run_id, sent_at, attempt_pk)",
    "CREATE INDEX attempts_target ON attempts (target_id, attempt_no)",
    """CREATE TABLE exclusions (
        exclusion_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id       text NOT NULL REFERENCES runs (run_id),
        account      text NOT NULL,
        pool         text NOT NULL,
        node_id      text,
        reason       text NOT NULL
    )""",
    "CREATE INDEX exclusions_run ON exclusions (run_id, exclusion_id)",
    f"""CREATE TABLE events (
        event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id   text NOT NULL REFERENCES runs (run_id),
        at       {_TIME} NOT NULL,
        kind     text NOT NULL,
        account  text,
        pool     text,
        data     text NOT NULL  -- JSON text (codec)
    )""",
    "CREATE INDEX events_run_at ON events (run_id, at, event_id)",
)

# The states a target can still leave: the claim queries' partial indexes cover only these.
OPEN = "state IN ('pending', 'in_flight', 'accepted')"
# The targets that take room from max_unavailable, or may (a pending one while its claim's
# lease holds), and those a takeover looks at: few, so their own small index. The claim
# queries repeat this text exactly, so the planner can match them to the partial index.
HELD = "(state IN ('in_flight', 'accepted') OR (state = 'pending' AND owner IS NOT NULL))"

# Several runners sharing one run (see ``postgres_shared``). Only nullable columns and new
# tables: adding them is instant on a big journal, and a version-1 writer's statements still
# fit (it is refused anyway, see ``check_usable``).
_V2: tuple[str, ...] = (
    # owner: the runner that claimed the target (kept once terminal, for the report);
    # lease_until: until when that claim holds without a heartbeat.
    f"ALTER TABLE targets ADD COLUMN owner text, ADD COLUMN lease_until {_TIME}",
    f"""CREATE TABLE runners (
        run_id       text NOT NULL REFERENCES runs (run_id),
        runner_id    text NOT NULL,
        host         text NOT NULL,
        pid          bigint NOT NULL,
        joined_at    {_TIME} NOT NULL,
        heartbeat_at {_TIME} NOT NULL,
        lease_until  {_TIME} NOT NULL,
        PRIMARY KEY (run_id, runner_id)
    )""",
    # One row per pool of a shared run: each claim locks it, which serialises the pool's
    # limit decisions across runners. (wave/wave_after: schema 2's cache of when the lower
    # waves ended; schema 3 keeps the policy's progress here instead, see _V3.)
    f"""CREATE TABLE run_pools (
        run_id     text NOT NULL REFERENCES runs (run_id),
        account    text NOT NULL,
        pool       text NOT NULL,
        baseline   bigint NOT NULL DEFAULT 0,
        wave       bigint,
        wave_after {_TIME},
        PRIMARY KEY (run_id, account, pool)
    )""",
    f"""CREATE TABLE run_accounts (
        run_id       text NOT NULL REFERENCES runs (run_id),
        account      text NOT NULL,
        paused_until {_TIME} NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, account)
    )""",
    # claim: the pool's current wave (its first entry) and the next pending targets of a wave
    # in dispatch order (pending ones are the bulk of the open ones).
    f"CREATE INDEX targets_open ON targets (run_id, account, pool, wave, position) WHERE {OPEN}",
    # claim: the pool's active targets and takeovers, without reading the pool's other rows.
    f"CREATE INDEX targets_held ON targets (run_id, account, pool) WHERE {HELD}",
    # heartbeat and leave: a runner's targets that are not terminal.
    f"CREATE INDEX targets_owner ON targets (run_id, owner) WHERE owner IS NOT NULL AND {OPEN}",
    # claim: the run's failures, for the failure budget, without reading every target.
    "CREATE INDEX targets_failed ON targets (run_id) WHERE state = 'failed'",
)

# Schema 3: each pool's row keeps the rollout policy's memory of the pool (``PoolProgress``,
# see ``shared``): its wave (the column of schema 2), when that wave opens (on the database's
# clock), whether a checkpoint holds it, and whether it finished. Schema 2's ``wave_after``
# (a pause anchor read from the runners' clocks) is no longer read or written.
_V3: tuple[str, ...] = (
    f"ALTER TABLE run_pools ADD COLUMN opens_at {_TIME},"
    " ADD COLUMN held boolean NOT NULL DEFAULT false,"
    " ADD COLUMN finished boolean NOT NULL DEFAULT false",
)

# Schema 4: the node ids of the pool's targets that the latest health poll (of any runner) saw
# not ready. NULL until a poll records them: every target that failed after the action then
# counts as down (see ``postgres_shared_claim``, ``failed_down``).
_V4: tuple[str, ...] = ("ALTER TABLE run_pools ADD COLUMN down_targets text[]",)

# Schema 5: the pool-operations journal of ``action: replace`` (``poolops.py``).
_V5: tuple[str, ...] = poolops.table_ddl(_TIME, "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")

# MIGRATIONS[n] takes a journal from schema n - 1 to schema n.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}


def lock_key(schema: str) -> int:
    """The advisory lock key for ``schema``: stable across processes and versions (CRC-32)."""
    return pgconn.advisory_key(schema)  # non-negative: pg_locks shows it as oid


def run_lock_key(schema: str, run_id: str) -> int:
    """The advisory lock key for one run of the journal in ``schema`` (registrations)."""
    return pgconn.advisory_key(schema, run_id)


def plan_lock_key(schema: str, plan_sha256: str) -> int:
    """The advisory lock key for creating a run of one plan in ``schema`` (one at a time)."""
    return pgconn.advisory_key(schema, "plan", plan_sha256)


@dataclass(frozen=True, slots=True)
class SchemaState:
    exists: bool
    tables: frozenset[str]
    meta: dict[str, str]

    @property
    def version(self) -> int | None:
        text = self.meta.get("schema_version")
        return int(text) if text is not None and text.isdigit() else None


async def inspect(conn: psycopg.AsyncConnection[Any], schema: str) -> SchemaState:
    """What is in ``schema`` now (no writes)."""
    cursor = await conn.execute(
        "SELECT c.relname FROM pg_namespace n"
        " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
        " WHERE n.nspname = %s",
        (schema,),
    )
    rows = await cursor.fetchall()
    tables = frozenset(str(name) for (name,) in rows if name is not None)
    meta: dict[str, str] = {}
    if "meta" in tables:
        query = sql.SQL("SELECT key, value FROM {}.meta").format(sql.Identifier(schema))
        cursor = await conn.execute(query)
        meta = {str(k): str(v) for k, v in await cursor.fetchall()}
    return SchemaState(bool(rows), tables, meta)


def check_usable(state: SchemaState, location: str, schema: str, *, readonly: bool) -> bool:
    """Raise ``JournalError`` unless this code can use the journal; True when it must migrate."""
    where = f"{location} (schema {schema})"
    if not state.tables:
        if readonly:
            raise JournalError(f"there is no journal at {where}; nothing to show")
        return True
    version = state.version
    if version is None:
        raise JournalError(
            f"schema {schema} of {location} holds tables that are not a fleet-reimage journal; "
            "choose another database or schema for the journal. Nothing was changed."
        )
    if version > SCHEMA_VERSION:
        raise newer_journal(where, version, SCHEMA_VERSION, state.meta.get("tool_version"))
    if version < SCHEMA_VERSION:
        if readonly:
            raise older_journal(where, version, SCHEMA_VERSION)
        return True
    return False


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str, location: str) -> None:
    """Create or upgrade the journal in ``schema`` (writers only), safe against a concurrent one.

    ``conn`` is an autocommit connection; the work is one transaction.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s::int4, %s::int4)",
            (MIGRATION_LOCK_CLASS, lock_key(schema)),
        )
        # Under the lock, so this includes whatever a rival migrator has committed.
        state = await inspect(conn, schema)
        ident = sql.Identifier(schema)
        if not state.exists:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS would still demand the CREATE
            # privilege on the database, which a DBA-made schema spares the journal's user.
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        # The connection's search_path already names the schema; saying it again here keeps
        # CREATE TABLE from ever landing anywhere else, whatever the session was told since.
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        if not check_usable(state, location, schema, readonly=False):
            if state.meta.get("tool_version") != tool_version():
                await _put_meta(conn, schema, "tool_version", tool_version())
            return
        for target in range((state.version or 0) + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[target]:
                await conn.execute(statement)
            await _put_meta(conn, schema, "schema_version", str(target))
            if target == 1:
                await _put_meta(conn, schema, "created_by", tool_version())
        await _put_meta(conn, schema, "tool_version", tool_version())


async def _put_meta(conn: psycopg.AsyncConnection[Any], schema: str, key: str, value: str) -> None:
    query = sql.SQL(
        "INSERT INTO {}.meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    ).format(sql.Identifier(schema))
    await conn.execute(query, (key, value))
