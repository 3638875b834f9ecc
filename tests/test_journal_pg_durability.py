"""PostgreSQL journal durability: a writer SIGKILLed at a random moment loses nothing it reported.

The child process writes attempts from 16 concurrent callers and prints each one once its call
returned (durable). After the kill, every printed attempt must be in the journal, each with the
answer it printed, and every target's attempt count must match its attempts (each start moved
its target in the same commit). The server rolls back the dead writer's open transaction and
drops its lock, so the next round's child can take the journal again.
"""

from __future__ import annotations

import random
import subprocess
import sys

import anyio
import pgserver
import pytest
from psycopg import sql
from test_journal_pg_support import admin

from fleet_reimage.journal import AttemptOutcome
from fleet_reimage.journal.postgres import PostgresJournal

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


CRASH_CHILD = """
import sys, time, anyio
from fleet_reimage.journal import (AttemptEnd, AttemptOutcome, AttemptStart, JournalBusy,
                                   NewRun, NewTarget, TargetState)
from fleet_reimage.journal.postgres import PostgresJournal

async def open_journal(url: str, schema: str) -> PostgresJournal:
    # The previous round's server session may take a moment to notice its client died.
    for _ in range(100):
        try:
            return await PostgresJournal.open(url, schema=schema)
        except JournalBusy:
            await anyio.sleep(0.05)
    return await PostgresJournal.open(url, schema=schema)

async def main() -> None:
    url, schema, prefix = sys.argv[1:4]
    journal = await open_journal(url, schema)
    if await journal.get_run("crash") is None:
        run = NewRun("crash", "crash", "reimage", "p", "t", "s", {}, time.time(), "h", 1)
        targets = [NewTarget("a", "p", f"n{i}", 0, i) for i in range(1000)]
        await journal.create_run(run, targets, [])
    ids = [t.target_id for t in await journal.targets("crash")]
    print("READY", flush=True)

    async def worker(n: int) -> None:
        while True:
            crid, tid = f"{prefix}-{n}", ids[n % len(ids)]
            await journal.attempt_started(AttemptStart("crash", tid, 1, "reimage", crid,
                                                       time.time()))
            print("S", crid, flush=True)
            await journal.attempt_finished(AttemptEnd("crash", tid, crid, time.time(),
                                                      AttemptOutcome.ACCEPTED,
                                                      TargetState.ACCEPTED, status=202))
            print("F", crid, flush=True)
            n += 16

    async with anyio.create_task_group() as tg:
        for n in range(16):
            tg.start_soon(worker, n)

anyio.run(main)
"""


async def run_and_kill(pg: pgserver.PgSchema, prefix: str, delay: float) -> tuple[set[str], ...]:
    """Start the child, SIGKILL it ``delay`` s after it is ready; what it said was durable."""
    out = b""
    process = await anyio.open_process(
        [sys.executable, "-c", CRASH_CHILD, pg.url, pg.name, prefix], stderr=subprocess.STDOUT
    )
    async with process:
        assert process.stdout is not None
        async for chunk in process.stdout:
            out += chunk
            if b"READY\n" in out:
                break
        assert b"READY\n" in out, out.decode(errors="replace")
        await anyio.sleep(delay)
        process.kill()
        async for chunk in process.stdout:
            out += chunk
        await process.wait()
    lines = out.decode().split("\n")[:-1]  # a torn last line (no newline) proves nothing
    said = [line.split(" ") for line in lines if line.startswith(("S ", "F "))]
    return {c for kind, c in said if kind == "S"}, {c for kind, c in said if kind == "F"}


async def test_sigkill_loses_nothing_that_was_reported_durable(pg: pgserver.PgSchema) -> None:
    rng = random.Random()
    total_started = 0
    mismatch_query = sql.SQL(
        "SELECT count(*) FROM {s}.targets t WHERE attempts !="
        " (SELECT count(*) FROM {s}.attempts a WHERE a.target_id = t.target_id)"
    ).format(s=sql.Identifier(pg.name))
    with anyio.fail_after(45):
        for round_no in range(4):
            started, finished = await run_and_kill(pg, f"r{round_no}", rng.uniform(0.05, 0.4))
            total_started += len(started)
            async with await PostgresJournal.open(pg.url, schema=pg.name, readonly=True) as r:
                attempts = {
                    a.client_request_id: a
                    for a in await r.attempts("crash")
                    if a.client_request_id.startswith(f"r{round_no}-")
                }
            assert started <= attempts.keys()
            assert finished <= started
            assert all(attempts[c].outcome is AttemptOutcome.ACCEPTED for c in finished)
            conn = await admin(pg.url)
            async with conn:
                row = await (await conn.execute(mismatch_query)).fetchone()
            assert row == (0,)
    assert total_started > 0  # the kills did not all land before the first write
    print(f"\nSIGKILL rounds: {total_started} reported starts, all found afterwards")
