"""Shared runs, leases: a runner that dies and the runner that takes over its work, the fence
on ``attempt_started``, registrations (one runner per run unless joined), heartbeats, leaving,
shared pauses, and the migration of a version-1 journal.

Each runner is a ``PostgresJournal`` of its own on the test's schema, as separate processes
would have; every test has its own schema (see ``pgserver``).
"""

from __future__ import annotations

import time

import anyio
import pgserver
import pytest
from psycopg import sql
from test_journal_pg_support import (
    LEASE,
    admin,
    all_closed,
    claim,
    ended,
    fenced,
    owners,
    pool_targets,
    runner,
    shared_run,
)
from test_journal_support import RUN_ID, new_run, new_targets, start

from fleet_reimage.journal import (
    AttemptStart,
    JournalBusy,
    JournalError,
    RunEvent,
    TargetChange,
    TargetState,
)
from fleet_reimage.journal import postgres_schema as pgschema
from fleet_reimage.journal.model import LeaseLost
from fleet_reimage.journal.postgres import PostgresJournal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

A, B, C = runner("host-a", 1), runner("host-b", 2), runner("host-c", 3)


async def test_a_dead_runners_work_is_taken_over_and_its_late_start_refused(
    pg: pgserver.PgSchema,
) -> None:
    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [6]))
        async with all_closed([a, b]):
            await a.register_runner(RUN_ID, A, lease=1.0, exclusive=True)
            await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)
            ids = [t.target_id for t in (await claim(a, A, lease=1.0)).targets]
            sent, waiting = fenced(ids[0], A), fenced(ids[1], A)
            await a.attempt_started(sent)  # in flight when A dies
            await a.attempt_started(waiting)
            await a.attempt_finished(ended(waiting, TargetState.ACCEPTED))  # awaiting health
            before = await claim(b, B)  # A is alive: nothing for B
            await anyio.sleep(1.2)  # A "dies": no heartbeat, its 1 s lease runs out
            after = await claim(b, B)
            with pytest.raises(LeaseLost, match=f"not owned by runner {A.runner_id}"):
                await a.attempt_started(fenced(ids[2], A))  # now B's
            await a.record_event(RunEvent(RUN_ID, time.time(), "still-writing"))  # not poisoned
            with pytest.raises(LeaseLost, match="lost its lease"):
                await a.heartbeat(RUN_ID, A.runner_id, lease=1.0)
            await b.attempt_started(fenced(ids[2], B))
            table = await owners(pg)
    assert (before.targets, before.takeovers, before.blocked) == ([], [], "wave")
    assert [t.target_id for t in after.takeovers] == ids[:2]
    assert [t.state for t in after.takeovers] == [TargetState.IN_FLIGHT, TargetState.ACCEPTED]
    assert [t.target_id for t in after.targets] == ids[2:]  # A's unsent claims, as claims
    assert {owner for owner, _ in table.values()} == {B.runner_id}
    assert table[ids[2]] == (B.runner_id, "in_flight")


async def test_the_fence_refuses_only_the_late_writer_in_a_shared_batch(
    pg: pgserver.PgSchema,
) -> None:
    outcomes: dict[str, str] = {}

    async def write(journal: PostgresJournal, attempt: AttemptStart, name: str) -> None:
        try:
            await journal.attempt_started(attempt)
        except LeaseLost:
            outcomes[name] = "lease lost"
        else:
            outcomes[name] = "ok"

    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [12]))
        async with all_closed([a, b]):
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)
            mine = [t.target_id for t in (await claim(a, A, limit=6)).targets]
            theirs = [t.target_id for t in (await claim(b, B, limit=5)).targets]
            # A claim whose lease has already run out, by the database's clock.
            (lapsed,) = [t.target_id for t in (await claim(a, A, limit=1, lease=-1.0)).targets]
            async with anyio.create_task_group() as tg:  # one batch of A's writer
                for n, tid in enumerate(mine[1:]):
                    tg.start_soon(write, a, fenced(tid, A), f"a{n}")
                tg.start_soon(write, a, fenced(theirs[0], A), "a-on-b")
                tg.start_soon(write, a, fenced(lapsed, A), "late")
                # A runner whose clock runs far ahead: the fence reads the database's clock,
                # never the time the runner stamps on its attempt.
                tg.start_soon(
                    write, a, fenced(mine[0], A, sent_at=time.time() + 2 * LEASE), "ahead"
                )
            # Unfenced writes (runner_id None) keep today's behaviour.
            await a.attempt_started(start(theirs[1], "unfenced", time.time()))
            with pytest.raises(JournalError, match="no target 999999") as missing:
                await a.attempt_started(start(999999, "nope", time.time()))
            stats = a.writer_stats
    assert outcomes.pop("a-on-b") == "lease lost" and outcomes.pop("late") == "lease lost"
    assert set(outcomes.values()) == {"ok"} and len(outcomes) == 6  # "ahead" among them
    assert not isinstance(missing.value, LeaseLost)
    assert stats is not None and stats.largest_batch >= 6  # the fence did not cost batching


async def test_a_resumed_run_takes_over_targets_nobody_owns(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        (a,) = await shared_run(pg, pool_targets("p", [3]), journals=1)
        async with a:
            ids = [t.target_id for t in await a.targets(RUN_ID)]
            await a.attempt_started(start(ids[0], "before-the-crash", time.time()))
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            result = await claim(a, A)
    assert [t.target_id for t in result.takeovers] == ids[:1]
    assert [t.target_id for t in result.targets] == ids[1:]


async def test_one_runner_per_run_unless_joined(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(20):
        a, b, c = await shared_run(pg, pool_targets("p", [4]), journals=3)
        async with all_closed([a, b, c]):
            assert await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True) == [A]
            with pytest.raises(JournalBusy, match=r"run run-1 of the journal .* is being run by "
                               r"host-a pid 1 \(its lease ends in \d+ s") as busy:  # fmt: skip
                await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=True)
            assert pg.url.split("@")[-1] in str(busy.value)
            assert await c.register_runner(RUN_ID, C, lease=1.0, exclusive=False) == [A, C]
            taken = (await claim(a, A, limit=2)).targets
            await a.leave(RUN_ID, A.runner_id)
            with pytest.raises(JournalBusy, match="host-c pid 3"):  # C is still alive
                await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=True)
            await anyio.sleep(1.1)  # C's lease runs out
            assert await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=True) == [B]
            freed = await claim(b, B, limit=10)
    assert [t.target_id for t in freed.targets][:2] == [t.target_id for t in taken]  # released


async def test_two_runs_of_one_database_are_written_at_once(pg: pgserver.PgSchema) -> None:
    async def drive(journal: PostgresJournal, run_id: str, crid: str) -> None:
        for record in await journal.targets(run_id):
            await journal.target_changed(
                TargetChange(run_id, record.target_id, TargetState.SKIPPED, time.time(), crid)
            )

    with anyio.fail_after(20):
        first = await PostgresJournal.open(pg.url, schema=pg.name)
        second = await PostgresJournal.open(pg.url, schema=pg.name)  # no JournalBusy now
        async with all_closed([first, second]):
            await first.lock_for_writing("host-a 1 run-1")
            await second.lock_for_writing("host-b 2 run-2")
            await first.create_run(new_run("run-1"), new_targets(30), [])
            await second.create_run(new_run("run-2"), new_targets(30), [])
            await first.register_runner("run-1", A, lease=LEASE, exclusive=True)
            await second.register_runner("run-2", B, lease=LEASE, exclusive=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(drive, first, "run-1", "by a")
                tg.start_soon(drive, second, "run-2", "by b")
            reasons = {r: {t.reason for t in await first.targets(r)} for r in ("run-1", "run-2")}
    assert reasons == {"run-1": {"by a"}, "run-2": {"by b"}}
    assert first.owner == "host-a 1 run-1"


async def test_heartbeats_keep_claims_alive_and_leaving_gives_them_back(
    pg: pgserver.PgSchema,
) -> None:
    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [6]))
        async with all_closed([a, b]):
            await a.register_runner(RUN_ID, A, lease=1.0, exclusive=True)
            await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)
            ids = [t.target_id for t in (await claim(a, A, limit=4, lease=1.0)).targets]
            for _ in range(3):  # 1.5 s in all, past the first lease
                await anyio.sleep(0.5)
                live = await a.heartbeat(RUN_ID, A.runner_id, lease=1.0)
            held = await claim(b, B)
            await a.release(RUN_ID, A.runner_id, ids[:1])
            await a.release(RUN_ID, B.runner_id, ids[1:2])  # not B's to give
            released = await claim(b, B)
            await a.leave(RUN_ID, A.runner_id)
            left = await claim(b, B)
            with pytest.raises(LeaseLost):
                await a.heartbeat(RUN_ID, A.runner_id, lease=1.0)
            with pytest.raises(LeaseLost):
                await a.attempt_started(fenced(ids[3], A))
    assert live == [A, B]
    assert len(held.targets) == 2 and not {t.target_id for t in held.targets} & set(ids)
    assert [t.target_id for t in released.targets] == ids[:1]
    assert [t.target_id for t in left.targets] == ids[1:]


async def test_leaving_gives_back_a_row_a_batch_held_for_a_moment(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        (a,) = await shared_run(pg, pool_targets("p", [3]), journals=1)
        async with a:
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            ids = [t.target_id for t in (await claim(a, A)).targets]
            conn = await admin(pg.url)
            # The row lock is held as a batch of the writer would hold it, then let go.
            async with conn, anyio.create_task_group() as tg, conn.transaction():
                query = sql.SQL("SELECT 1 FROM {}.targets WHERE target_id = %s FOR UPDATE")
                await conn.execute(query.format(sql.Identifier(pg.name)), (ids[0],))
                tg.start_soon(a.leave, RUN_ID, A.runner_id)
                await anyio.sleep(0.03)
            table = await owners(pg)
    assert [table[t][0] for t in ids] == [None, None, None]


async def test_a_long_gone_registration_is_forgotten(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        a, b = await shared_run(pg, pool_targets("p", [2]))
        async with all_closed([a, b]):
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            # Its lease ran out two hours ago (a laptop that slept through the night).
            await b.register_runner(RUN_ID, B, lease=-7200.0, exclusive=False)
            assert await a.heartbeat(RUN_ID, A.runner_id, lease=LEASE) == [A]
            conn = await admin(pg.url)
            async with conn:
                query = sql.SQL("SELECT runner_id FROM {}.runners").format(sql.Identifier(pg.name))
                rows = await (await conn.execute(query)).fetchall()
            with pytest.raises(LeaseLost):
                await b.heartbeat(RUN_ID, B.runner_id, lease=LEASE)
    assert rows == [(A.runner_id,)]


async def test_pauses_and_baselines_are_shared(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        a, b = await shared_run(pg, pool_targets("p", [2]))
        async with all_closed([a, b]):
            # Durations cross the wire; the database's clock keeps the pause.
            assert await a.share_pause(RUN_ID, "acct", 0.0) == 0.0
            assert await a.share_pause(RUN_ID, "acct", 500.0) == 500.0
            longer = await b.share_pause(RUN_ID, "acct", 300.0)
            assert 300.0 < longer <= 500.0  # the later end stays (less what has passed since)
            assert await b.share_pause(RUN_ID, "other", 10.0) == 10.0
            with pytest.raises(JournalError, match="no such run"):
                await a.share_pause("nope", "acct", 1.0)
            await a.set_pool_baseline(RUN_ID, "acct", "p", 3)
            await b.set_pool_baseline(RUN_ID, "acct", "p", 1)
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            result = await claim(a, A, max_unavailable=2, baseline=7)  # the stored one counts
    assert len(result.targets) == 1 and result.blocked == "unavailable"


async def test_a_version_1_journal_migrates_and_keeps_its_data(
    pg: pgserver.PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(
        sql.Identifier(pg.name)
    )
    with anyio.fail_after(20):
        monkeypatch.setattr(pgschema, "SCHEMA_VERSION", 1)  # what the previous release made
        async with await PostgresJournal.open(pg.url, schema=pg.name) as old:
            await old.create_run(new_run(), pool_targets("p", [2, 2]), [])
            ids = [t.target_id for t in await old.targets(RUN_ID)]
            await old.target_changed(TargetChange(RUN_ID, ids[0], TargetState.HEALTHY, 5.0))
            await old.target_changed(TargetChange(RUN_ID, ids[1], TargetState.ACCEPTED, 6.0))
            await old.record_event(RunEvent(RUN_ID, 7.0, "wave_started"))
            before = await old.targets(RUN_ID)
        conn = await admin(pg.url)
        async with conn:
            assert await (await conn.execute(meta)).fetchall() == [("1",)]
        monkeypatch.undo()
        async with await PostgresJournal.open(pg.url, schema=pg.name) as new:
            after = await new.targets(RUN_ID)
            events = await new.events(RUN_ID)
            await new.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            resumed = await claim(new, A)
            ops = await new.pool_ops(RUN_ID)  # schema 5's table is there, empty
        conn = await admin(pg.url)
        async with conn:
            version = await (await conn.execute(meta)).fetchall()
    assert version == [(str(pgschema.SCHEMA_VERSION),)] and pgschema.SCHEMA_VERSION == 5
    assert ops == []
    assert after == before and [e.kind for e in events] == ["wave_started"]
    assert [t.target_id for t in resumed.takeovers] == ids[1:2]  # accepted, owned by nobody
    assert resumed.wave == 0 and resumed.targets == []


async def test_an_older_exclusive_writer_and_this_one_keep_each_other_out(
    pg: pgserver.PgSchema,
) -> None:
    key = (pgschema.WRITER_LOCK_CLASS, pgschema.lock_key(pg.name))
    with anyio.fail_after(20):
        async with await PostgresJournal.open(pg.url, schema=pg.name):
            old = await admin(pg.url)
            async with old:  # an older fleet-reimage asks for the lock as it always did
                cursor = await old.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)", key)
                assert await cursor.fetchone() == (False,)
        old = await admin(pg.url)
        async with old:
            # The journal's lock connection is closed, but the server may take a moment to
            # end that session and release its lock.
            for _ in range(100):
                cursor = await old.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)", key)
                if await cursor.fetchone() == (True,):
                    break
                await anyio.sleep(0.05)
            else:
                pytest.fail("the journal's shared lock was never released")
            with pytest.raises(JournalBusy, match="an older fleet-reimage that cannot share"):
                await PostgresJournal.open(pg.url, schema=pg.name)
