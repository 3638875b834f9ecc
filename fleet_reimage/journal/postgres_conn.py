"""Connections to a PostgreSQL journal: the settings every connection gets, and safe locations.

The password reaches libpq and nothing else: it comes from the URL, ``PGPASSWORD`` or
``~/.pgpass`` as libpq finds it, and every text this package shows (``location``, messages,
``repr``) is built from the parsed connection parameters without it. Error texts from the
server or libpq do not contain the password; :func:`scrub` removes it anyway, in case a
future libpq or a proxy echoes the connection string.

Every connection gets, unless the URL or the environment says otherwise, a connect timeout and
TCP keepalives plus a TCP user timeout, so that a server that vanishes (network partition, a
failed-over host) turns into an error within about half a minute instead of a writer waiting
forever with callers blocked behind it.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fleet_reimage.journal.model import JournalError

DEFAULT_SCHEMA = "fleet_reimage"
APPLICATION_NAME = "fleet-reimage"

# Lower-case, unquoted-identifier names only: no quoting games in messages or lock keys, and
# 63 bytes is PostgreSQL's identifier limit.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# (libpq parameter, environment variable that also sets it, our default)
_DEFAULTS: tuple[tuple[str, str | None, str], ...] = (
    ("connect_timeout", "PGCONNECT_TIMEOUT", "10"),
    ("application_name", "PGAPPNAME", APPLICATION_NAME),
    ("keepalives", None, "1"),
    ("keepalives_idle", None, "10"),
    ("keepalives_interval", None, "5"),
    ("keepalives_count", None, "3"),
    ("tcp_user_timeout", None, "30000"),  # ms: unacknowledged writes fail after 30 s
)


def check_schema(schema: str) -> str:
    """``schema`` if it is a plain lower-case identifier, else ``ValueError``."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema {schema!r} is not a plain lower-case PostgreSQL identifier "
            "(letters, digits and _, at most 63, not starting with a digit)"
        )
    return schema


def parse(url: str) -> dict[str, Any]:
    """The connection parameters in ``url`` (a URL or a key=value string)."""
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # The parser's message quotes no value, but keep ours generic all the same.
        raise JournalError(
            "the journal location is not a valid PostgreSQL URL "
            "(expected postgresql://user@host:port/database)"
        ) from exc


def redact(url: str) -> str:
    """``url`` as ``postgresql://user@host:port/dbname``, never with a password.

    Parts the URL leaves out (libpq then takes them from the environment) are left out.
    """
    params = parse(url)
    user = str(params.get("user") or "")
    hosts = str(params.get("host") or params.get("hostaddr") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    netloc = ",".join(
        f"{_bracket(h)}:{p}" if p else _bracket(h) for h, p in zip(hosts, ports, strict=False)
    )
    dbname = str(params.get("dbname") or "")
    return f"postgresql://{user + '@' if user else ''}{netloc}{'/' + dbname if dbname else ''}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("/") else host


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (if any) replaced by ``***``."""
    password = str(parse(url).get("password") or "")
    return text.replace(password, "***") if password else text


def connect_options(url: str) -> dict[str, Any]:
    """Our defaults for the parameters that neither ``url`` nor the environment sets."""
    given = parse(url)
    return {
        name: value
        for name, env, value in _DEFAULTS
        if name not in given and not (env and os.environ.get(env))
    }


def describe(exc: BaseException, url: str) -> str:
    """One line for a message: the error's text (first lines joined), password scrubbed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    return scrub(text, url)


async def connect(url: str, schema: str, *, location: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection whose ``search_path`` is the journal's schema only."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **connect_options(url))
    except psycopg.Error as exc:
        raise JournalError(
            f"cannot connect to the journal {location}: {describe(exc, url)}"
        ) from exc
    try:
        await prepare(conn, schema)
    except BaseException:
        await conn.close()
        raise
    return conn


async def prepare(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Session settings every journal connection needs (also the pool's ``configure``)."""
    # Only the journal's schema: unqualified table names can never reach another schema's
    # tables of the same name (pg_catalog is always searched first, which is fine).
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    # Each statement sees what was committed before it: migration re-reads the schema after
    # taking its lock, which a database default of REPEATABLE READ would hide from it.
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)


async def prepare_writer(conn: psycopg.AsyncConnection[Any]) -> None:
    """Settings for the connections that write or hold the writer lock."""
    cursor = await conn.execute("SHOW synchronous_commit")
    row = await cursor.fetchone()
    if row is not None and row[0] == "off":
        # A commit must be on the server's disk when a write returns: a database or role
        # default of "off" would let a server crash lose writes already reported durable.
        await conn.execute("SET synchronous_commit TO on")
    # The server's side of the keepalives: a runner cut off by the network lets go of the
    # writer lock within about half a minute, not the two hours of the OS default. (Ignored on
    # a Unix socket.)
    await conn.execute("SET tcp_keepalives_idle TO 10")
    await conn.execute("SET tcp_keepalives_interval TO 5")
    await conn.execute("SET tcp_keepalives_count TO 3")
    if conn.info.server_version >= 140000:
        # The lock connection idles for the whole run; a site-wide idle timeout would end it
        # and silently hand the journal to the next writer.
        await conn.execute("SET idle_session_timeout TO 0")


async def prepare_reader(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """The pool's ``configure``: reads only, so a bug can never write through a reader."""
    await prepare(conn, schema)
    await conn.execute("SET default_transaction_read_only TO on")


def advisory_key(*parts: object) -> int:
    """An advisory lock key of the journal's (CRC-32 of the parts, NUL-separated): the plan
    lock, a gate's turn and a pool's turn all make theirs here."""
    return zlib.crc32("\0".join(map(str, parts)).encode()) & 0x7FFFFFFF


async def wait_for_advisory_lock(
    conn: psycopg.AsyncConnection[Any], lock: tuple[int, int], poll: float
) -> None:
    """Take a session advisory lock, polling every ``poll`` seconds: a blocking lock call
    could not be given up when the run stops."""
    while True:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)", lock)
        row = await cursor.fetchone()
        if row is not None and row[0]:
            return
        await anyio.sleep(poll)
