"""Live progress while a run goes: a compact log line every few seconds (no TTY)."""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from .executor import Executor

LOG_INTERVAL = 5.0
log = structlog.get_logger("fleet_reimage.progress")


class ProgressHandle:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def totals(executor: Executor) -> dict[str, Any]:
    snaps = executor.snapshots()
    keys = (
        "selected",
        "pending",
        "in_flight",
        "awaiting_health",
        "healthy",
        "done_unverified",
        "failed",
        "gone",
        "skipped",
        "retries",
        "throttled",
    )
    return {key: sum(getattr(s, key) for s in snaps) for key in keys}


async def _log_lines(executors: list[Executor], handle: ProgressHandle) -> None:
    started = time.monotonic()
    while not handle.closed:
        await anyio.sleep(LOG_INTERVAL)
        for executor in executors:
            fields = totals(executor)
            elapsed = time.monotonic() - started
            log.info("progress", run=executor.run_id, elapsed_s=round(elapsed, 1), **fields)


def start_progress(group: TaskGroup, executors: list[Executor]) -> ProgressHandle:
    handle = ProgressHandle()
    if not sys.stderr.isatty():
        group.start_soon(_log_lines, executors, handle)
    return handle
