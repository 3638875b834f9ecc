"""Schema, migrations and the checks that decide whether a file may be used as a SQLite journal.

Versioning: ``PRAGMA user_version`` is the schema version (what the code trusts) and
``PRAGMA application_id`` marks the file as ours; the ``meta`` table repeats the schema version
and records which fleet-reimage created the file and which last opened it for writing, so that
a refusal can name the newer tool. Migrations only ever go up, one version at a time, each in
one transaction with the version bump; a journal from a newer tool is refused and left as is.

Every function here is blocking and runs on a worker or writer thread, never the event loop.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass

from fleet_reimage.journal import poolops
from fleet_reimage.journal.base import newer_journal, older_journal, tool_version
from fleet_reimage.journal.model import JournalError

SCHEMA_VERSION = 2
APPLICATION_ID = 0x46524A4C  # "FRJL": fleet-reimage journal
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100

# What to tell the operator when the file cannot be used. A fresh journal forgets which nodes
# were already done, so restoring comes first.
RESTORE_ADVICE = (
    "Restore it from a backup if you have one; otherwise start a new journal with "
    "--journal NEW_PATH (a new journal does not know which nodes this one had already done). "
    "The file was left unchanged."
)

_V1: tuple[str, ...] = (
    """CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        action      TEXT NOT NULL,
        plan_path   TEXT NOT NULL,
        plan_text   TEXT NOT NULL,
        plan_sha256 TEXT NOT NULL,
        options     TEXT NOT NULL,  -- JSON object, checked free of secrets
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        ended_at    REAL,
        status      TEXT NOT NULL,
        reason      TEXT,
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL
    )""",
    "CREATE INDEX runs_created ON runs (created_at)",
    """CREATE TABLE targets (
        target_id     INTEGER PRIMARY KEY,
        run_id        TEXT NOT NULL REFERENCES runs (run_id),
        account       TEXT NOT NULL,
        pool          TEXT NOT NULL,
        node_id       TEXT NOT NULL,
        wave          INTEGER NOT NULL,
        position      INTEGER NOT NULL,
        state         TEXT NOT NULL,
        reason        TEXT,
        updated_at    REAL NOT NULL,
        first_sent_at REAL,
        last_sent_at  REAL,
        accepted_at   REAL,
        finished_at   REAL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        last_code     TEXT,
        UNIQUE (run_id, account, pool, node_id)
    )""",
    # (run_id) keyed entries are ordered by rowid = target_id, so targets(run_id) needs no sort.
    "CREATE INDEX targets_run ON targets (run_id)",
    """CREATE TABLE attempts (
        attempt_pk        INTEGER PRIMARY KEY,
        run_id            TEXT NOT NULL REFERENCES runs (run_id),
        target_id         INTEGER NOT NULL REFERENCES targets (target_id),
        attempt_no        INTEGER NOT NULL,
        operation         TEXT NOT NULL,
        client_request_id TEXT NOT NULL UNIQUE,
        sent_at           REAL NOT NULL,
        finished_at       REAL,
        outcome           TEXT,
        status            INTEGER,
        request_id        TEXT,
        error_code        TEXT,
        error_message     TEXT,
        latency_ms        REAL
    )""",
    "CREATE INDEX attempts_run_sent ON attempts (run_id, sent_at)",
    "CREATE INDEX attempts_target ON attempts (target_id, attempt_no)",
    """CREATE TABLE exclusions (
        exclusion_id INTEGER PRIMARY KEY,
        run_id       TEXT NOT NULL REFERENCES runs (run_id),
        account      TEXT NOT NULL,
        pool         TEXT NOT NULL,
        node_id      TEXT,
        reason       TEXT NOT NULL
    )""",
    "CREATE INDEX exclusions_run ON exclusions (run_id)",
    """CREATE TABLE events (
        event_id INTEGER PRIMARY KEY,
        run_id   TEXT NOT NULL REFERENCES runs (run_id),
        at       REAL NOT NULL,
        kind     TEXT NOT NULL,
        account  TEXT,
        pool     TEXT,
        data     TEXT NOT NULL  -- JSON object
    )""",
    "CREATE INDEX events_run_at ON events (run_id, at)",
)

# Schema 2: the pool-operations journal of ``action: replace`` (``poolops.py``).
_V2: tuple[str, ...] = poolops.table_ddl("REAL", "INTEGER PRIMARY KEY")

# MIGRATIONS[n] takes a journal from schema n - 1 to schema n.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2}


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    user_version: int
    application_id: int
    table_count: int
    meta: dict[str, str]


def check_header(header: bytes, location: str) -> None:
    """Refuse, without opening it with SQLite, a file that cannot be a SQLite database.

    ``header``: the file's first bytes (up to ``HEADER_SIZE``). An empty file passes: it is
    what :meth:`SqliteJournal.open` creates before SQLite runs.
    """
    if not header:
        return
    if not header.startswith(SQLITE_MAGIC):
        raise JournalError(
            f"{location} is not a fleet-reimage journal (it is not a SQLite database). "
            + RESTORE_ADVICE
        )
    if len(header) < HEADER_SIZE:
        raise JournalError(f"the journal {location} is truncated. {RESTORE_ADVICE}")


def damaged(location: str, exc: sqlite3.Error) -> JournalError:
    """The error for a journal SQLite cannot read."""
    return JournalError(f"the journal {location} is damaged ({exc}). {RESTORE_ADVICE}")


def quick_check(conn: sqlite3.Connection, location: str) -> None:
    """Run ``PRAGMA quick_check`` and refuse a journal that fails it."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise damaged(location, exc) from exc
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    if problems:
        detail = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise JournalError(f"the journal {location} is damaged ({detail}). {RESTORE_ADVICE}")


def inspect(conn: sqlite3.Connection, location: str) -> SchemaInfo:
    """Read the version markers (no writes)."""
    try:
        user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            str(row[0])
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        meta: dict[str, str] = {}
        if "meta" in tables:
            meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise damaged(location, exc) from exc
    return SchemaInfo(user_version, application_id, len(tables), meta)


def check_usable(info: SchemaInfo, location: str, *, readonly: bool) -> bool:
    """Raise ``JournalError`` unless this code can use the journal; True when it must migrate."""
    fresh = info.user_version == 0 and info.application_id == 0 and info.table_count == 0
    if fresh:
        if readonly:
            raise JournalError(
                f"{location} is an empty journal (no run was ever written to it); nothing to show"
            )
        return True
    if info.application_id != APPLICATION_ID:
        raise JournalError(
            f"{location} is a SQLite database but not a fleet-reimage journal. "
            "Choose another file with --journal; this one was left unchanged."
        )
    # Either marker from the future refuses: a tool that records its schema in the meta table
    # but not (yet) in user_version must not have its journal trusted and resumed by us.
    recorded = info.meta.get("schema_version", "")
    meta_version = int(recorded) if recorded.isdigit() else 0
    newest = max(info.user_version, meta_version)
    if newest > SCHEMA_VERSION:
        raise newer_journal(location, newest, SCHEMA_VERSION, info.meta.get("tool_version"))
    if info.user_version < 1:
        raise JournalError(f"the journal {location} has no schema version. {RESTORE_ADVICE}")
    if info.user_version < SCHEMA_VERSION:
        if readonly:
            raise older_journal(location, info.user_version, SCHEMA_VERSION)
        return True
    return False


def migrate(conn: sqlite3.Connection, info: SchemaInfo) -> None:
    """Bring the journal up to ``SCHEMA_VERSION`` and record who wrote it (writer only).

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step is its own
    explicit transaction, so a crash leaves the journal at a whole version.
    """
    version = tool_version()
    for target in range(info.user_version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target:d}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            _put_meta(conn, "schema_version", str(target))
            _put_meta(conn, "tool_version", version)
            if target == 1:
                _put_meta(conn, "created_by", version)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    if info.meta.get("tool_version", version) != version:
        conn.execute("BEGIN IMMEDIATE")
        _put_meta(conn, "tool_version", version)
        conn.execute("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; some errors (full, I/O) already rolled it back."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _put_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
