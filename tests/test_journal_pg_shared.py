"""Shared runs, claims: several runners claiming from one pool, and the rollout limits held
across them (max_unavailable, waves and pauses, the failure budget).

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
from test_journal_support import RUN_ID

from fleet_reimage.journal import JournalError, TargetState
from fleet_reimage.journal.model import LeaseLost
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.shared import RunnerInfo

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

A, B = runner("host-a", 1), runner("host-b", 2)


async def register_both(a: PostgresJournal, b: PostgresJournal) -> None:
    await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
    await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)  # joins


async def test_concurrent_claims_never_share_a_target(pg: pgserver.PgSchema) -> None:
    got: dict[str, list[int]] = {A.runner_id: [], B.runner_id: []}

    async def claimer(journal: PostgresJournal, me: RunnerInfo) -> None:
        while True:
            result = await claim(journal, me, limit=3)
            got[me.runner_id] += [t.target_id for t in result.targets]
            if not result.targets and result.blocked == "wave":
                return

    with anyio.fail_after(30):
        a, b = await shared_run(pg, pool_targets("p", [300]))
        async with all_closed([a, b]):
            await register_both(a, b)
            async with anyio.create_task_group() as tg:
                for _ in range(8):  # 16 claimers, 2 runners, one pool
                    tg.start_soon(claimer, a, A)
                    tg.start_soon(claimer, b, B)
            everything = {t.target_id for t in await a.targets(RUN_ID)}
            table = await owners(pg)
    mine, theirs = got[A.runner_id], got[B.runner_id]
    assert len(mine) == len(set(mine)) and len(theirs) == len(set(theirs))
    assert not set(mine) & set(theirs)
    assert set(mine) | set(theirs) == everything
    assert mine and theirs  # both runners took part
    assert all(table[t][0] == A.runner_id for t in mine)
    assert all(table[t][0] == B.runner_id for t in theirs)


async def test_claims_come_in_dispatch_order_and_as_target_records(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        (a,) = await shared_run(pg, pool_targets("p", [6]) + pool_targets("q", [4]), journals=1)
        async with a:
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            first = await claim(a, A, limit=4)
            second = await claim(a, A, "q", limit=10)
            records = {t.target_id: t for t in await a.targets(RUN_ID)}
    assert [t.position for t in first.targets] == [0, 1, 2, 3]
    assert all(t == records[t.target_id] for t in first.targets + second.targets)
    assert (first.wave, first.blocked, first.finished, first.takeovers) == (0, None, False, [])
    assert [t.pool for t in second.targets] == ["q"] * 4 and second.blocked == "wave"


async def test_max_unavailable_holds_across_runners(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [20]))
        async with all_closed([a, b]):
            await register_both(a, b)
            first = await claim(a, A, limit=3, max_unavailable=5)
            second = await claim(b, B, limit=3, max_unavailable=5)
            third = await claim(a, A, limit=3, max_unavailable=5)
            # Two of A's settle (healthy); two others are sent and accepted: still unavailable.
            starts = [fenced(t.target_id, A) for t in first.targets]
            for start in starts:
                await a.attempt_started(start)
            await a.attempt_finished(ended(starts[0], TargetState.HEALTHY))
            await a.attempt_finished(ended(starts[1], TargetState.HEALTHY))
            await a.attempt_finished(ended(starts[2], TargetState.ACCEPTED))
            after = await claim(b, B, limit=10, max_unavailable=5)
            # Nodes down for other reasons take room too.
            await a.set_pool_baseline(RUN_ID, "acct", "p", 2)
            baseline = await claim(b, B, limit=10, max_unavailable=5)
    assert (len(first.targets), first.blocked) == (3, None)
    assert (len(second.targets), second.blocked) == (2, "unavailable")
    assert (third.targets, third.blocked) == ([], "unavailable")
    assert (len(after.targets), after.blocked) == (2, "unavailable")
    assert (baseline.targets, baseline.blocked) == ([], "unavailable")


async def test_max_unavailable_holds_while_runners_work_at_once(pg: pgserver.PgSchema) -> None:
    limit, peak, blocked = 5, [0], set()
    done = {A.runner_id: 0, B.runner_id: 0}
    active = sql.SQL(
        "SELECT count(*) FROM {}.targets WHERE state IN ('in_flight', 'accepted')"
        " OR (state = 'pending' AND owner IS NOT NULL AND lease_until >= %s)"
    ).format(sql.Identifier(pg.name))

    async def work(journal: PostgresJournal, me: RunnerInfo) -> None:
        while not (result := await claim(journal, me, limit=2, max_unavailable=limit)).finished:
            blocked.add(result.blocked)
            for record in result.targets:
                start = fenced(record.target_id, me)
                await journal.attempt_started(start)
                await anyio.sleep(0.005)
                await journal.attempt_finished(ended(start, TargetState.HEALTHY))
                done[me.runner_id] += 1
            await anyio.sleep(0 if result.targets else 0.005)

    async def watch(stop: anyio.Event) -> None:
        conn = await admin(pg.url)
        async with conn:
            while not stop.is_set():  # each count is one consistent snapshot
                row = await (await conn.execute(active, (time.time(),))).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)
                await anyio.sleep(0.002)

    with anyio.fail_after(30):
        a, b = await shared_run(pg, pool_targets("p", [60]))
        async with all_closed([a, b]):
            await register_both(a, b)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch, stop)
                async with anyio.create_task_group() as workers:
                    for journal, who in ((a, A), (a, A), (b, B), (b, B)):
                        workers.start_soon(work, journal, who)
                stop.set()
            states = {t.state for t in await a.targets(RUN_ID)}
    assert states == {TargetState.HEALTHY}
    assert sum(done.values()) == 60 and all(done.values())
    assert 0 < peak[0] <= limit
    assert "unavailable" in blocked


async def test_a_wave_waits_for_the_last_one_and_then_for_the_pause(
    pg: pgserver.PgSchema,
) -> None:
    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [3, 3]))
        async with all_closed([a, b]):
            await register_both(a, b)
            wave0 = await claim(a, A, limit=10)
            held = await claim(b, B, limit=10)  # A holds the whole wave
            starts = [fenced(t.target_id, A) for t in wave0.targets]
            for start in starts:
                await a.attempt_started(start)
            await a.attempt_finished(ended(starts[0], TargetState.HEALTHY))
            await a.attempt_finished(ended(starts[1], TargetState.FAILED))
            not_yet = await claim(b, B, limit=10, pause=10)  # one wave-0 node still out
            await a.attempt_finished(ended(starts[2], TargetState.HEALTHY))
            # The first claim after the wave's last node settled sees it complete: the pause
            # counts from then, on the policy's clock (the database's, or the test's).
            seen = not_yet.state.now + 1
            completing = await claim(b, B, limit=10, pause=10, now=seen)
            paused = await claim(a, A, limit=10, pause=10, now=seen + 9.5)
            opened = await claim(b, B, limit=10, pause=10, now=seen + 10)
            again = await claim(a, A, limit=10, pause=10, now=seen + 10)
            records = await a.targets(RUN_ID)
    assert [t.wave for t in wave0.targets] == [0, 0, 0] and wave0.blocked == "wave"
    assert (held.targets, held.wave, held.blocked) == ([], 0, "wave")
    assert (not_yet.targets, not_yet.wave, not_yet.blocked) == ([], 0, "wave")
    assert not_yet.completed is None
    assert (completing.targets, completing.wave, completing.blocked) == ([], 1, "pause")
    assert completing.completed is not None
    assert (completing.completed.wave, completing.completed.at) == (0, seen)
    assert completing.completed.next_wave_at == seen + 10 == completing.opens_at
    assert (paused.targets, paused.blocked, paused.opens_at) == ([], "pause", seen + 10)
    assert paused.completed is None  # announced once, by the claim that saw it
    assert [t.wave for t in opened.targets] == [1, 1, 1] and opened.opens_at is None
    assert again.completed is None and again.blocked == "wave"
    wave1 = {t.target_id for t in opened.targets}
    assert {t.target_id for t in records if t.wave == 1} == wave1


async def test_a_finished_pool_says_so(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        (a,) = await shared_run(pg, pool_targets("p", [2]), journals=1)
        async with a:
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            for record in (await claim(a, A)).targets:
                start = fenced(record.target_id, A)
                await a.attempt_started(start)
                await a.attempt_finished(ended(start, TargetState.DONE_UNVERIFIED))
            result = await claim(a, A)
    assert result.finished and result.wave is None and result.targets == []


async def test_failures_over_the_budget_stop_new_claims(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(20):
        a, b = await shared_run(pg, pool_targets("p", [10]) + pool_targets("q", [5]))
        async with all_closed([a, b]):
            await register_both(a, b)
            first = await claim(a, A, limit=3, budget=1)
            starts = [fenced(t.target_id, A) for t in first.targets]
            for start in starts:
                await a.attempt_started(start)
            await a.attempt_finished(ended(starts[0], TargetState.FAILED))
            within = await claim(b, B, limit=1, budget=1)
            await a.attempt_finished(ended(starts[1], TargetState.FAILED))
            over = await claim(b, B, limit=5, budget=1)
            other_pool = await claim(b, B, "q", limit=5, budget=1)  # the budget is the run's
            forgiven = await claim(b, B, limit=1, budget=1, forgiven=1)
    assert len(within.targets) == 1 and within.blocked is None
    assert (over.targets, over.blocked, over.wave) == ([], "budget", 0)
    assert (other_pool.targets, other_pool.blocked) == ([], "budget")
    assert len(forgiven.targets) == 1 and forgiven.blocked is None


async def test_claims_need_a_live_registration(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(10):
        (a,) = await shared_run(pg, pool_targets("p", [3]), journals=1)
        async with a:
            with pytest.raises(LeaseLost, match="no live registration"):
                await claim(a, A)
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            with pytest.raises(LeaseLost, match="no live registration"):
                await claim(a, A, now=time.time() + LEASE + 1)  # past its lease
            with pytest.raises(JournalError, match="no run nope"):
                await a.register_runner("nope", A, lease=LEASE, exclusive=True)
            assert len((await claim(a, A)).targets) == 3
            async with await PostgresJournal.open(pg.url, schema=pg.name, readonly=True) as r:
                with pytest.raises(JournalError, match="opened read-only"):
                    await r.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)
