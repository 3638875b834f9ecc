"""Live progress, in process: rate and ETA, the frame, the table, the display's life cycle."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from rich.console import Console

from fleet_reimage.engine.runstate import PoolSnapshot
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.views import progress
from fleet_reimage.views.progress import (
    RateMeter,
    Tracker,
    log_fields,
    render_frame,
    start_progress,
    suspended,
)


def test_rate_is_over_a_recent_window_and_waits_for_enough_history() -> None:
    meter = RateMeter(window=60)
    meter.add(0.0, 0)
    meter.add(2.0, 10)
    assert meter.per_minute() is None  # two seconds of history: noise
    assert meter.eta(5) is None
    for second in range(3, 121):
        meter.add(float(second), 10 + (second - 2) * 2)  # 2 nodes a second from t=2
    assert meter.per_minute() == pytest.approx(120.0)
    assert meter.eta(240) == pytest.approx(120.0)
    assert meter.eta(0) == 0.0
    for second in range(121, 200):  # nothing finishes any more
        meter.add(float(second), 246)
    assert meter.per_minute() == 0.0 and meter.eta(10) is None


def snap(pool: str, **counts: Any) -> PoolSnapshot:
    fields: dict[str, Any] = {
        "selected": 10, "pending": 0, "in_flight": 0, "awaiting_health": 0, "healthy": 0,
        "done_unverified": 0, "failed": 0, "gone": 0, "skipped": 0, "wave": 1, "waves": 3,
        "retries": 0, "throttled": 0, "unavailable": 0, "max_unavailable": 4, "stopped": None,
    }  # fmt: skip
    fields.update(counts)
    return PoolSnapshot(account="prod", pool_id=pool, **fields)


class FakeExecutor:
    """What the progress display reads from an executor: snapshots, pools, stop state."""

    def __init__(self, snaps: list[PoolSnapshot], rollouts: list[PoolRollout]) -> None:
        self.run_id = "r20261125-000000-abcdef"
        self.action = "reimage"
        self.snaps = snaps
        self.pools = [SimpleNamespace(rollout=r, awaiting={}) for r in rollouts]
        self.stop_kind: str | None = None
        self.stop_reason: str | None = None

    def snapshots(self) -> list[PoolSnapshot]:
        return self.snaps


def fake(now: list[float]) -> tuple[FakeExecutor, Tracker]:
    moving = PoolRollout([[1, 2], [3]], max_unavailable=2)
    pausing = PoolRollout([[4], [5]], max_unavailable=1, next_wave_at=100.0)
    executor = FakeExecutor(
        [
            snap("render-a", pending=6, in_flight=2, awaiting_health=1, healthy=1, throttled=3),
            snap("etl", pending=9, failed=1, wave=2),
        ],
        [moving, pausing],
    )
    return executor, Tracker(executor, clock=lambda: now[0])  # type: ignore[arg-type]


def test_frame_and_log_line() -> None:
    now = [0.0]
    executor, tracker = fake(now)
    now[0] = 30.0
    executor.snaps = [snap("render-a", healthy=4, pending=6), snap("etl", pending=9, failed=1)]
    frame = tracker.frame()
    assert frame.finished == 5 and frame.totals["selected"] == 20
    assert frame.rate == pytest.approx(6.0)  # 3 more finished in 30 s
    assert [p.note for p in frame.pools] == [None, "next wave in 1m10s"]
    fields = log_fields(frame)
    assert fields["finished"] == 5 and fields["failed"] == 1 and fields["rate_per_min"] == 6.0
    assert fields["eta_s"] == 150  # 15 left at 6 a minute
    assert "gone" not in fields  # zero counts stay out of the line


def screen(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_table_has_a_line_per_pool_a_total_and_says_why_a_pool_waits() -> None:
    now = [0.0]
    executor, tracker = fake(now)
    executor.stop_kind, executor.stop_reason = "budget", "failure budget exceeded (1 of 1)"
    executor.snaps[1] = snap("etl", skipped=9, failed=1, stopped="too many failures")
    wide = screen(render_frame(tracker.frame(), 40, 140), 140)
    lines = wide.splitlines()
    header = next(line for line in lines if line.startswith("pool"))
    assert "healthy" in header and "retries" in header and "ETA" in header
    assert any(line.startswith("prod/render-a") and " 1/3 " in line for line in lines)
    assert any(line.startswith("prod/etl") and "stopped" in line for line in lines)
    assert any(line.startswith("total") for line in lines)
    assert "prod/etl stopped: too many failures" in wide
    assert "stopping (budget: failure budget exceeded (1 of 1))" in wide
    narrow = screen(render_frame(tracker.frame(), 40, 90), 90)
    assert "retries" not in narrow and "ETA" in narrow and "…" not in narrow


def test_many_pools_keep_the_moving_ones_in_view() -> None:
    snaps = [snap(f"done-{i}", healthy=10) for i in range(30)] + [snap("busy", in_flight=3)]
    rollouts = [PoolRollout([[i]], max_unavailable=1) for i in range(31)]
    tracker = Tracker(FakeExecutor(snaps, rollouts))  # type: ignore[arg-type]
    text = screen(render_frame(tracker.frame(), 5, 140), 140)
    assert "prod/busy" in text and "+26 finished pools" in text


@pytest.mark.anyio
async def test_the_live_display_starts_with_the_executor_and_stops_with_a_last_frame() -> None:
    executor, _ = fake([0.0])
    executors: list[Any] = []
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, height=30)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            handle = start_progress(group, executors, live=True, console=console)
            await anyio.sleep(0.3)
            assert out.getvalue() == ""  # no executor yet: nothing drawn (a prompt may be up)
            executors.append(executor)
            await anyio.sleep(0.8)
            executor.snaps = [snap("render-a", healthy=10), snap("etl", healthy=10)]
            handle.close()
            group.cancel_scope.cancel()
    text = out.getvalue()
    assert "prod/render-a" in text and "total" in text
    assert "20/20 finished (100%)" in text  # the last frame shows the final counts
    assert progress._Active.display is None


@pytest.mark.anyio
async def test_suspended_without_a_display_does_nothing() -> None:
    with anyio.fail_after(5):
        async with suspended():
            pass
