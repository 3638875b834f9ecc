"""The journal contract for ``create_run(..., unless_unfinished_of=sha)``, on every backend.

"Create the run unless an unfinished run of this plan exists" is one step: the refusal
(``UnfinishedRun``, naming the run) leaves nothing written, touches nothing else in its
batch, and on PostgreSQL holds across writers racing for the same plan.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import anyio
import pgserver
import pytest
from test_journal_pg_contract import backend  # noqa: F401 - the fixture
from test_journal_pg_support import Backend, PostgresBackend, admin, until_waiting_on_lock
from test_journal_support import RUN_ID, new_run, new_targets

from fleet_reimage.journal import (
    Journal,
    JournalError,
    NewRun,
    RunEvent,
    RunStatus,
    UnfinishedRun,
)
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.postgres_schema import PLAN_LOCK_CLASS, plan_lock_key

pytestmark = pytest.mark.anyio

PLAN = "a" * 64
OTHER_PLAN = "b" * 64


def run_of(plan: str, run_id: str, created_at: float = 1_000.0) -> NewRun:
    return dataclasses.replace(new_run(run_id, created_at), plan_sha256=plan)


async def create(journal: Journal, run: NewRun, *, guarded: bool = True) -> None:
    guard = run.plan_sha256 if guarded else None
    await journal.create_run(run, new_targets(3), [], unless_unfinished_of=guard)


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.STOPPED, RunStatus.INTERRUPTED])
async def test_an_unfinished_run_of_the_plan_refuses_the_new_one(
    backend: Backend,  # noqa: F811
    status: RunStatus,
) -> None:
    with anyio.fail_after(20):
        async with await backend.open() as journal:
            await create(journal, run_of(PLAN, RUN_ID))
            await journal.set_run_status(RUN_ID, status, "why", 1_001.0)
            with pytest.raises(UnfinishedRun) as refused:
                await create(journal, run_of(PLAN, "run-2", 1_002.0))
            assert await journal.get_run("run-2") is None
            assert await journal.targets("run-2") == []
            assert [r.run_id for r in await journal.runs()] == [RUN_ID]
    assert refused.value.run_id == RUN_ID
    assert isinstance(refused.value, JournalError)
    message = str(refused.value)
    assert f"run {RUN_ID} of this plan is unfinished ({status.value}" in message
    # Who ran it last: its creator, or whoever set it running again (this process).
    runner = (
        (socket.gethostname(), os.getpid()) if status is RunStatus.RUNNING else ("host-a", 4242)
    )
    assert f"last run by {runner[0]} pid {runner[1]})" in message


async def test_finished_runs_other_plans_and_unguarded_creates_go_ahead(
    backend: Backend,  # noqa: F811
) -> None:
    with anyio.fail_after(20):
        async with await backend.open() as journal:
            await create(journal, run_of(PLAN, RUN_ID))
            await journal.set_run_status(RUN_ID, RunStatus.FINISHED, None, 1_001.0)
            await create(journal, run_of(PLAN, "after-finished", 1_002.0))  # finished: no block
            await create(journal, run_of(OTHER_PLAN, "other-plan", 1_003.0))
            await create(journal, run_of(PLAN, "unguarded", 1_004.0), guarded=False)
            listed = {r.run_id for r in await journal.runs()}
    assert listed == {RUN_ID, "after-finished", "other-plan", "unguarded"}


async def test_the_newest_unfinished_run_is_named(backend: Backend) -> None:  # noqa: F811
    with anyio.fail_after(20):
        async with await backend.open() as journal:
            await create(journal, run_of(PLAN, "older", 1_000.0), guarded=False)
            await create(journal, run_of(PLAN, "newer", 2_000.0), guarded=False)
            with pytest.raises(UnfinishedRun) as refused:
                await create(journal, run_of(PLAN, "third", 3_000.0))
    assert refused.value.run_id == "newer"


async def test_a_refusal_sinks_neither_its_batch_mates_nor_later_writes(
    backend: Backend,  # noqa: F811
) -> None:
    refusals: list[BaseException] = []

    async def refused_create(journal: Journal) -> None:
        try:
            await create(journal, run_of(PLAN, "run-2", 1_002.0))
        except UnfinishedRun as exc:
            refusals.append(exc)

    with anyio.fail_after(20):
        async with await backend.open(batch_window=0.05) as journal:
            await create(journal, run_of(PLAN, RUN_ID))
            async with anyio.create_task_group() as group:  # one batch: the window is wide
                group.start_soon(refused_create, journal)
                for i in range(5):
                    group.start_soon(journal.record_event, RunEvent(RUN_ID, 1_010.0 + i, "e"))
            await create(journal, run_of(OTHER_PLAN, "run-3", 1_020.0))  # the writer is fine
            events = await journal.events(RUN_ID)
            assert await journal.get_run("run-3") is not None
    assert len(refusals) == 1 and len(events) == 5


@pytest.mark.postgres
async def test_writers_racing_for_one_plan_create_exactly_one_run(
    pg_server: pgserver.PgServer,
) -> None:
    """Two writers (two connections, as two processes would have) are held at the plan's
    lock and let go together: one creates the run, the other is refused naming it."""
    with pgserver.fresh_schema(pg_server) as schema:
        pg = pgserver.PgSchema(pg_server.url, schema)
        store = PostgresBackend(pg.url, schema)
        async with await store.open() as first, await store.open() as second:
            outcomes: dict[str, BaseException | None] = {}

            async def attempt(journal: PostgresJournal, run_id: str) -> None:
                try:
                    await create(journal, run_of(PLAN, run_id))
                    outcomes[run_id] = None
                except UnfinishedRun as exc:
                    outcomes[run_id] = exc

            with anyio.fail_after(30):
                holder = await admin(pg.url)
                # Exits in reverse: the transaction commits (the lock is free, both writers
                # go at once), then the task group waits for both, then the holder closes.
                async with holder, anyio.create_task_group() as group, holder.transaction():
                    await holder.execute(  # the barrier: hold the plan's lock
                        "SELECT pg_advisory_xact_lock(%s::int4, %s::int4)",
                        (PLAN_LOCK_CLASS, plan_lock_key(schema, PLAN)),
                    )
                    group.start_soon(attempt, first, "run-a")
                    group.start_soon(attempt, second, "run-b")
                    for journal in (first, second):
                        pid = journal.writer_backend_pid
                        assert pid is not None
                        await until_waiting_on_lock(pg, pid)
                runs = await first.runs()
    created = [run_id for run_id, error in outcomes.items() if error is None]
    refused = [error for error in outcomes.values() if isinstance(error, UnfinishedRun)]
    assert len(created) == 1 and len(refused) == 1, outcomes
    assert refused[0].run_id == created[0]
    assert [r.run_id for r in runs] == created
