"""The journal contract, run against every backend: SQLite and PostgreSQL.

Round trips of every record type, target bookkeeping, ordering, run status, replace_plan,
re-finishing an attempt, refusals (secrets, duplicates, bad writes), group commit, close. Each
test runs once per backend (``[sqlite]``, ``[postgres]``); the PostgreSQL run needs a server
(see ``pgserver``) and is marked ``postgres``. These tests were the backend-neutral part of
``test_journal_sqlite_records.py``; what only SQLite does stays there and in the other
``test_journal_sqlite_*`` modules, what only PostgreSQL does is in ``test_journal_pg_*``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pgserver
import pytest
from test_journal_pg_support import Backend, PostgresBackend, SqliteBackend
from test_journal_support import (
    RUN_ID,
    accepted,
    new_run,
    new_targets,
    start,
)

from fleet_reimage.journal import (
    AttemptEnd,
    AttemptOutcome,
    AttemptRecord,
    Exclusion,
    JournalError,
    NewTarget,
    RunEvent,
    RunRecord,
    RunStatus,
    TargetChange,
    TargetRecord,
    TargetState,
)
from fleet_reimage.journal.poolops import PoolOpEnd, PoolOpStart

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "j.db")
        return
    server: pgserver.PgServer = request.getfixturevalue("pg_server")
    with pgserver.fresh_schema(server) as schema:
        yield PostgresBackend(server.url, schema)


async def test_run_round_trips_with_its_options(backend: Backend) -> None:
    options = {"deadline": 3600.5, "waves": [1, 2, 3], "health": {"wait": True, "grace": None}}
    run = new_run(created_at=1_000.0, options=options)
    with anyio.fail_after(10):
        async with await backend.open() as journal:
            await journal.create_run(run, new_targets(3), [])
            got = await journal.get_run(RUN_ID)
            assert await journal.get_run("no-such-run") is None
    assert got == RunRecord(
        run_id=run.run_id, name=run.name, action="reimage", plan_path=run.plan_path,
        plan_text=run.plan_text, plan_sha256=run.plan_sha256, options=options,
        created_at=1_000.0, updated_at=1_000.0, ended_at=None, status=RunStatus.RUNNING,
        reason=None, host="host-a", pid=4242,
    )  # fmt: skip


async def test_runs_are_listed_newest_first(backend: Backend) -> None:
    with anyio.fail_after(10):
        async with await backend.open() as journal:
            for run_id, created in [("b", 20.0), ("a", 30.0), ("c", 10.0), ("d", 30.0)]:
                await journal.create_run(new_run(run_id, created), new_targets(1), [])
            listed = [r.run_id for r in await journal.runs()]
    assert listed == ["d", "a", "b", "c"]  # same time: the later one first


async def test_targets_and_exclusions_round_trip_in_order(backend: Backend) -> None:
    targets = [
        NewTarget("acct", "zeta", "n-9", wave=1, position=0),
        NewTarget("acct", "alpha", "n-1", wave=0, position=7),
        NewTarget("acct2", "alpha", "n-1", wave=0, position=8),
    ]
    exclusions = [
        Exclusion("acct", "beta", None, "pool excluded by selector"),
        Exclusion("acct", "alpha", "n-2", "node is idle-protected"),
    ]
    with anyio.fail_after(10):
        async with await backend.open() as journal:
            recorded = await journal.create_run(new_run(), targets, exclusions)
            got = await journal.targets(RUN_ID)
            assert recorded == got  # what create_run hands back is what was recorded
            assert await journal.exclusions(RUN_ID) == exclusions
            assert await journal.targets("other") == []
            # A second run's targets follow the first's, and come back as recorded too.
            second = await journal.create_run(new_run("run-2"), targets[:2], [])
            assert second == await journal.targets("run-2")
            assert min(t.target_id for t in second) > max(t.target_id for t in got)
    assert [g.target_id for g in got] == sorted(g.target_id for g in got)
    assert [(g.account, g.pool, g.node_id, g.wave, g.position) for g in got] == [
        (t.account, t.pool, t.node_id, t.wave, t.position) for t in targets
    ]
    assert got[0] == TargetRecord(
        target_id=got[0].target_id, run_id=RUN_ID, account="acct", pool="zeta", node_id="n-9",
        wave=1, position=0, state=TargetState.PENDING, updated_at=1_000.0,
    )  # fmt: skip


async def test_attempts_move_the_target_through_its_states(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(2)
        async with journal:
            tid = ids[0]
            await journal.attempt_started(start(tid, "c1", 2_000.0))
            [t] = [t for t in await journal.targets(RUN_ID) if t.target_id == tid]
            assert (t.state, t.attempts, t.first_sent_at, t.last_sent_at) == (
                TargetState.IN_FLIGHT, 1, 2_000.0, 2_000.0,
            )  # fmt: skip
            # Connect failure: back to pending, with the code kept for the operator.
            await journal.attempt_finished(
                AttemptEnd(RUN_ID, tid, "c1", 2_001.0, AttemptOutcome.NOT_SENT,
                           TargetState.PENDING, error_code="ConnectError", reason="refused")
            )  # fmt: skip
            [t] = [t for t in await journal.targets(RUN_ID) if t.target_id == tid]
            assert (t.state, t.reason, t.last_code, t.finished_at) == (
                TargetState.PENDING, "refused", "ConnectError", None,
            )  # fmt: skip
            await journal.attempt_started(start(tid, "c2", 2_010.0, attempt_no=2))
            await journal.attempt_finished(accepted(tid, "c2", 2_011.0))
            [t] = [t for t in await journal.targets(RUN_ID) if t.target_id == tid]
            assert (t.state, t.attempts, t.first_sent_at, t.last_sent_at) == (
                TargetState.ACCEPTED, 2, 2_000.0, 2_010.0,
            )  # fmt: skip
            assert (t.accepted_at, t.finished_at, t.last_code, t.reason) == (
                2_011.0, None, "202", None,
            )  # fmt: skip
            await journal.target_changed(TargetChange(RUN_ID, tid, TargetState.HEALTHY, 2_500.0))
            [t] = [t for t in await journal.targets(RUN_ID) if t.target_id == tid]
    assert (t.state, t.accepted_at, t.finished_at, t.updated_at) == (
        TargetState.HEALTHY, 2_011.0, 2_500.0, 2_500.0,
    )  # fmt: skip


async def test_a_new_attempt_clears_the_finish_of_the_last(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, [tid] = await backend.with_run(1)
        async with journal:
            await journal.attempt_started(start(tid, "c1", 10.0))
            await journal.attempt_finished(
                AttemptEnd(RUN_ID, tid, "c1", 11.0, AttemptOutcome.REJECTED, TargetState.FAILED,
                           status=500, reason="server error")
            )  # fmt: skip
            [failed] = await journal.targets(RUN_ID)
            await journal.attempt_started(start(tid, "c2", 20.0, attempt_no=2))  # a retry
            [retried] = await journal.targets(RUN_ID)
            await journal.target_changed(
                TargetChange(RUN_ID, tid, TargetState.DONE_UNVERIFIED, 30.0)
            )
            [done] = await journal.targets(RUN_ID)
    assert (failed.state, failed.finished_at, failed.last_code) == (
        TargetState.FAILED, 11.0, "500",
    )  # fmt: skip
    assert (retried.state, retried.reason, retried.finished_at, retried.attempts) == (
        TargetState.IN_FLIGHT, None, None, 2,
    )  # fmt: skip
    assert (retried.first_sent_at, retried.last_sent_at, retried.last_code) == (10.0, 20.0, "500")
    # done_unverified counts as accepted, and is terminal.
    assert (done.accepted_at, done.finished_at) == (30.0, 30.0)


async def test_attempt_records_round_trip_ordered_by_sent_at(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(3)
        async with journal:
            await journal.attempt_started(start(ids[0], "late", 3_000.0))
            await journal.attempt_started(start(ids[1], "early", 1_500.0))
            await journal.attempt_started(start(ids[2], "lost", 2_000.0))  # never finished
            await journal.attempt_finished(
                AttemptEnd(RUN_ID, ids[1], "early", 1_501.5, AttemptOutcome.REJECTED,
                           TargetState.FAILED, status=409, request_id="req-9",
                           error_code="NodeStateUnusable", error_message="unusable",
                           latency_ms=12.5, reason="node is unusable")
            )  # fmt: skip
            got = await journal.attempts(RUN_ID)
            failed = next(t for t in await journal.targets(RUN_ID) if t.target_id == ids[1])
    assert got == [
        AttemptRecord(RUN_ID, ids[1], 1, "reimage", "early", 1_500.0, 1_501.5,
                      AttemptOutcome.REJECTED, 409, "req-9", "NodeStateUnusable", "unusable",
                      12.5),
        AttemptRecord(RUN_ID, ids[2], 1, "reimage", "lost", 2_000.0, None, None, None, None,
                      None, None, None),
        AttemptRecord(RUN_ID, ids[0], 1, "reimage", "late", 3_000.0, None, None, None, None,
                      None, None, None),
    ]  # fmt: skip
    assert (failed.state, failed.reason, failed.finished_at, failed.last_code) == (
        TargetState.FAILED, "node is unusable", 1_501.5, "NodeStateUnusable",
    )  # fmt: skip


async def test_events_round_trip_ordered_by_time(backend: Backend) -> None:
    events = [
        RunEvent(RUN_ID, 1_050.0, "wave_started", "acct", "pool0", {"wave": 0, "size": 10}),
        RunEvent(RUN_ID, 1_010.0, "throttle_changed", data={"limit": 8.5}),
        RunEvent(RUN_ID, 1_050.0, "paused", data={"why": ["budget", None]}),
        RunEvent(RUN_ID, 900.0, "clock_skew"),  # earlier than the run: updated_at stays
    ]
    with anyio.fail_after(10):
        journal, _ = await backend.with_run(1)
        async with journal:
            for event in events:
                await journal.record_event(event)
            got = await journal.events(RUN_ID)
            run = await journal.get_run(RUN_ID)
    assert got == [events[3], events[1], events[0], events[2]]  # by time, then as recorded
    assert run is not None
    assert run.updated_at == 1_050.0  # writes move the run's updated_at forward, never back


async def test_concurrent_writes_keep_their_order(backend: Backend) -> None:
    states = [TargetState.ACCEPTED, TargetState.FAILED, TargetState.SKIPPED] * 30
    states.append(TargetState.GONE)
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(1)
        async with journal:
            async with anyio.create_task_group() as tg:
                for n, state in enumerate(states):
                    change = TargetChange(RUN_ID, ids[0], state, 100.0 + n, reason=f"#{n}")
                    tg.start_soon(journal.target_changed, change)
                    tg.start_soon(journal.record_event, RunEvent(RUN_ID, 7.0, f"e{n}"))
            [target] = await journal.targets(RUN_ID)
            kinds = [e.kind for e in await journal.events(RUN_ID)]
            stats = journal.writer_stats
    assert (target.state, target.reason, target.updated_at) == (
        TargetState.GONE, f"#{len(states) - 1}", 100.0 + len(states) - 1,
    )  # fmt: skip
    assert kinds == [f"e{n}" for n in range(len(states))]
    assert stats is not None and stats.largest_batch > 1  # they really shared transactions


async def test_group_commit_counts_transactions_and_units(backend: Backend) -> None:
    with anyio.fail_after(20):
        journal, ids = await backend.with_run(500)
        async with journal:
            before = journal.writer_stats
            async with anyio.create_task_group() as tg:
                for n, tid in enumerate(ids):
                    tg.start_soon(journal.attempt_started, start(tid, f"c{n}", float(n)))
            after = journal.writer_stats
            await journal.attempt_started(start(ids[0], "alone", 1_000.0))
            alone = journal.writer_stats
            recorded = len(await journal.attempts(RUN_ID))
    assert before is not None and after is not None and alone is not None
    assert after.units - before.units == 500 == recorded - 1
    assert 1 <= after.transactions - before.transactions <= 25  # far below one per call
    assert after.largest_batch >= 20
    assert (alone.transactions - after.transactions, alone.units - after.units) == (1, 1)


async def test_run_status_changes(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, _ = await backend.with_run(1)
        async with journal:
            await journal.set_run_status(RUN_ID, RunStatus.STOPPED, "budget exceeded", 2_000.0)
            stopped = await journal.get_run(RUN_ID)
            await journal.set_run_status(
                RUN_ID, RunStatus.RUNNING, None, 3_000.0, options={"deadline": 60}
            )
            resumed = await journal.get_run(RUN_ID)
            await journal.set_run_status(RUN_ID, RunStatus.FINISHED, None, 4_000.0)
            finished = await journal.get_run(RUN_ID)
            with pytest.raises(JournalError, match="no run nope"):
                await journal.set_run_status("nope", RunStatus.FINISHED, None, 1.0)
    assert stopped is not None and resumed is not None and finished is not None
    assert (stopped.status, stopped.reason, stopped.ended_at, stopped.updated_at) == (
        RunStatus.STOPPED, "budget exceeded", 2_000.0, 2_000.0,
    )  # fmt: skip
    assert (resumed.status, resumed.ended_at, resumed.options) == (
        RunStatus.RUNNING, None, {"deadline": 60},
    )  # fmt: skip
    assert (resumed.host, resumed.pid) == (socket.gethostname(), os.getpid())
    assert (finished.status, finished.ended_at, finished.options) == (
        RunStatus.FINISHED, 4_000.0, {"deadline": 60},
    )  # fmt: skip
    assert (finished.host, finished.pid) == (socket.gethostname(), os.getpid())


async def test_replace_plan(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, _ = await backend.with_run(1)
        async with journal:
            await journal.replace_plan(RUN_ID, "pools: [b]\n", "f" * 64)
            run = await journal.get_run(RUN_ID)
            with pytest.raises(JournalError, match="no run nope"):
                await journal.replace_plan("nope", "x", "y")
    assert run is not None
    assert (run.plan_text, run.plan_sha256) == ("pools: [b]\n", "f" * 64)
    assert run.updated_at > 1_000.0


async def test_a_bad_write_fails_alone(backend: Backend) -> None:
    results: dict[str, str] = {}

    async def attempt(target_id: int, crid: str) -> None:
        try:
            await journal.attempt_started(start(target_id, crid, 5.0))
            results[crid] = "ok"
        except JournalError as exc:
            results[crid] = str(exc)

    with anyio.fail_after(10):
        journal, ids = await backend.with_run(4, batch_window=0.05)
        async with journal:
            await journal.attempt_started(start(ids[0], "dup", 1.0))
            before = journal.writer_stats
            async with anyio.create_task_group() as tg:  # all runnable at once: one batch
                tg.start_soon(attempt, ids[1], "good-1")
                tg.start_soon(attempt, 999_999, "unknown-target")
                tg.start_soon(attempt, ids[2], "dup")
                tg.start_soon(attempt, ids[3], "good-2")
            after = journal.writer_stats
            with pytest.raises(JournalError, match="no attempt missing"):
                await journal.attempt_finished(accepted(ids[0], "missing", 6.0))
            with pytest.raises(JournalError, match="no target 999999"):
                await journal.target_changed(TargetChange(RUN_ID, 999_999, TargetState.GONE, 6))
            with pytest.raises(JournalError, match="event x was not recorded"):
                await journal.record_event(RunEvent("no-such-run", 6.0, "x"))
            recorded = {a.client_request_id: a.target_id for a in await journal.attempts(RUN_ID)}
            targets = {t.target_id: t for t in await journal.targets(RUN_ID)}
            await journal.attempt_started(start(ids[2], "after", 7.0))  # the writer still works
    assert before is not None and after is not None
    assert after.units - before.units == 2  # the two good ones, committed together
    assert results["good-1"] == results["good-2"] == "ok"
    assert "no target 999999 in run run-1" in results["unknown-target"]
    assert results["dup"].startswith("start of attempt dup was not recorded: ")
    assert re.search(backend.duplicate_crid, results["dup"]), results["dup"]
    assert recorded == {"dup": ids[0], "good-1": ids[1], "good-2": ids[3]}
    assert targets[ids[2]].state is TargetState.PENDING  # the refused start left no trace
    assert targets[ids[2]].attempts == 0


async def test_create_run_refuses_duplicates(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, _ = await backend.with_run(1)
        async with journal:
            with pytest.raises(JournalError, match="run run-1 already exists"):
                await journal.create_run(new_run(), new_targets(1), [])
            twice = [*new_targets(3), new_targets(3)[1]]
            with pytest.raises(
                ValueError, match=r"tvm-000001 of pool pool1 \(acct\) is listed twice"
            ):
                await journal.create_run(new_run("run-2"), twice, [])
            assert await journal.get_run("run-2") is None
            assert await journal.targets("run-2") == []
            assert len(await journal.targets(RUN_ID)) == 1  # the first run is untouched


@pytest.mark.parametrize(
    "options",
    [
        {"key": "x"},
        {"token": "x"},
        {"password": "x"},
        {"secret": "x"},
        {"apiKey": "x"},
        {"client_secret": "x"},
        {"auth": {"SAS_TOKEN": "x"}},
        {"url": "https://a.blob.core.windows.net/c?sv=2020&sig=abc"},
    ],
)
async def test_create_run_refuses_secret_looking_options(
    backend: Backend, options: dict[str, object]
) -> None:
    with anyio.fail_after(10):
        async with await backend.open() as journal:
            with pytest.raises(ValueError, match=r"looks like a (secret|credential)"):
                await journal.create_run(new_run(options=options), new_targets(1), [])
            assert await journal.runs() == []
            await journal.create_run(new_run(), new_targets(1), [])
            with pytest.raises(ValueError, match="looks like a"):
                await journal.set_run_status(RUN_ID, RunStatus.STOPPED, None, 2.0, options)
            with pytest.raises(ValueError, match="looks like a"):
                await journal.record_event(RunEvent(RUN_ID, 2.0, "x", data=options))
            run = await journal.get_run(RUN_ID)
            events = await journal.events(RUN_ID)
    assert run is not None and run.options == {} and run.status is RunStatus.RUNNING
    assert events == []


async def test_readonly_and_closed_journals_refuse_writes(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(1)
        async with await backend.open_reader() as reader:
            with pytest.raises(JournalError, match="opened read-only"):
                await reader.attempt_started(start(ids[0], "c1", 1.0))
            with pytest.raises(JournalError, match="opened read-only"):
                await reader.lock_for_writing("h 1 r")
            assert len(await reader.targets(RUN_ID)) == 1
            assert reader.writer_stats is None
        await journal.close()
        await journal.close()  # twice is fine
        with pytest.raises(JournalError, match="is closed"):
            await journal.attempt_started(start(ids[0], "c1", 1.0))
        with pytest.raises(JournalError, match="is closed"):
            await journal.targets(RUN_ID)


async def test_close_flushes_queued_writes(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(50, batch_window=0.2)
        async with anyio.create_task_group() as tg:
            for n, tid in enumerate(ids):
                tg.start_soon(journal.attempt_started, start(tid, f"c{n}", 1.0))
            await anyio.lowlevel.checkpoint()  # queued; close() comes before their commit
            await journal.close()
        async with await backend.open_reader() as reader:
            assert len(await reader.attempts(RUN_ID)) == 50


async def test_an_in_doubt_attempt_can_be_finished_again_when_reconciled(
    backend: Backend,
) -> None:
    with anyio.fail_after(10):
        journal, ids = await backend.with_run(1)
        async with journal:
            await journal.attempt_started(start(ids[0], "c1", 10.0))
            await journal.attempt_finished(
                AttemptEnd(RUN_ID, ids[0], "c1", 40.0, AttemptOutcome.IN_DOUBT,
                           TargetState.IN_FLIGHT, error_code="ReadTimeout")
            )  # fmt: skip
            [doubtful] = await journal.targets(RUN_ID)
            await journal.attempt_finished(
                AttemptEnd(RUN_ID, ids[0], "c1", 90.0, AttemptOutcome.RECONCILED_APPLIED,
                           TargetState.ACCEPTED)
            )  # fmt: skip
            [attempt] = await journal.attempts(RUN_ID)
            [target] = await journal.targets(RUN_ID)
    assert (doubtful.state, doubtful.last_code, doubtful.accepted_at) == (
        TargetState.IN_FLIGHT, "ReadTimeout", None,
    )  # fmt: skip
    assert (attempt.outcome, attempt.finished_at) == (AttemptOutcome.RECONCILED_APPLIED, 90.0)
    assert (target.state, target.accepted_at, target.last_code, target.attempts) == (
        TargetState.ACCEPTED, 90.0, "ReadTimeout", 1,
    )  # fmt: skip


async def test_accepted_at_is_kept_when_already_accepted(backend: Backend) -> None:
    with anyio.fail_after(10):
        journal, [tid] = await backend.with_run(1)
        async with journal:
            await journal.attempt_started(start(tid, "c1", 10.0))
            await journal.attempt_finished(accepted(tid, "c1", 11.0))
            # The same attempt finished again (a late reconcile): still accepted since 11.
            await journal.attempt_finished(accepted(tid, "c1", 50.0))
            await journal.target_changed(TargetChange(RUN_ID, tid, TargetState.DONE_UNVERIFIED, 60))
            [target] = await journal.targets(RUN_ID)
            [attempt] = await journal.attempts(RUN_ID)
    assert (target.accepted_at, target.finished_at, target.attempts) == (11.0, 60.0, 1)
    assert attempt.finished_at == 50.0


async def test_pool_operations_round_trip_and_an_unanswered_one_reads_in_doubt(
    backend: Backend,
) -> None:
    """action: replace's rows (schema: SQLite 2, PostgreSQL 5): written before the call,
    given their outcome after; one without an outcome is in doubt."""
    start = PoolOpStart(RUN_ID, "acct", "p", "removenodes", "cid-1", ("n1", "n2"), 4, 1, 10.0)
    other = PoolOpStart(RUN_ID, "acct", "p", "resize", "cid-2", (), 6, 1, 11.0)
    with anyio.fail_after(10):
        async with await backend.open() as journal:
            await journal.create_run(new_run(created_at=1.0), new_targets(2), [])
            await journal.pool_op_started(start)
            await journal.pool_op_started(other)
            await journal.pool_op_finished(PoolOpEnd(RUN_ID, "cid-1", 12.0, "in_doubt"))
            await journal.pool_op_finished(PoolOpEnd(RUN_ID, "cid-1", 13.0, "reconciled_applied"))
            with pytest.raises(JournalError):
                await journal.pool_op_finished(PoolOpEnd(RUN_ID, "no-such", 14.0, "accepted"))
        async with await backend.open_reader() as reader:
            ops = await reader.pool_ops(RUN_ID)
    assert [(o.client_request_id, o.node_ids, o.outcome, o.in_doubt) for o in ops] == [
        ("cid-1", ("n1", "n2"), "reconciled_applied", False),
        ("cid-2", (), None, True),
    ]
    assert (ops[0].target_dedicated, ops[0].target_low_priority, ops[0].finished_at) == (4, 1, 13.0)
