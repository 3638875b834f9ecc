"""Helpers shared by the journal tests (no tests here; the name keeps it among the journal's).

Import with ``from test_journal_support import ...``: pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet_reimage.journal import (
    AttemptEnd,
    AttemptOutcome,
    AttemptStart,
    Exclusion,
    NewRun,
    NewTarget,
    TargetState,
)
from fleet_reimage.journal.sqlite import SqliteJournal

RUN_ID = "run-1"


def new_run(
    run_id: str = RUN_ID, created_at: float = 1_000.0, options: Mapping[str, Any] | None = None
) -> NewRun:
    return NewRun(
        run_id=run_id,
        name=f"name of {run_id}",
        action="reimage",
        plan_path="/plans/p.yaml",
        plan_text="pools: [a]\n",
        plan_sha256="0" * 64,
        options=dict(options or {}),
        created_at=created_at,
        host="host-a",
        pid=4242,
    )


def new_targets(count: int, pools: int = 3) -> list[NewTarget]:
    return [
        NewTarget(
            account="acct", pool=f"pool{i % pools}", node_id=f"tvm-{i:06d}", wave=i // 100,
            position=i,
        )
        for i in range(count)
    ]  # fmt: skip


async def journal_with_run(
    path: Path,
    count: int = 10,
    exclusions: Sequence[Exclusion] = (),
    batch_window: float = 0.002,
) -> tuple[SqliteJournal, list[int]]:
    """A writable journal holding RUN_ID with ``count`` targets; returns it and the target ids."""
    journal = await SqliteJournal.open(path, batch_window=batch_window)
    await journal.create_run(new_run(), new_targets(count), list(exclusions))
    ids = [t.target_id for t in await journal.targets(RUN_ID)]
    return journal, ids


def start(target_id: int, crid: str, sent_at: float, attempt_no: int = 1) -> AttemptStart:
    return AttemptStart(RUN_ID, target_id, attempt_no, "reimage", crid, sent_at)


def accepted(target_id: int, crid: str, at: float) -> AttemptEnd:
    return AttemptEnd(
        RUN_ID, target_id, crid, at, AttemptOutcome.ACCEPTED, TargetState.ACCEPTED, status=202
    )


def ro_connect(path: Path) -> sqlite3.Connection:
    """A fresh read-only connection, as another program would open the journal."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    return sqlite3.connect(uri, uri=True)


def crids_in(path: Path) -> set[str]:
    with ro_connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT client_request_id FROM attempts")}


def run_python(code: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a separate interpreter (blocking: call through anyio.to_thread)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def file_state(path: Path) -> tuple[bytes, int]:
    """Contents and mtime, to prove a refused file was left alone."""
    return path.read_bytes(), path.stat().st_mtime_ns
