"""Helpers for the chaos tests: damaged journals, runs that stop, a fake misbehaving Batch.

Everything runs the real command line in subprocesses (see ``clihelpers``), with timeouts;
the fake service is an aiohttp application on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clihelpers import EmulatorProcess, cli_env
from runhelpers import write_plan

VM_CONFIGURATION = {
    "imageReference": {"publisher": "Canonical", "offer": "ubuntu", "sku": "20_04-lts"},
    "nodeAgentSKUId": "batch.node.ubuntu 20.04",
}
TRACEBACK = "Traceback (most recent call last)"
# A run that stops at its checkpoint after the first wave: a resumable journal whose
# remaining nodes are pending (what a silent restart would send again).
CHECKPOINT_ROLLOUT = """
    waves: [2, "100%"]
    max_unavailable: "100%"
    health: {wait: false}
    failure_budget: "100%"
    confirm_after_wave: 1
"""
FAST_EXECUTION = """
    concurrency: 8
    per_account_concurrency: 8
    request_timeout: 2s
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms, busy_timeout: 1s}
"""


def reimage_requests(emu: EmulatorProcess) -> int:
    """Reimage requests the emulator has received so far (whatever became of them)."""
    return int(emu.stats()["requests"]["by_operation"].get("reimage", 0))


def checkpointed_journal(folder: Path, emu: EmulatorProcess) -> tuple[Path, Path, str]:
    """Run a plan that stops at its checkpoint: (plan, journal, run id), nodes left pending."""
    plan = write_plan(folder, emu.url, rollout=CHECKPOINT_ROLLOUT, execution=FAST_EXECUTION)
    journal = folder / "j.db"
    result = run_cli("run", str(plan), "--yes", "--journal", str(journal), cwd=folder)
    assert result.returncode == 3, result.stdout + result.stderr  # stopped at the checkpoint
    found = re.search(r"run (r[0-9a-z-]+):", result.stdout)
    assert found, result.stdout
    return plan, journal, found.group(1)


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m fleet_reimage ARGS`` to the end (a timeout kills it and fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "fleet_reimage", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,  # only the disk-full test sets one (rlimits)
    )


def journal_rows(journal: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query (the WAL, if any, is read too)."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def set_schema_version(journal: Path, *, user_version: int | None, meta: int | None) -> None:
    """Make the journal look written by another schema (the markers the code checks)."""
    conn = sqlite3.connect(journal, isolation_level=None)
    try:
        if user_version is not None:
            conn.execute(f"PRAGMA user_version = {user_version:d}")
        if meta is not None:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(meta),))
    finally:
        conn.close()


def page_size(journal: Path) -> int:
    header = journal.read_bytes()[:100]
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def corrupt_middle(journal: Path, seed: int = 7) -> None:
    """Overwrite the middle half of the file's pages (never page 1) with random bytes."""
    data = bytearray(journal.read_bytes())
    size = page_size(journal)
    pages = len(data) // size
    assert pages >= 4, f"the journal is too small to damage in the middle ({pages} pages)"
    rng = random.Random(seed)
    for page in range(max(1, pages // 4), max(2, 3 * pages // 4)):
        garbage = bytes(rng.getrandbits(8) for _ in range(size))
        data[page * size : (page + 1) * size] = garbage
    journal.write_bytes(bytes(data))


def assert_clear_refusal(result: subprocess.CompletedProcess[str], journal: Path) -> None:
    """Exit 2, no traceback, one message that names the file."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert TRACEBACK not in output, output
    assert str(journal) in result.stderr, result.stderr


def report_nodes(journal: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    """``report --latest --format json``: node id -> its row."""
    result = run_cli("report", "--latest", "--journal", str(journal), "--format", "json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    return {row["node"]: row for row in document["nodes"]}
