"""Run events for other tools: an observer interface, and the ``--events`` JSON-lines file.

The executor calls ``observer.event(kind, fields)`` synchronously at each milestone (wave
started/completed, node accepted/healthy/failed/gone/skipped, throttled, budget exceeded,
pool stopped, checkpoint, run stopped/finished). Observers must be cheap: the events file
buffers lines in memory and a background task appends them off the event loop.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio

from fleet_reimage.safefiles import open_own

FLUSH_INTERVAL = 0.2


class RunObserver(Protocol):
    def event(self, kind: str, fields: dict[str, Any]) -> None: ...


class NullObserver:
    def event(self, kind: str, fields: dict[str, Any]) -> None:
        return None


class Observers:
    """Fans events out to several observers."""

    def __init__(self, observers: Iterable[RunObserver]) -> None:
        self._observers = list(observers)

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        for observer in self._observers:
            observer.event(kind, fields)


class EventsFile:
    """Append-only JSON lines: ``{"time": ..., "event": kind, ...fields}`` per line.

    :meth:`open` opens the file once, before the run, as a file of our own (``safefiles``:
    not a link, a FIFO or someone else's file), so a bad path is refused before anything is
    sent; :meth:`run` writes to that descriptor and closes it at the end.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._lines: list[str] = []

    @classmethod
    async def open(cls, path: Path) -> EventsFile:
        """Open (create 0600, append) ``path``; ``UnsafeFile`` or ``OSError`` if it cannot be."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = await anyio.to_thread.run_sync(open_own, path, flags, "the events file")
        return cls(path, fd)

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 6), "event": kind, **fields}
        self._lines.append(json.dumps(record, default=str, separators=(",", ":")))

    async def run(self) -> None:
        """Flush every FLUSH_INTERVAL until cancelled; then flush what is left and close."""
        try:
            while True:
                await anyio.sleep(FLUSH_INTERVAL)
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()
                await anyio.to_thread.run_sync(self.close)

    async def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        await anyio.to_thread.run_sync(self._append, "\n".join(lines) + "\n")

    def _append(self, text: str) -> None:
        if self._fd is None:
            return
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        """Close the file (safe to call again)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
