"""Live progress while ``run``/``resume`` go: a live table on a terminal, a log line otherwise.

The choice follows standard output. When it is a terminal, a ``rich`` live display there
shows one line per pool and a total (wave k of n, selected, in flight, awaiting health,
healthy, failed against the failure budget, gone, skipped, retries, throttles,
unavailability, rate, ETA), plus why a pool is not moving (``frame``, ``livetable``).
Log lines (standard error) are printed above the display rather than through it: the
logger writes to ``termstream.CURRENT_STDERR``, which the display redirects.
Without a terminal, a one-line ``progress`` log event every ``LOG_INTERVAL`` seconds; when
the log goes to a file, the same line in words on standard error too (``echo``), so a run
without a terminal is never silent.

Nothing here runs per event. A task on the event loop samples ``executor.snapshots()`` (in
memory, a few objects per pool) ``REFRESH_PER_SECOND`` times a second and hands a finished
renderable to rich, whose own thread writes it to the terminal; the event loop never waits
for the terminal or for rich's lock. The display starts only once the executor exists (so
the start confirmation is asked on a quiet terminal), pauses while a checkpoint question is
asked (``suspended``), and is stopped, with a last frame, when the run ends however it ends.

The question is asked over a fresh frame (sampled as the display stops, not the last one
drawn), and the display comes back after the answer as a new live region below it: a
restarted region would move the cursor up over the question and leave pieces of the old
table on screen.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TextIO

import anyio
import structlog
from anyio.abc import TaskGroup

from fleet_reimage.views.eta import RecoveryMeter
from fleet_reimage.views.frame import Frame, Tracker, log_fields, progress_text
from fleet_reimage.views.livetable import render_frame

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

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

    def __init__(self, console: Console, render: Callable[[], RenderableType]) -> None:
        self.console = console
        self.render = render  # a fresh frame, from the run's state now
        self.renderable = render()
        self.closed = False
        self.live: Live | None = None  # a new one at each start

    def _new_live(self) -> Live:
        from rich.live import Live

        # get_renderable: rich's refresh thread reads the latest frame; the event loop only
        # swaps the reference, so it never waits on rich's lock while a write is slow.
        return Live(
            console=self.console,
            get_renderable=lambda: self.renderable,
            refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=True,
            redirect_stderr=sys.stderr.isatty(),
            transient=False,
        )

    async def start(self) -> None:
        """Start a new live region below what is on screen (after a question: see above)."""
        # Shielded like stop: a start abandoned half-way would leave stdout redirected.
        with anyio.CancelScope(shield=True):
            self.live = self._new_live()
            await anyio.to_thread.run_sync(self.live.start)

    async def stop(self) -> None:
        live = self.live
        if live is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(live.stop)


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
    display.renderable = display.render()  # the question comes under the table as it is now
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
    display = _Display(console, functools.partial(_render, tracker, console))
    _Active.display = display
    try:
        await display.start()
        while not handle.closed:
            await anyio.sleep(1 / REFRESH_PER_SECOND)
            display.renderable = display.render()
    finally:
        display.renderable = display.render()
        display.closed = True
        _Active.display = None
        await display.stop()


def _render(tracker: Tracker, console: Console) -> RenderableType:
    width, height = console.size
    # Headline, two header lines, the total and a few notes around the pool rows.
    return render_frame(tracker.frame(), max(height - 8, 3), width)


async def _log_lines(
    executors: list[Executor],
    handle: ProgressHandle,
    recoveries: RecoveryMeter | None,
    echo: TextIO | None,
) -> None:
    """A line after the first second, then every ``LOG_INTERVAL``, and a last one at the end."""
    tracker = await _wait_for_executor(executors, handle, recoveries)
    if tracker is None:
        return
    # Sampled every second so that the first line already has a rate; logged less often.
    last = tracker.clock() - LOG_INTERVAL
    try:
        while not handle.closed:
            await anyio.sleep(SAMPLE_INTERVAL)
            frame = tracker.frame()
            if tracker.clock() - last >= LOG_INTERVAL - 0.5:
                last = tracker.clock()
                await _progress_line(frame, echo)
    finally:
        with anyio.CancelScope(shield=True):  # how it ended (why it stopped: the summary)
            await _progress_line(dataclasses.replace(tracker.frame(), stopping=None), echo)


async def _progress_line(frame: Frame, echo: TextIO | None) -> None:
    log.info("progress", **log_fields(frame))
    if echo is not None:  # not on the loop: a stalled reader must not stall the run
        await anyio.to_thread.run_sync(_write_line, echo, progress_text(frame))


def _write_line(stream: TextIO, text: str) -> None:
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stream must not stop the run
        pass


def start_progress(
    group: TaskGroup,
    executors: list[Executor],
    *,
    live: bool | None = None,
    console: Console | None = None,
    recoveries: RecoveryMeter | None = None,
    echo: TextIO | None = None,
) -> ProgressHandle:
    """Start showing progress for the executor that will appear in ``executors``.

    ``live``: the rich display (default: when standard output is a terminal), else log lines;
    ``console``: where the display goes (default: standard output); ``recoveries``: the
    run's observer measuring node recovery times, for the ETA (none: no ETA); ``echo``:
    without the live display, where each progress line is also written in words (standard
    error when the log goes to a file). Close the handle and cancel ``group`` to stop; the
    display's last frame stays on screen.
    """
    handle = ProgressHandle()
    if sys.stdout.isatty() if live is None else live:
        group.start_soon(_live, executors, handle, console, recoveries)
    else:
        group.start_soon(_log_lines, executors, handle, recoveries, echo)
    return handle
