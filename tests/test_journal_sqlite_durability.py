"""SQLite journal durability: write-ahead visibility, SIGKILL mid-run, full disk, I/O errors."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from test_journal_support import (
    crids_in,
    journal_with_run,
    ro_connect,
    run_python,
    start,
)

from fleet_reimage.journal import AttemptOutcome, JournalError
from fleet_reimage.journal.sqlite import SqliteJournal

pytestmark = pytest.mark.anyio


async def test_a_start_is_on_disk_for_others_when_the_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    look = (
        "import sqlite3, sys, urllib.parse\n"
        "uri = 'file:' + urllib.parse.quote(sys.argv[1]) + '?mode=ro'\n"
        "conn = sqlite3.connect(uri, uri=True)\n"
        "q = 'SELECT count(*) FROM attempts WHERE client_request_id = ?'\n"
        "print(conn.execute(q, (sys.argv[2],)).fetchone()[0])\n"
    )
    with anyio.fail_after(20):
        # A long batch window makes "queued but not yet committed" last long enough to see.
        journal, ids = await journal_with_run(path, 2, batch_window=0.3)
        async with journal, anyio.create_task_group() as tg:
            tg.start_soon(journal.attempt_started, start(ids[0], "crid-1", 1.0))
            await anyio.sleep(0.05)
            assert "crid-1" not in await anyio.to_thread.run_sync(crids_in, path)
            await journal.attempt_started(start(ids[1], "crid-2", 2.0))  # same batch
            # Returned: a fresh connection in a thread and another process both see it.
            assert {"crid-1", "crid-2"} <= await anyio.to_thread.run_sync(crids_in, path)
            other = await anyio.to_thread.run_sync(run_python, look, str(path), "crid-2")
            assert other.stdout.strip() == "1", other


CRASH_CHILD = """
import sys, time, anyio
from pathlib import Path
from fleet_reimage.journal import (AttemptEnd, AttemptOutcome, AttemptStart, NewRun, NewTarget,
                                   TargetState)
from fleet_reimage.journal.sqlite import SqliteJournal

async def main() -> None:
    journal = await SqliteJournal.open(Path(sys.argv[1]))
    prefix = sys.argv[2]
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


async def run_and_kill(path: Path, prefix: str, delay: float) -> tuple[set[str], set[str]]:
    """Start the child, SIGKILL it ``delay`` s after it is ready; what it said was durable."""
    out = b""
    process = await anyio.open_process(
        [sys.executable, "-c", CRASH_CHILD, str(path), prefix], stderr=subprocess.STDOUT
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


async def test_sigkill_loses_nothing_that_was_reported_durable(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    rng = random.Random()
    total_started = 0
    with anyio.fail_after(30):
        for round_no in range(5):
            started, finished = await run_and_kill(path, f"r{round_no}", rng.uniform(0.05, 0.3))
            total_started += len(started)
            async with await SqliteJournal.open(path) as journal:  # opens cleanly (quick_check)
                attempts = {
                    a.client_request_id: a
                    for a in await journal.attempts("crash")
                    if a.client_request_id.startswith(f"r{round_no}-")
                }
            assert started <= attempts.keys()
            assert finished <= started
            assert all(attempts[c].outcome is AttemptOutcome.ACCEPTED for c in finished)
            with ro_connect(path) as conn:  # each start moved its target in the same commit
                mismatched = conn.execute(
                    "SELECT count(*) FROM targets t WHERE attempts !="
                    " (SELECT count(*) FROM attempts a WHERE a.target_id = t.target_id)"
                ).fetchone()[0]
            conn.close()
            assert mismatched == 0
    assert total_started > 0  # the kills did not all land before the first write
    print(f"\nSIGKILL rounds: {total_started} reported starts, all found after reopening")


async def test_a_full_disk_fails_the_waiting_callers(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    ok: set[str] = set()
    failed: dict[str, str] = {}

    async def attempt(target_id: int, crid: str) -> None:
        try:
            await journal.attempt_started(start(target_id, crid, 1.0))
            ok.add(crid)
        except JournalError as exc:
            failed[crid] = str(exc)

    with anyio.fail_after(20):
        journal, ids = await journal_with_run(path, 100)
        pages = await journal._call_on_writer(
            lambda c: c.execute("PRAGMA page_count").fetchone()[0]
        )
        # SQLite's own SQLITE_FULL path, as when the file system runs out of space.
        await journal._call_on_writer(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        async with journal:
            for batch in range(100):
                async with anyio.create_task_group() as tg:
                    for n in range(50):
                        tg.start_soon(attempt, ids[n], f"c{batch}-{n}")
                if failed:
                    break
            with pytest.raises(JournalError, match="database or disk is full"):
                await journal.attempt_started(start(ids[0], "after", 2.0))  # stays failed
    assert failed, "the page limit was never reached"
    assert all(
        "database or disk is full" in m and "The run must stop" in m for m in failed.values()
    )
    assert crids_in(path) == ok  # exactly the calls that returned normally are recorded


FSIZE_CHILD = """
import os, resource, signal, sys, time, anyio
from pathlib import Path
from fleet_reimage.journal import JournalError, NewRun, NewTarget, AttemptStart
from fleet_reimage.journal.sqlite import SqliteJournal

async def main() -> None:
    path = Path(sys.argv[1])
    journal = await SqliteJournal.open(path)
    run = NewRun("r", "r", "reimage", "p", "t", "s", {}, time.time(), "h", 1)
    await journal.create_run(run, [NewTarget("a", "p", f"n{i}", 0, i) for i in range(50)], [])
    ids = [t.target_id for t in await journal.targets("r")]
    # A real write error from the OS: writes past this size fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = max(os.path.getsize(path), os.path.getsize(f"{path}-wal")) + 128 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    errors = 0

    async def attempt(n: int) -> None:
        nonlocal errors
        crid = f"c{n}"
        try:
            await journal.attempt_started(AttemptStart("r", ids[n % 50], 1, "reimage", crid, 1.0))
            print("OK", crid, flush=True)
        except JournalError as exc:
            errors += 1
            print("ERR", crid, exc, flush=True)

    for batch in range(400):
        async with anyio.create_task_group() as tg:
            for n in range(batch * 25, batch * 25 + 25):
                tg.start_soon(attempt, n)
        if errors:
            break
    try:
        await journal.attempt_started(AttemptStart("r", ids[0], 1, "reimage", "after", 1.0))
    except JournalError as exc:
        print("AFTER", exc, flush=True)
    await journal.close()

anyio.run(main)
"""


async def test_an_os_write_error_fails_the_waiting_callers(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with anyio.fail_after(30):
        done = await anyio.to_thread.run_sync(run_python, FSIZE_CHILD, str(path))
        lines = done.stdout.splitlines()
        ok = {line.split(" ")[1] for line in lines if line.startswith("OK ")}
        errors = [line for line in lines if line.startswith("ERR ")]
        after = [line for line in lines if line.startswith("AFTER ")]
        assert done.returncode == 0, done.stderr
        assert errors, done.stdout[-2000:]
        assert all("disk I/O error" in e and "The run must stop" in e for e in errors), errors
        assert len(after) == 1 and "disk I/O error" in after[0]
        async with await SqliteJournal.open(path) as journal:  # intact after the failure
            recorded = {a.client_request_id for a in await journal.attempts("r")}
    assert recorded == ok
