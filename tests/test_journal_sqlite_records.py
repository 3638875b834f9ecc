"""SQLite journal: every record type round-trips, target bookkeeping, ordering, run status."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import anyio
import pytest
from test_journal_support import (
    RUN_ID,
    accepted,
    journal_with_run,
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
    model,
    open_journal,
)
from fleet_reimage.journal.codec import secret_like_key
from fleet_reimage.journal.sqlite import SqliteJournal

pytestmark = pytest.mark.anyio


async def test_run_round_trips_with_its_options(tmp_path: Path) -> None:
    options = {"deadline": 3600.5, "waves": [1, 2, 3], "health": {"wait": True, "grace": None}}
    run = new_run(created_at=1_000.0, options=options)
    with anyio.fail_after(10):
        async with await SqliteJournal.open(tmp_path / "j.db") as journal:
            await journal.create_run(run, new_targets(3), [])
            got = await journal.get_run(RUN_ID)
            assert await journal.get_run("no-such-run") is None
    assert got == RunRecord(
        run_id=run.run_id, name=run.name, action="reimage", plan_path=run.plan_path,
        plan_text=run.plan_text, plan_sha256=run.plan_sha256, options=options,
        created_at=1_000.0, updated_at=1_000.0, ended_at=None, status=RunStatus.RUNNING,
        reason=None, host="host-a", pid=4242,
    )  # fmt: skip


async def test_runs_are_listed_newest_first(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with await SqliteJournal.open(tmp_path / "j.db") as journal:
            for run_id, created in [("b", 20.0), ("a", 30.0), ("c", 10.0), ("d", 30.0)]:
                await journal.create_run(new_run(run_id, created), new_targets(1), [])
            listed = [r.run_id for r in await journal.runs()]
    assert listed == ["d", "a", "b", "c"]  # same time: the later one first


async def test_targets_and_exclusions_round_trip_in_order(tmp_path: Path) -> None:
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
        async with await SqliteJournal.open(tmp_path / "j.db") as journal:
            await journal.create_run(new_run(), targets, exclusions)
            got = await journal.targets(RUN_ID)
            assert await journal.exclusions(RUN_ID) == exclusions
            assert await journal.targets("other") == []
    assert [g.target_id for g in got] == sorted(g.target_id for g in got)
    assert [(g.account, g.pool, g.node_id, g.wave, g.position) for g in got] == [
        (t.account, t.pool, t.node_id, t.wave, t.position) for t in targets
    ]
    assert got[0] == TargetRecord(
        target_id=got[0].target_id, run_id=RUN_ID, account="acct", pool="zeta", node_id="n-9",
        wave=1, position=0, state=TargetState.PENDING, updated_at=1_000.0,
    )  # fmt: skip


async def test_attempts_move_the_target_through_its_states(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(tmp_path / "j.db", 2)
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


async def test_attempt_records_round_trip_ordered_by_sent_at(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(tmp_path / "j.db", 3)
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


async def test_events_round_trip_ordered_by_time(tmp_path: Path) -> None:
    events = [
        RunEvent(RUN_ID, 1_050.0, "wave_started", "acct", "pool0", {"wave": 0, "size": 10}),
        RunEvent(RUN_ID, 1_010.0, "throttle_changed", data={"limit": 8.5}),
        RunEvent(RUN_ID, 1_050.0, "paused", data={"why": ["budget", None]}),
        RunEvent(RUN_ID, 900.0, "clock_skew"),  # earlier than the run: updated_at stays
    ]
    with anyio.fail_after(10):
        journal, _ = await journal_with_run(tmp_path / "j.db", 1)
        async with journal:
            for event in events:
                await journal.record_event(event)
            got = await journal.events(RUN_ID)
            run = await journal.get_run(RUN_ID)
    assert got == [events[3], events[1], events[0], events[2]]  # by time, then as recorded
    assert run is not None
    assert run.updated_at == 1_050.0  # writes move the run's updated_at forward, never back


async def test_concurrent_writes_keep_their_order(tmp_path: Path) -> None:
    states = [TargetState.ACCEPTED, TargetState.FAILED, TargetState.SKIPPED] * 30
    states.append(TargetState.GONE)
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(tmp_path / "j.db", 1)
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


async def test_run_status_changes(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, _ = await journal_with_run(tmp_path / "j.db", 1)
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


async def test_replace_plan(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, _ = await journal_with_run(tmp_path / "j.db", 1)
        async with journal:
            await journal.replace_plan(RUN_ID, "pools: [b]\n", "f" * 64)
            run = await journal.get_run(RUN_ID)
            with pytest.raises(JournalError, match="no run nope"):
                await journal.replace_plan("nope", "x", "y")
    assert run is not None
    assert (run.plan_text, run.plan_sha256) == ("pools: [b]\n", "f" * 64)
    assert run.updated_at > 1_000.0


async def test_a_bad_write_fails_alone(tmp_path: Path) -> None:
    results: dict[str, str] = {}

    async def attempt(target_id: int, crid: str) -> None:
        try:
            await journal.attempt_started(start(target_id, crid, 5.0))
            results[crid] = "ok"
        except JournalError as exc:
            results[crid] = str(exc)

    with anyio.fail_after(10):
        journal, ids = await journal_with_run(tmp_path / "j.db", 4, batch_window=0.05)
        async with journal:
            await journal.attempt_started(start(ids[0], "dup", 1.0))
            async with anyio.create_task_group() as tg:  # all in one batch (50 ms window)
                tg.start_soon(attempt, ids[1], "good-1")
                tg.start_soon(attempt, 999_999, "unknown-target")
                tg.start_soon(attempt, ids[2], "dup")
                tg.start_soon(attempt, ids[3], "good-2")
            with pytest.raises(JournalError, match="no attempt missing"):
                await journal.attempt_finished(accepted(ids[0], "missing", 6.0))
            with pytest.raises(JournalError, match="no target 999999"):
                await journal.target_changed(TargetChange(RUN_ID, 999_999, TargetState.GONE, 6))
            recorded = {a.client_request_id: a.target_id for a in await journal.attempts(RUN_ID)}
            targets = {t.target_id: t for t in await journal.targets(RUN_ID)}
    assert results["good-1"] == results["good-2"] == "ok"
    assert "no target 999999 in run run-1" in results["unknown-target"]
    assert "UNIQUE constraint failed: attempts.client_request_id" in results["dup"]
    assert recorded == {"dup": ids[0], "good-1": ids[1], "good-2": ids[3]}
    assert targets[ids[2]].state is TargetState.PENDING  # the refused start left no trace


async def test_create_run_refuses_duplicates(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, _ = await journal_with_run(tmp_path / "j.db", 1)
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
    tmp_path: Path, options: dict[str, object]
) -> None:
    with anyio.fail_after(10):
        async with await SqliteJournal.open(tmp_path / "j.db") as journal:
            with pytest.raises(ValueError, match=r"looks like a (secret|credential)"):
                await journal.create_run(new_run(options=options), new_targets(1), [])
            assert await journal.runs() == []
            await journal.create_run(new_run(), new_targets(1), [])
            with pytest.raises(ValueError, match="looks like a"):
                await journal.set_run_status(RUN_ID, RunStatus.STOPPED, None, 2.0, options)
            with pytest.raises(ValueError, match="looks like a"):
                await journal.record_event(RunEvent(RUN_ID, 2.0, "x", data=options))
            run = await journal.get_run(RUN_ID)
    assert run is not None and run.options == {} and run.status is RunStatus.RUNNING


def test_no_model_record_has_a_secret_field() -> None:
    records = [
        v for v in vars(model).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
    ]
    assert len(records) >= 10
    names = [(r.__name__, f.name) for r in records for f in dataclasses.fields(r)]
    assert [n for n in names if secret_like_key(n[1])] == []


async def test_readonly_and_closed_journals_refuse_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(path, 1)
        async with await SqliteJournal.open(path, readonly=True) as reader:
            with pytest.raises(JournalError, match="opened read-only"):
                await reader.attempt_started(start(ids[0], "c1", 1.0))
            with pytest.raises(JournalError, match="opened read-only"):
                await reader.lock_for_writing("h 1 r")
            assert len(await reader.targets(RUN_ID)) == 1
        await journal.close()
        await journal.close()  # twice is fine
        with pytest.raises(JournalError, match="is closed"):
            await journal.attempt_started(start(ids[0], "c1", 1.0))
        with pytest.raises(JournalError, match="is closed"):
            await journal.targets(RUN_ID)


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
        with pytest.raises(JournalError, match="PostgreSQL journals are not supported yet"):
            await open_journal("postgresql://fleet@db.example/journal")
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


async def test_an_in_doubt_attempt_can_be_finished_again_when_reconciled(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        journal, ids = await journal_with_run(tmp_path / "j.db", 1)
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
