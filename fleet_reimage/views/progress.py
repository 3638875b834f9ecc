"""Live progress while ``run``/``resume`` go: a live table on a terminal, a log line otherwise.

The choice follows standard output. When it is a terminal, a ``rich`` live display there
shows one line per pool and a total (wave k of n, selected, in flight, awaiting health,
healthy, failed, gone, skipped, retries, throttles, unavailability, rate, ETA), plus why a
pool is not moving (between waves, held at a checkpoint, blocked by nodes down for other
reasons, stopped). Log lines (standard error) are printed above the display rather than
through it: the logger writes to ``termstream.CURRENT_STDERR``, which the display redirects.
Without a terminal, a one-line ``progress`` log event every ``LOG_INTERVAL`` seconds.

Nothing here runs per event. A task on the event loop samples ``executor.snapshots()`` (in
memory, a few objects per pool) ``REFRESH_PER_SECOND`` times a second and hands a finished
renderable to rich, whose own thread writes it to the terminal; the event loop never waits
for the terminal or for rich's lock. The display starts only once the executor exists (so
the start confirmation is asked on a quiet terminal), pauses while a checkpoint question is
asked (``suspended``), and is stopped, with a last frame, when the run ends however it ends.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup

from fleet_reimage.engine.runstate import PoolRun, PoolSnapshot
from fleet_reimage.views.runview import span

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from fleet_reimage.engine.executor import Executor

REFRESH_PER_SECOND = 4
LOG_INTERVAL = 5.0
SAMPLE_INTERVAL = 1.0  # without a terminal: how often the rate is sampled between log lines
RATE_WINDOW = 60.0  # seconds of history behind the rate: recent enough to follow the waves
MIN_RATE_SPAN = 3.0  # no rate before this much history: the first seconds are noise
COUNT_KEYS = (
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
log = structlog.get_logger("fleet_reimage.progress")


# --- rate and ETA -----------------------------------------------------------------------


class RateMeter:
    """Nodes finished per minute over the last ``window`` seconds (time is passed in)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, finished: int) -> None:
        self._samples.append((now, finished))
        # Keep one sample at or before the window's start, so the window is always full.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def per_minute(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, f0), (t1, f1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_RATE_SPAN:
            return None
        return max(f1 - f0, 0) * 60.0 / (t1 - t0)

    def eta(self, remaining: int) -> float | None:
        """Seconds until ``remaining`` more nodes finish at the current rate (None: unknown)."""
        if remaining <= 0:
            return 0.0
        rate = self.per_minute()
        if not rate:
            return None
        return remaining * 60.0 / rate


# --- one frame --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolLine:
    snap: PoolSnapshot
    rate: float | None
    eta: float | None
    note: str | None  # why the pool is not moving, if it is not


@dataclass(frozen=True, slots=True)
class Frame:
    run_id: str
    action: str
    elapsed: float
    pools: list[PoolLine]
    totals: dict[str, int]
    finished: int
    rate: float | None
    eta: float | None
    stopping: str | None


def sum_counts(snaps: Sequence[PoolSnapshot]) -> dict[str, int]:
    return {key: sum(getattr(s, key) for s in snaps) for key in COUNT_KEYS}


def pool_note(pool: PoolRun, now: float) -> str | None:
    """Why a pool is not starting nodes, from its rollout state (read-only)."""
    rollout = pool.rollout
    if rollout.stopped is not None:
        return f"stopped: {rollout.stopped}"
    if rollout.done:
        return None if pool.awaiting else "done"
    if rollout.held:
        return "held at the checkpoint"
    if now < rollout.next_wave_at:
        return f"next wave in {span(rollout.next_wave_at - now)}"
    if rollout.blocked_by_unavailability() and rollout.baseline:
        return f"{rollout.baseline} nodes down for other reasons"
    return None


class Tracker:
    """Samples one executor into frames, keeping the rate history between them."""

    def __init__(self, executor: Executor, clock: Any = time.monotonic) -> None:
        self.executor = executor
        self.clock = clock
        self.started = clock()
        self.total_meter = RateMeter()
        self.meters: dict[tuple[str, str], RateMeter] = {}
        self.frame()  # the first sample: rates count from here

    def frame(self) -> Frame:
        now = self.clock()
        executor = self.executor
        snaps = executor.snapshots()
        lines = []
        for snap, pool in zip(snaps, executor.pools, strict=False):
            meter = self.meters.setdefault((snap.account, snap.pool_id), RateMeter())
            meter.add(now, snap.finished)
            remaining = snap.selected - snap.finished
            note = pool_note(pool, now)
            lines.append(PoolLine(snap, meter.per_minute(), meter.eta(remaining), note))
        totals = sum_counts(snaps)
        finished = sum(s.finished for s in snaps)
        self.total_meter.add(now, finished)
        stopping = None
        if executor.stop_kind is not None:
            stopping = f"{executor.stop_kind}: {executor.stop_reason}"
        return Frame(
            run_id=executor.run_id,
            action=executor.action,
            elapsed=now - self.started,
            pools=lines,
            totals=totals,
            finished=finished,
            rate=self.total_meter.per_minute(),
            eta=self.total_meter.eta(totals["selected"] - finished),
            stopping=stopping,
        )


def log_fields(frame: Frame) -> dict[str, Any]:
    """The ``progress`` log event's fields: one line, totals first."""
    waves = sorted({f"{p.snap.wave}/{p.snap.waves}" for p in frame.pools if p.snap.waves})
    fields: dict[str, Any] = {
        "run": frame.run_id,
        "elapsed_s": round(frame.elapsed, 1),
        "finished": frame.finished,
        **{k: v for k, v in frame.totals.items() if v or k in ("selected", "failed")},
        "waves": ",".join(waves),
        "rate_per_min": None if frame.rate is None else round(frame.rate, 1),
        "eta_s": None if frame.eta is None else round(frame.eta),
    }
    if frame.stopping:
        fields["stopping"] = frame.stopping
    return fields


# --- the live table ---------------------------------------------------------------------

# (key, header, wide only): the wide-only columns go first when the terminal is narrow.
_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("pool", "pool", False),
    ("wave", "wave", False),
    ("selected", "selected", False),
    ("in_flight", "in\nflight", False),
    ("awaiting_health", "awaiting\nhealth", False),
    ("healthy", "healthy", False),
    ("failed", "failed", False),
    ("gone", "gone", False),
    ("skipped", "skipped", False),
    ("retries", "retries", True),
    ("throttled", "throt-\ntled", True),
    ("unavailable", "unavail-\nable", True),
    ("rate", "per\nmin", True),
    ("eta", "ETA", False),
)
WIDE = 112  # columns needed by the full table with a 20-character pool name


def render_frame(frame: Frame, max_rows: int = 40, width: int = 160) -> RenderableType:
    """The live display for one frame: a headline, one row per pool, a total, notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    columns = [c for c in _COLUMNS if width >= WIDE or not c[2]]
    # No box: rules and borders cost the width that the numbers need on a 120-column terminal.
    table = Table(
        box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold"
    )
    for key, header, _ in columns:
        table.add_column(header, justify="left" if key == "pool" else "right", no_wrap=True)
    shown = _rows_that_fit(frame.pools, max_rows)
    for line in shown:
        cells = _pool_cells(line)
        table.add_row(*(cells[key] for key, _, _ in columns), style="dim" if _quiet(line) else None)
    hidden = len(frame.pools) - len(shown)
    if hidden:
        table.add_row(f"+{hidden} finished pools", *[""] * (len(columns) - 1), style="dim")
    totals = _total_cells(frame)
    table.add_row(*(totals[key] for key, _, _ in columns), style="bold")
    parts: list[RenderableType] = [_headline(frame), table]
    for line in frame.pools:
        if line.snap.stopped:
            parts.append(Text(f"  {_label(line.snap)} stopped: {line.snap.stopped}", "red"))
        elif line.note and line.snap.finished < line.snap.selected:
            parts.append(Text(f"  {_label(line.snap)}: {line.note}", "yellow"))
    if frame.stopping:
        in_flight = frame.totals["in_flight"]
        parts.append(
            Text(
                f"  stopping ({frame.stopping}); waiting for {in_flight} requests in flight",
                "yellow",
            )
        )
    return Group(*parts)


def _headline(frame: Frame) -> RenderableType:
    from rich.text import Text

    selected = frame.totals["selected"]
    share = 100.0 * frame.finished / selected if selected else 100.0
    return Text.assemble(
        ("fleet-reimage ", "bold"),
        f"{frame.action} run {frame.run_id}  ",
        (f"{frame.finished}/{selected} finished ({share:.0f}%)", "bold"),
        f"  elapsed {span(frame.elapsed)}  rate {_rate(frame.rate)}/min  ETA {_eta(frame)}",
    )


def _rows_that_fit(pools: list[PoolLine], max_rows: int) -> list[PoolLine]:
    """All pools when they fit; otherwise the ones still moving first (finished ones go)."""
    if len(pools) <= max_rows:
        return pools
    moving = [p for p in pools if not _quiet(p)]
    return (moving + [p for p in pools if _quiet(p)])[: max(max_rows, 1)]


def _quiet(line: PoolLine) -> bool:
    return line.snap.finished >= line.snap.selected or line.snap.stopped is not None


def _label(snap: PoolSnapshot) -> str:
    return f"{snap.account}/{snap.pool_id}"


def _pool_cells(line: PoolLine) -> dict[str, RenderableType]:
    s = line.snap
    if s.stopped:
        wave = "stopped"
    elif s.finished >= s.selected:
        wave = "done"
    else:
        wave = f"{s.wave}/{s.waves}"
    return {
        "pool": _label(s),
        "wave": wave,
        **_count_cells(sum_counts([s])),
        "unavailable": f"{s.unavailable}/{s.max_unavailable}",
        "rate": _rate(line.rate),
        "eta": "-" if s.stopped else _eta_text(line.eta),
    }


def _total_cells(frame: Frame) -> dict[str, RenderableType]:
    return {
        "pool": "total",
        "wave": "",
        **_count_cells(frame.totals),
        "unavailable": "",
        "rate": _rate(frame.rate),
        "eta": _eta(frame),
    }


def _count_cells(t: dict[str, int]) -> dict[str, RenderableType]:
    from rich.text import Text

    def bad(value: int, style: str) -> RenderableType:
        return Text(str(value), f"bold {style}" if value else "")

    done = t["healthy"] + t["done_unverified"]  # without a health gate, accepted is done
    return {
        "selected": str(t["selected"]),
        "in_flight": str(t["in_flight"]),
        "awaiting_health": str(t["awaiting_health"]),
        "healthy": Text(str(done), "green" if done else ""),
        "failed": bad(t["failed"], "red"),
        "gone": bad(t["gone"], "yellow"),
        "skipped": bad(t["skipped"], "yellow"),
        "retries": str(t["retries"]),
        "throttled": bad(t["throttled"], "yellow"),
    }


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _eta_text(eta: float | None) -> str:
    if eta is None or math.isinf(eta):
        return "-"
    if eta < 1:
        return "0s" if eta == 0 else "<1s"
    return span(eta)


def _eta(frame: Frame) -> str:
    if frame.stopping:
        return "stopping"
    return _eta_text(frame.eta)


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


async def _wait_for_executor(executors: list[Executor], handle: ProgressHandle) -> Tracker | None:
    while not executors:
        if handle.closed:
            return None
        await anyio.sleep(0.1)
    return Tracker(executors[-1])


async def _live(executors: list[Executor], handle: ProgressHandle, console: Console | None) -> None:
    from rich.console import Console

    tracker = await _wait_for_executor(executors, handle)
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


async def _log_lines(executors: list[Executor], handle: ProgressHandle) -> None:
    tracker = await _wait_for_executor(executors, handle)
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
) -> ProgressHandle:
    """Start showing progress for the executor that will appear in ``executors``.

    ``live``: the rich display (default: when standard output is a terminal), else log lines;
    ``console``: where the display goes (default: standard output). Close the handle and
    cancel ``group`` to stop; the display's last frame stays on screen.
    """
    handle = ProgressHandle()
    if sys.stdout.isatty() if live is None else live:
        group.start_soon(_live, executors, handle, console)
    else:
        group.start_soon(_log_lines, executors, handle)
    return handle
