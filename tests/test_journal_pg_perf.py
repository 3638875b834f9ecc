"""PostgreSQL journal at volume: group commit batches, the hot path with 64 callers,
100,000-target runs. Throughput is printed, never asserted (it depends on the server, its disk
and the machine's load; the figures are bench/bench_bigrun.py's): the batching and the
records are. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time

import anyio
import pgserver
import pytest
from test_journal_pg_support import journal_with_run
from test_journal_support import RUN_ID, accepted, new_run, new_targets, start

from fleet_reimage.journal import TargetState
from fleet_reimage.journal.postgres import PostgresJournal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_group_commit_batches_concurrent_starts(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(30):
        journal, ids = await journal_with_run(pg, 2_000)
        async with journal:
            before = journal.writer_stats
            async with anyio.create_task_group() as tg:
                for n, tid in enumerate(ids):
                    tg.start_soon(journal.attempt_started, start(tid, f"c{n}", float(n)))
            after = journal.writer_stats
            attempts = await journal.attempts(RUN_ID)
    assert before is not None and after is not None
    transactions = after.transactions - before.transactions
    print(f"\n2,000 concurrent attempt_started: {transactions} transactions, "
          f"largest batch {after.largest_batch}")  # fmt: skip
    assert len(attempts) == 2_000
    assert after.units - before.units == 2_000
    assert transactions <= 50  # far below one per call


async def test_hot_path_throughput_with_64_callers(pg: pgserver.PgSchema) -> None:
    per_caller = 150  # start + finish each: 64 * 150 * 2 = 19,200 durable writes

    async def caller(journal: PostgresJournal, ids: list[int], k: int) -> None:
        for i in range(per_caller):
            n = k * per_caller + i
            await journal.attempt_started(start(ids[n], f"c{n}", float(n)))
            await journal.attempt_finished(accepted(ids[n], f"c{n}", float(n)))

    with anyio.fail_after(60):
        journal, ids = await journal_with_run(pg, 64 * per_caller)
        async with journal:
            before = journal.writer_stats
            began = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for k in range(64):
                    tg.start_soon(caller, journal, ids, k)
            elapsed = time.perf_counter() - began
            after = journal.writer_stats
            targets = await journal.targets(RUN_ID)
    assert before is not None and after is not None
    ops = 64 * per_caller * 2
    print(f"\n64 callers: {ops} writes in {elapsed:.2f} s = {ops / elapsed:,.0f} ops/s, "
          f"{after.transactions - before.transactions} transactions")  # fmt: skip
    assert all(t.state is TargetState.ACCEPTED and t.attempts == 1 for t in targets)
    assert after.units - before.units == ops


async def test_a_run_of_100k_targets_is_created_and_read_back_in_order(
    pg: pgserver.PgSchema,
) -> None:
    # How long this takes is a figure of bench/bench_bigrun.py, not an assertion.
    targets = new_targets(100_000, pools=20)
    with anyio.fail_after(120):
        async with await PostgresJournal.open(pg.url, schema=pg.name) as journal:
            await journal.create_run(new_run(), targets, [])
            loaded = await journal.targets(RUN_ID)
    assert [t.node_id for t in loaded] == [t.node_id for t in targets]
    assert [t.target_id for t in loaded] == sorted(t.target_id for t in loaded)
