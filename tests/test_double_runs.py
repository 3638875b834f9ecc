"""Two operators, one plan, one journal, confirming at the same instant: one run, never two.

"Create the run unless an unfinished run of this plan exists" is one atomic step in the
journal (PostgreSQL: a transaction under an advisory lock keyed by the plan's hash; SQLite:
the file's single-writer lock, and the check inside the write transaction). Each test holds
two real processes at a barrier right before that step and releases them together:

- PostgreSQL: two ``fleet-reimage run`` under pseudo-terminals, both waiting at the
  confirmation question, answered at once. The second is refused naming the run (exit 2);
  with ``--join`` it takes a share of it instead.
- SQLite: two processes calling the API behind a ``multiprocessing`` barrier.

The emulator counts reimages per node: a double run would reimage every node twice.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path
from typing import Any

import pexpect
import psycopg
import pytest
from clihelpers import PYTHON, cli_env, emulator_process, fleet_reimage
from runhelpers import KEY, KEY_ENV, write_plan

NODES = 20
TIMINGS = {"reimaging": "100ms", "starting": "100ms"}
ROLLOUT = """
    waves: [2, "100%"]
    max_unavailable: 5
    health: {wait: true, poll_interval: 100ms, timeout: 30s}
"""
QUESTION = rf"Reimage {NODES} nodes in 1 pool\? \[yes/no\] "  # "1 pool", not "1 pools"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def operator(folder: Path, *args: str) -> pexpect.spawn:
    """``fleet-reimage run`` on a terminal of its own, as an operator starts it."""
    return pexpect.spawn(
        PYTHON,
        ["-m", "fleet_reimage", "run", *args],
        cwd=str(folder),
        env=cli_env(TERM="dumb"),
        dimensions=(40, 150),
        encoding="utf-8",
        timeout=90,
    )


Outcome = tuple[int, str]  # exit status, what the terminal showed after the answer


def both_confirm_at_once(folder: Path, *args: str) -> list[Outcome]:
    """Two operators run the same thing; both wait at the question; both answer together.

    Returns each one's (exit status, what its terminal showed after the answer)."""
    children = [operator(folder, *args) for _ in range(2)]
    try:
        for child in children:  # the barrier: both have passed every check before creating
            child.expect(QUESTION)
        for child in children:
            child.sendline("yes")
        shown = []
        for child in children:
            child.expect(pexpect.EOF)
            child.close()
            shown.append((child.exitstatus, ANSI.sub("", str(child.before)).replace("\r", "")))
        return shown
    finally:
        for child in children:
            if child.isalive():
                child.terminate(force=True)


def runs_in(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT run_id, status FROM fleet_reimage.runs").fetchall()
    return [(str(run_id), str(status)) for run_id, status in rows]


def two_operators_at_once(folder: Path, journal: str, *extra: str) -> tuple[str, list[Outcome]]:
    """Both operators confirm the same plan at once; every node must be reimaged once, and
    the journal hold one finished run (returned with each operator's outcome)."""
    with emulator_process(folder, [{"id": "p", "nodes": NODES}], timings=TIMINGS) as emu:
        plan = write_plan(folder, emu.url, rollout=ROLLOUT)
        outcomes = both_confirm_at_once(folder, str(plan), "--journal", journal, *extra)
        reimages = emu.reimages()
        peak = emu.stats()["pools"]["p"]["peak_unavailable"]
    assert len(reimages) == NODES and set(reimages.values()) == {1}, reimages
    assert peak <= 5  # max_unavailable held across both runners
    ((run_id, status),) = runs_in(journal)
    assert status == "finished"
    return run_id, outcomes


@pytest.mark.postgres
def test_two_operators_confirming_at_once_make_one_run(
    tmp_path: Path,
    pg_url: str,
) -> None:
    run_id, outcomes = two_operators_at_once(tmp_path, pg_url)
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    (refused,) = [text for code, text in outcomes if code == 2]
    assert f"run {run_id} of this plan is unfinished" in refused, refused
    assert "--join" in refused and f"fleet-reimage resume {run_id}" in refused


@pytest.mark.postgres
def test_two_operators_joining_at_once_share_one_run(
    tmp_path: Path,
    pg_url: str,
) -> None:
    run_id, outcomes = two_operators_at_once(tmp_path, pg_url, "--join")
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    for _, text in outcomes:  # both ran the one run: the creator, and the one that joined it
        assert f"run {run_id}: finished" in text, text


# --- SQLite: two processes calling the API, released by a barrier ---------------------------


def _run_after_barrier(
    barrier: Any, results: Any, plan_path: str, journal: str, key_env: str, key: str
) -> None:
    """In a child process: wait for the other, then run the plan; report what happened."""
    import os

    import anyio

    from fleet_reimage import api

    os.environ[key_env] = key

    async def main() -> None:
        plan = api.load_plan(plan_path)
        barrier.wait(timeout=60)
        try:
            result = await api.run_plan(
                plan, journal=journal, hooks=api.RunHooks(handle_signals=False)
            )
        except api.FleetReimageError as exc:
            results.put(("refused", type(exc).__name__, str(exc)))
            return
        results.put(("ran", result.run_id, result.status.value))

    anyio.run(main)


def test_two_processes_released_together_on_one_sqlite_journal_make_one_run(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": NODES}]
    journal = tmp_path / "j.db"
    with emulator_process(tmp_path, pools, timings=TIMINGS) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(2), context.Queue()
        args = (barrier, results, str(plan), str(journal), KEY_ENV, KEY)
        processes = [context.Process(target=_run_after_barrier, args=args) for _ in range(2)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        reimages = emu.reimages()
    assert [p.exitcode for p in processes] == [0, 0]
    ran = [o for o in outcomes if o[0] == "ran"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert len(ran) == 1 and len(refused) == 1, outcomes
    assert ran[0][2] == "finished"
    # The file's writer lock stopped the second before it could even look for runs.
    assert refused[0][1] == "JournalBusy" and "is in use by" in refused[0][2], refused
    assert len(reimages) == NODES and set(reimages.values()) == {1}, reimages
    status = fleet_reimage("status", "--journal", str(journal), "--output", "json", cwd=tmp_path)
    assert [r["run_id"] for r in json.loads(status.stdout)["runs"]] == [ran[0][1]]
