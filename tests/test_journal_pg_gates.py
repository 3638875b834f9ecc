"""Gate turns of a shared run (``postgres_gates``): one runner at a time per gate, pool and
wave, across journals opened as separate runners would; the answer recorded in a turn is
what the next turn reads; a runner whose connection dies loses its turn."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pgserver
import pytest
from test_journal_pg_support import admin, all_closed, pool_targets, shared_run
from test_journal_support import RUN_ID

from fleet_reimage.journal.model import RunEvent
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.postgres_gates import GATE_LOCK_CLASS, gate_lock_key
from fleet_reimage.journal.shared import GateKey, GateResult

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

KEY = GateKey("slo", "before_wave", 2, "acct", "p")


def answer(key: GateKey, passed: bool) -> RunEvent:
    data = {"gate": key.gate, "when": key.when, "wave": key.wave, "exit_code": 0 if passed else 4}
    kind = "gate_passed" if passed else "gate_failed"
    return RunEvent(RUN_ID, time.time(), kind, key.account, key.pool, data)


async def held_elsewhere(pg: pgserver.PgSchema, key: GateKey) -> bool:
    """Whether another session holds the turn at ``key`` now (an operator's try of the lock)."""
    conn = await admin(pg.url)
    try:
        lock = (GATE_LOCK_CLASS, gate_lock_key(pg.name, RUN_ID, key))
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s::int4, %s::int4)", lock)
        row = await cursor.fetchone()
        assert row is not None
        return not row[0]
    finally:
        await conn.close()  # lets go of the lock if this try took it


async def test_the_next_turn_reads_the_answer_the_last_one_recorded(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(30):
        a, b = await shared_run(pg, pool_targets("p", [2]))
        async with all_closed([a, b]):
            mark = await b.event_mark(RUN_ID)
            async with a.gate_turn(RUN_ID, KEY) as turn:
                assert turn.last is None  # never asked in this run
                assert await held_elsewhere(pg, KEY)
                assert not await held_elsewhere(pg, GateKey("slo", "before_wave", 3, "acct", "p"))
                await turn.record(answer(KEY, False))
            assert not await held_elsewhere(pg, KEY)  # the turn ended with the with
            async with b.gate_turn(RUN_ID, KEY) as turn:
                failed = turn.last
                assert failed is not None and not failed.passed and failed.event_id > mark
                await turn.record(answer(KEY, True))
            async with a.gate_turn(RUN_ID, KEY) as turn:
                assert turn.last == GateResult(True, failed.event_id + 1)
            async with a.gate_turn(RUN_ID, GateKey("slo", "before_wave", 2, None, None)) as turn:
                assert turn.last is None  # a step's gate is another ask than a pool's
            events = [e.kind for e in await a.events(RUN_ID)]
    assert events.count("gate_failed") == 1 and events.count("gate_passed") == 1


async def test_turns_at_one_gate_take_turns_across_runners(pg: pgserver.PgSchema) -> None:
    inside: list[int] = []
    most = 0

    async def ask(journal: PostgresJournal, n: int) -> None:
        nonlocal most
        async with journal.gate_turn(RUN_ID, KEY) as turn:
            inside.append(n)
            most = max(most, len(inside))
            if turn.last is None:
                await turn.record(answer(KEY, True))
            await anyio.lowlevel.checkpoint()
            inside.remove(n)

    with anyio.fail_after(30):
        journals = await shared_run(pg, pool_targets("p", [2]), journals=3)
        async with all_closed(journals):
            async with anyio.create_task_group() as group:
                for n, journal in enumerate(journals * 2):
                    group.start_soon(ask, journal, n)
            kinds = [e.kind for e in await journals[0].events(RUN_ID)]
    assert most == 1  # never two runners in the turn at once
    assert kinds.count("gate_passed") == 1  # asked once; the others read its answer
