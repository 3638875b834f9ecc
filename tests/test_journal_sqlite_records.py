"""SQLite journal: what only SQLite does with records (WAL on close, a cancelled caller's write).

The backend-neutral record tests (round trips, bookkeeping, ordering, run status, refusals)
moved to ``test_journal_pg_contract.py``, which runs them against SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest
from test_journal_support import (
    RUN_ID,
    journal_with_run,
    start,
)

from fleet_reimage.journal import JournalError, model, open_journal, shared
from fleet_reimage.journal.codec import secret_like_key
from fleet_reimage.journal.sqlite import SqliteJournal

pytestmark = pytest.mark.anyio


def test_no_model_record_has_a_secret_field() -> None:
    records = [
        v
        for module in (model, shared)
        for v in vars(module).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v)
    ]
    assert len(records) >= 10
    names = [(r.__name__, f.name) for r in records for f in dataclasses.fields(r)]
    assert [n for n in names if secret_like_key(n[1])] == []


async def test_close_flushes_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(path, 50, batch_window=0.2)
        async with anyio.create_task_group() as tg:
            for n, tid in enumerate(ids):
                tg.start_soon(journal.attempt_started, start(tid, f"c{n}", 1.0))
            await anyio.sleep(0.01)  # queued, not yet committed (200 ms window)
            await journal.close()
        assert not path.with_name("j.db-wal").exists()  # last close checkpointed the WAL
        async with await SqliteJournal.open(path, readonly=True) as reader:
            assert len(await reader.attempts(RUN_ID)) == 50


async def test_open_journal_picks_the_backend(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        with pytest.raises(JournalError, match="there is no journal at"):
            await open_journal(tmp_path / "missing.db", readonly=True)
        with pytest.raises(JournalError, match="there is no journal at"):
            await SqliteJournal.open(tmp_path / "missing.db", create=False)
        assert not (tmp_path / "missing.db").exists()
        journal = await open_journal(str(tmp_path / "new.db"))
        try:
            assert isinstance(journal, SqliteJournal)
            assert journal.location == str(tmp_path / "new.db")
            await journal.lock_for_writing("host-a 1 run-1")
        finally:
            await journal.close()


async def test_a_cancelled_caller_does_not_withdraw_its_write(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(path, 1, batch_window=0.1)
        async with journal:
            with anyio.move_on_after(0.01) as scope:
                await journal.attempt_started(start(ids[0], "c1", 1.0))
            assert scope.cancelled_caught
        async with await SqliteJournal.open(path, readonly=True) as reader:
            [attempt] = await reader.attempts(RUN_ID)
    assert attempt.client_request_id == "c1"
