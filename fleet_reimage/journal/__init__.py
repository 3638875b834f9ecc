"""The run journal: what was planned, sent and seen, durable before and after every request.

``open_journal`` picks the backend from the location: a ``postgresql://`` (or ``postgres://``)
URL is a PostgreSQL journal (``journal.postgres``, schema ``fleet_reimage``), anything else is a
SQLite journal file. Without a location it takes ``$FLEET_REIMAGE_JOURNAL``, then
``fleet-reimage.db``. Everything else here is the backend-neutral model (see ``model``),
re-exported for convenience. ``PostgresJournal`` is imported from ``journal.postgres`` on
first use only, so a SQLite user never pays for loading psycopg.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fleet_reimage.journal.model import (
    AttemptEnd,
    AttemptOutcome,
    AttemptRecord,
    AttemptStart,
    Exclusion,
    Journal,
    JournalBusy,
    JournalError,
    NewRun,
    NewTarget,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetChange,
    TargetRecord,
    TargetState,
    UnfinishedRun,
)
from fleet_reimage.journal.sqlite import SqliteJournal

__all__ = [
    "DEFAULT_JOURNAL_FILE",
    "JOURNAL_ENV",
    "AttemptEnd",
    "AttemptOutcome",
    "AttemptRecord",
    "AttemptStart",
    "Exclusion",
    "Journal",
    "JournalBusy",
    "JournalError",
    "NewRun",
    "NewTarget",
    "RunEvent",
    "RunRecord",
    "RunStatus",
    "SqliteJournal",
    "TargetChange",
    "TargetRecord",
    "TargetState",
    "UnfinishedRun",
    "default_location",
    "is_postgres_url",
    "open_journal",
    "shown_location",
]

JOURNAL_ENV = "FLEET_REIMAGE_JOURNAL"
DEFAULT_JOURNAL_FILE = "fleet-reimage.db"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL journal rather than a SQLite file."""
    return isinstance(location, str) and location.lower().startswith(_POSTGRES_SCHEMES)


def shown_location(location: str | Path) -> str:
    """``location`` as it may be shown (messages, commands to copy): a PostgreSQL URL without
    its password, a file path as given."""
    text = os.fspath(location)
    if not is_postgres_url(text):
        return text
    from fleet_reimage.journal.postgres_conn import redact

    try:
        return redact(text)
    except JournalError:
        return "postgresql://... (a URL that cannot be read)"


def default_location(environ: Mapping[str, str] | None = None) -> str:
    """``$FLEET_REIMAGE_JOURNAL`` when set (a file path or a PostgreSQL URL), else the file."""
    env = os.environ if environ is None else environ
    return env.get(JOURNAL_ENV) or DEFAULT_JOURNAL_FILE


async def open_journal(location: str | Path | None = None, *, readonly: bool = False) -> Journal:
    """Open the journal at ``location`` (default: :func:`default_location`).

    A missing journal is created, unless ``readonly``. A SQLite journal opened for writing is
    locked for this process until it is closed; a PostgreSQL one is shared by its writers
    (runs are claimed per run, see ``SharedRuns``). Read-only opens (``status``, ``report``)
    never lock and may run beside writers.
    """
    text = default_location() if location is None else os.fspath(location)
    if is_postgres_url(text):
        from fleet_reimage.journal.postgres import PostgresJournal

        return await PostgresJournal.open(text, readonly=readonly)
    return await SqliteJournal.open(Path(text), readonly=readonly)
