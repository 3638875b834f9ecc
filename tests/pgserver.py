"""A PostgreSQL server for the journal tests: found, or started for the session (no tests here).

Where the server comes from, in this order:

1. ``$FLEET_REIMAGE_TEST_PG``: that URL, as is (it must work; nothing else is tried). The value
   ``start`` skips straight to 3 (handy to test the throwaway server, or for a hermetic run).
2. A server answering on 127.0.0.1:5432 with trust auth and a database ``test``
   (``postgresql://postgres@127.0.0.1:5432/test``), as on the dev machine and in CI.
3. A throwaway server started from the installed binaries (``initdb``, ``pg_ctl`` on PATH or in
   ``/usr/lib/postgresql/*/bin``) in a temporary directory on a free port, trust auth, stopped
   and deleted at the end of the session. As root, initdb refuses to run, so it runs as the
   ``postgres`` user (or ``nobody``) through ``runuser``.

When none works the tests are skipped with the reason, except under ``CI=true``, where they
fail: CI must never silently skip them.

Each test gets a fresh schema (``fr_test_<random>``) of that server's database, dropped after
the test, so runs never collide, even two at once on one server. Test modules define their own
fixtures (two lines each, see :func:`session_server`, :func:`schema_for_test`): fixtures are
not shared through conftest here. Journal-level helpers are in ``test_journal_pg_support``.

Blocking helpers (psycopg's synchronous API): call them from sync fixtures or via a thread.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

ENV_URL = "FLEET_REIMAGE_TEST_PG"
START = "start"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
PROBE_TIMEOUT_S = 2
_START_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class PgServer:
    url: str  # a superuser (or at least schema-creating) URL to the database the tests use
    origin: str  # where it came from, for messages


class Throwaway:
    """A server in a temporary directory; :meth:`stop` (idempotent) stops and deletes it."""

    def __init__(self, bindir: Path, root: Path, user: str | None, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.user = user  # OS user the server runs as (None: this process's user)
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._stopped = False

    @classmethod
    def start(cls, bindir: Path) -> Throwaway:
        user = _server_user()
        root = Path(tempfile.mkdtemp(prefix="fr-pg-"))
        server = cls(bindir, root, user, _free_port())
        try:
            server._init()
            server._run("pg_ctl", "-D", str(server.data), "-l", str(root / "log"), "-w",
                        "-t", str(_START_TIMEOUT_S), "start")  # fmt: skip
        except BaseException:
            server.stop()
            raise
        return server

    def _init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip
        # TCP on localhost only and no Unix socket: nothing to clash with a system server.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nmax_connections = 100\n"
            )

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_START_TIMEOUT_S, check=False,
            cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()[-1500:]} {tail}"
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _server_user() -> str | None:
    """The OS user to run initdb/postgres as: ourselves unless we are root."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user
    raise RuntimeError("running as root and there is no postgres or nobody user to run initdb")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: PATH first, then the newest Debian-style install."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        # Debian's PATH entries are symlinks into the versioned bin dir; postgres lives there.
        return Path(initdb).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    return None


def probe(url: str, timeout: int = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` accepts a connection, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


def discover(environ: Mapping[str, str]) -> tuple[PgServer | None, Throwaway | None, str]:
    """Find or start a server: (server, the throwaway to stop, or None; how or why not)."""
    wanted = environ.get(ENV_URL, "").strip()
    if wanted and wanted != START:
        problem = probe(wanted)
        if problem is not None:
            shown = redact(wanted)
            return None, None, f"${ENV_URL} ({shown}) does not answer: {problem}"
        return PgServer(wanted, f"${ENV_URL}"), None, f"${ENV_URL}"
    if not wanted:
        problem = probe(LOCAL_URL)
        if problem is None:
            return PgServer(LOCAL_URL, "local server"), None, f"local server ({LOCAL_URL})"
    bindir = find_bindir()
    if bindir is None:
        return None, None, (
            f"no PostgreSQL for the tests: set ${ENV_URL}, run a server on 127.0.0.1:5432 with "
            "trust auth and a database 'test', or install the server binaries (initdb, pg_ctl)"
        )  # fmt: skip
    try:
        throwaway = Throwaway.start(bindir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return None, None, f"could not start a throwaway PostgreSQL from {bindir}: {exc}"
    origin = f"throwaway server from {bindir} on port {throwaway.port}"
    return PgServer(throwaway.url, origin), throwaway, origin


def unavailable(reason: str, environ: Mapping[str, str]) -> NoReturn:
    """Skip, or under CI=true fail: the PostgreSQL tests must never be skipped silently in CI."""
    if environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


# --- the session's server, shared by every test module that asks -----------------------


class _Session:
    lock = threading.Lock()
    users = 0
    server: PgServer | None = None
    throwaway: Throwaway | None = None
    reason: str | None = None  # why there is no server (found out once per session)


def acquire() -> PgServer:
    """The session's server (found or started on first use); skips or fails without one.

    Pair every successful call with :func:`release`; the last release stops a throwaway.
    """
    with _Session.lock:
        if _Session.server is None and _Session.reason is None:
            server, throwaway, how = discover(os.environ)
            _Session.server, _Session.throwaway = server, throwaway
            _Session.reason = None if server is not None else how
        if _Session.server is None:
            unavailable(_Session.reason or "unknown", os.environ)
        _Session.users += 1
        return _Session.server


def release() -> None:
    with _Session.lock:
        _Session.users -= 1
        if _Session.users == 0 and _Session.throwaway is not None:
            _Session.throwaway.stop()
            _Session.throwaway, _Session.server = None, None


# --- per-test schemas and URLs ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgSchema:
    """Where one test's journal lives: the server's database and a schema of its own."""

    url: str
    name: str


def session_server() -> Iterator[PgServer]:
    """Body of a session fixture: ``yield from pgserver.session_server()``."""
    server = acquire()
    try:
        yield server
    finally:
        release()


def new_schema_name() -> str:
    return f"fr_test_{uuid.uuid4().hex[:16]}"


def schema_for_test(server: PgServer) -> Iterator[PgSchema]:
    """Body of a per-test fixture: a schema nobody uses, dropped with its contents after."""
    with fresh_schema(server) as name:
        yield PgSchema(server.url, name)


@contextlib.contextmanager
def fresh_schema(server: PgServer) -> Iterator[str]:
    """A schema name nobody uses; whatever the test created in it is dropped afterwards."""
    name = new_schema_name()
    try:
        yield name
    finally:
        drop_schema(server.url, name)


def drop_schema(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        # A journal a failed test left open may still hold locks: do not hang on it.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[str]:
    """A new database on the server (URL to it), dropped afterwards; skips without CREATEDB."""
    name = f"fr_test_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as exc:
        pytest.skip(f"the test server does not let us create a database: {exc}")
    try:
        yield with_database(server.url, name)
    finally:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _split(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"the tests need a postgresql:// URL, not {redact(url)}")
    return parts


def with_database(url: str, dbname: str) -> str:
    return _split(url)._replace(path="/" + dbname).geturl()


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in its user part (a trust-auth server ignores it)."""
    parts = _split(url)
    user = parts.username or getpass.getuser()
    host = parts.netloc.rpartition("@")[2]
    quoted = urllib.parse.quote(password, safe="")
    return parts._replace(netloc=f"{urllib.parse.quote(user)}:{quoted}@{host}").geturl()


def redact(url: str) -> str:
    """For the tests' own messages: the URL without a password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}@{host}").geturl()
