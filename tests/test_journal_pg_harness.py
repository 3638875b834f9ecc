"""The test set-up that finds or starts PostgreSQL (``pgserver``): its decisions and its server.

These need no server of their own, except the throwaway-server test, which starts one from the
installed binaries (skipped when there are none, whatever CI says: it tests the fallback, and
the other PostgreSQL tests already fail in CI when no server can be had at all).
"""

from __future__ import annotations

import pgserver
import psycopg
import pytest


def test_ci_fails_instead_of_skipping() -> None:
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no server here"):
        pgserver.unavailable("no server here", {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="skipped: no server here"):
        pgserver.unavailable("no server here", {"CI": "false"})
    with pytest.raises(pytest.skip.Exception):
        pgserver.unavailable("no server here", {})


def test_an_explicit_url_that_does_not_answer_is_reported_not_replaced() -> None:
    url = f"postgresql://fleet:hunter22@127.0.0.1:{pgserver._free_port()}/test"
    server, throwaway, why = pgserver.discover({pgserver.ENV_URL: url})
    assert (server, throwaway) == (None, None)
    assert why.startswith(f"${pgserver.ENV_URL} (postgresql://fleet@127.0.0.1:")
    assert "does not answer" in why and "hunter22" not in why


def test_url_helpers() -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    with_pw = pgserver.with_password(url, "p@ss word")
    assert with_pw == "postgresql://postgres:p%40ss%20word@127.0.0.1:5432/test"
    assert pgserver.redact(with_pw) == url
    assert pgserver.with_database(with_pw, "other").endswith("@127.0.0.1:5432/other")
    with pytest.raises(ValueError, match="postgresql:// URL"):
        pgserver.with_database("host=x dbname=y", "z")


@pytest.mark.postgres
def test_a_throwaway_server_starts_answers_and_goes_away() -> None:
    bindir = pgserver.find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) installed")
    server = pgserver.Throwaway.start(bindir)
    try:
        assert pgserver.probe(server.url) is None
        with psycopg.connect(server.url, autocommit=True) as conn:
            row = conn.execute("SHOW port").fetchone()
            conn.execute("CREATE SCHEMA fr_probe")  # a superuser, as the tests need
        assert row == (str(server.port),)
    finally:
        server.stop()
    server.stop()  # twice is fine
    assert not server.root.exists()
    assert pgserver.probe(server.url, timeout=1) is not None
