"""Live progress while ``run``/``resume`` go: a live table on a terminal, a log line otherwise.

The choice follows standard output. When it is a terminal, a ``rich`` live display there
shows one line per pool and a total (wave k of n, selected, in flight, awaiting health,
healthy, failed against the failure budget, gone, skipped, retries, throttles,
unavailability, rate, ETA), plus why a pool is not moving (``frame``, ``livetable``).
Log lines (standard error) are printed above the display rather than through it: the
logger writes to ``termstream.CURRENT_STDERR``, which the display redirects.
Without a terminal, a one-line ``progress`` log event every ``LOG_INTERVAL`` seconds.

Nothing here runs per event. A task on the event loop samples ``executor.snapshots()`` (in
memory, a few objects per pool) ``REFRESH_PER_SECOND`` times a second and hands a finished
renderable to rich, whose own thread writes it to the terminal; the event loop never waits
for the terminal or for rich's lock. The display starts only once the executor exists (so
the start confirmation is asked on a quiet terminal), pauses while a checkpoint question is
asked (``suspended``), and is stopped, with a last frame, when the run ends however it ends.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup

from fleet_reimage.views.eta import RecoveryMeter
from fleet_reimage.views.frame import Tracker, log_fields
from fleet_reimage.views.livetable import render_frame

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from fleet_reimage.engine.executor import Executor

REFRESH_PER_SECOND = 4
LOG_INTERVAL = 5.0
SAMPLE_INTERVAL = 1.0  # without a terminal: how often the rate is sampled between log lines
log = structlog.get_logger("fleet_reimage.progress")


# --- running it -------------------------------------------------------------------------


class ProgressHandle:
    """Ends the progress task; the display itself is stopped by the task's own cleanup."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Display:
    """The rich live display; start and stop run on a worker thread (they write)."""

    def __init__(self, console: Console, first: RenderableType) -> None:
        from rich.live import Live

        self.renderable = first
        self.closed = False
        # get_renderable: rich's refresh thread reads the latest frame; the event loop only
        # swaps the reference, so it never waits on rich's lock while a write is slow.
        self.live: Live = Live(
            console=console,
            get_renderable=lambda: self.renderable,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=True,
            redirect_stderr=sys.stderr.isatty(),
            transient=False,
        )

    async def start(self) -> None:
        # Shielded like stop: a start abandoned half-way would leave stdout redirected.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.live.start)

    async def stop(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.live.stop)


class _Active:
    """The display on this process's terminal, if any (one terminal, one display)."""

    display: _Display | None = None


@asynccontextmanager
async def suspended() -> AsyncIterator[None]:
    """Pause the live display (if any) while the operator is asked something."""
    display = _Active.display
    if display is None or display.closed:
        yield
        return
    await display.stop()
    try:
        yield
    finally:
        if not display.closed:
            await display.start()
            if display.closed:  # the run ended while it was starting again
                await display.stop()


async def _wait_for_executor(
    executors: list[Executor], handle: ProgressHandle, recoveries: RecoveryMeter | None
) -> Tracker | None:
    while not executors:
        if handle.closed:
            return None
        await anyio.sleep(0.1)
    return Tracker(executors[-1], recoveries=recoveries)


async def _live(
    executors: list[Executor],
    handle: ProgressHandle,
    console: Console | None,
    recoveries: RecoveryMeter | None,
) -> None:
    from rich.console import Console

    tracker = await _wait_for_executor(executors, handle, recoveries)
    if tracker is None:
        return
    console = console or Console()
    display = _Display(console, _render(tracker, console))
    _Active.display = display
    try:
        await display.start()
        while not handle.closed:
            await anyio.sleep(1 / REFRESH_PER_SECOND)
            display.renderable = _render(tracker, console)
    finally:
        display.renderable = _render(tracker, console)
        display.closed = True
        _Active.display = None
        await display.stop()


def _render(tracker: Tracker, console: Console) -> RenderableType:
    width, height = console.size
    # Headline, two header lines, the total and a few notes around the pool rows.
    return render_frame(tracker.frame(), max(height - 8, 3), width)


async def _log_lines(
    executors: list[Executor], handle: ProgressHandle, recoveries: RecoveryMeter | None
) -> None:
    tracker = await _wait_for_executor(executors, handle, recoveries)
    if tracker is None:
        return
    # Sampled every second so that the first line already has a rate; logged less often.
    last = tracker.clock()
    while not handle.closed:
        await anyio.sleep(SAMPLE_INTERVAL)
        frame = tracker.frame()
        if tracker.clock() - last >= LOG_INTERVAL - 0.5:
            last = tracker.clock()
            log.info("progress", **log_fields(frame))


def start_progress(
    group: TaskGroup,
    executors: list[Executor],
    *,
    live: bool | None = None,
    console: Console | None = None,
    recoveries: RecoveryMeter | None = None,
) -> ProgressHandle:
    """Start showing progress for the executor that will appear in ``executors``.

    ``live``: the rich display (default: when standard output is a terminal), else log lines;
    ``console``: where the display goes (default: standard output); ``recoveries``: the
    run's observer measuring node recovery times, for the ETA (none: no ETA). Close the
    handle and cancel ``group`` to stop; the display's last frame stays on screen.
    """
    handle = ProgressHandle()
    if sys.stdout.isatty() if live is None else live:
        group.start_soon(_live, executors, handle, console, recoveries)
    else:
        group.start_soon(_log_lines, executors, handle, recoveries)
    return handle
