"""Shared fixtures. Async tests use anyio's pytest plugin on the asyncio backend.

The PostgreSQL fixtures start (or find) a server only for the tests that ask for one; see
``pgserver.py`` for where it comes from and when a test skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pgserver
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    yield from pgserver.session_server()


@pytest.fixture
def pg(pg_server: pgserver.PgServer) -> Iterator[pgserver.PgSchema]:
    """A schema of the server's database for this test alone (dropped after it)."""
    yield from pgserver.schema_for_test(pg_server)


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> Iterator[str]:
    """A database of its own for this test (dropped after it)."""
    with pgserver.fresh_database(pg_server) as url:
        yield url
