"""Live progress, in process: rate and ETA, the frame, the table, the display's life cycle."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from fleet_reimage.engine.runstate import PoolSnapshot
from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.views import progress
from fleet_reimage.views.eta import RateMeter, RecoveryMeter, ladder_eta
from fleet_reimage.views.frame import Tracker, log_fields
from fleet_reimage.views.livetable import render_frame
from fleet_reimage.views.progress import start_progress, suspended


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
    """What the progress display reads from an executor: snapshots, pools, targets, the
    failure budget, stop state."""

    def __init__(
        self,
        snaps: list[PoolSnapshot],
        rollouts: list[PoolRollout],
        budget: FailureBudget | None = None,
        targets: dict[int, Any] | None = None,
        pause: float = 0.0,
    ) -> None:
        self.run_id = "r20261125-000000-abcdef"
        self.action = "reimage"
        self.snaps = snaps
        self.pools = [
            SimpleNamespace(
                rollout=r,
                awaiting={},
                account=SimpleNamespace(name=s.account),
                pool_id=s.pool_id,
                blocked_since=None,
            )
            for s, r in zip(snaps, rollouts, strict=True)
        ]
        self.stop_kind: str | None = None
        self.stop_reason: str | None = None
        self.budget = budget or FailureBudget(limit=2)
        self.shared = None
        self.targets = targets or {}
        health = SimpleNamespace(timeout=120.0)
        self.plan = SimpleNamespace(
            rollout=SimpleNamespace(pause_between_waves=pause, health=health)
        )

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
    assert fields["failure_budget"] == 2  # the budget in use, beside the failures
    assert "eta_s" not in fields  # no node recovery measured yet: no ETA, not a guess
    assert "gone" not in fields  # zero counts stay out of the line
    assert None not in fields.values()


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
    assert "stopping (budget: failure budget exceeded (1 of 1)); waiting for 2 requests" in wide
    executor.snaps[0] = snap("render-a", pending=6, awaiting_health=1, healthy=1)
    idle = " ".join(screen(render_frame(tracker.frame(), 40, 140), 140).split())
    assert "waiting for 0 requests" not in idle  # the rehearsal's Ctrl-C on a blocked pool
    assert "stopping (budget: failure budget exceeded (1 of 1)); nothing in flight" in idle
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


# --- the failure budget, rates that skip what was not done, the ETA along the ladder ------


def test_the_failure_budget_in_use_is_shown_beside_the_failures() -> None:
    now = [0.0]
    executor, tracker = fake(now)
    executor.budget = FailureBudget(limit=20, failures=17)
    executor.snaps[1] = snap("etl", failed=17, pending=3)
    text = screen(render_frame(tracker.frame(), 40, 140), 140)
    assert "failed 17/20 of budget" in text  # the headline
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert " 17/20 " in total
    assert log_fields(tracker.frame())["failure_budget"] == 20
    # Forgiven on resume (--accept-failures): all failures, and what counts of the budget.
    executor.budget = FailureBudget(limit=20, failures=25, forgiven=20)
    executor.snaps[1] = snap("etl", failed=25)
    forgiven = screen(render_frame(tracker.frame(), 40, 140), 140)
    assert "failed 25 (5/20)" in forgiven
    assert log_fields(tracker.frame())["failures_forgiven"] == 20


def test_skipped_and_gone_nodes_do_not_make_a_rate() -> None:
    now = [0.0]
    executor, tracker = fake(now)
    now[0] = 30.0
    # 128 nodes of a stopped pool are skipped at once, 2 gone: nothing was reimaged.
    executor.snaps = [snap("render-a", pending=6, in_flight=2, awaiting_health=1, healthy=1,
                           skipped=128, gone=2),
                      snap("etl", pending=9, failed=1, wave=2)]  # fmt: skip
    frame = tracker.frame()
    assert frame.rate == 0.0 and frame.pools[0].rate == 0.0
    assert frame.finished == 132  # they are finished, just not done at a rate


def test_a_pool_over_its_limit_says_why() -> None:
    rollout = PoolRollout([[1, 2, 3, 4]], max_unavailable=3)
    assert [rollout.take_next(0.0) for _ in range(4)] == [1, 2, 3, None]
    rollout.set_baseline(1)  # a node of the pool went down on its own after ours started
    executor = FakeExecutor(
        [snap("render-a", in_flight=3, pending=1, unavailable=4, max_unavailable=3)], [rollout]
    )
    tracker = Tracker(executor)  # type: ignore[arg-type]
    text = screen(render_frame(tracker.frame(), 40, 140), 140)
    row = next(line for line in text.splitlines() if line.startswith("prod/render-a"))
    assert " 4/3 " in row
    said = " ".join(text.split())
    assert (
        "render-a: 4 unavailable, over max_unavailable 3: 1 node went down for other reasons "
        "after 3 of ours started; nothing starts until fewer than 3 are down" in said
    )


def test_a_pool_at_its_limit_counts_its_own_nodes_in_the_reason() -> None:
    """The rehearsal's table said "6 nodes down for other reasons: max_unavailable is 19"
    for a pool full of its own nodes in progress: 6 is not 19, the note must add up."""
    rollout = PoolRollout([[1, 2, 3, 4]], max_unavailable=3)
    rollout.set_baseline(1)  # one node of the pool was down before we started
    assert [rollout.take_next(0.0) for _ in range(3)] == [1, 2, None]
    executor = FakeExecutor(
        [snap("render-a", in_flight=2, pending=2, unavailable=3, max_unavailable=3)], [rollout]
    )
    tracker = Tracker(executor)  # type: ignore[arg-type]
    said = " ".join(screen(render_frame(tracker.frame(), 40, 140), 140).split())
    assert (
        "render-a: at max_unavailable 3: 2 nodes of ours in progress and 1 node down for "
        "other reasons" in said
    )
    rollout.settle(1, 0.0, failed_after_action=True)  # came back broken: holds its room
    said = " ".join(screen(render_frame(tracker.frame(), 40, 140), 140).split())
    assert (
        "render-a: at max_unavailable 3: 1 node of ours in progress, 1 node down for other "
        "reasons and 1 node of ours that failed after the action is still down" in said
    )


def test_a_pool_over_its_limit_before_we_started_is_blocked_not_overrun() -> None:
    """The rehearsal's narrowed run: 15 nodes of the pool were down before it started and
    max_unavailable was 10. The table said "15 nodes went down for other reasons after 0 of
    ours started", and not that the pool waits and when it stops."""
    rollout = PoolRollout([[1, 2, 3, 4]], max_unavailable=10)
    rollout.set_baseline(15)
    executor = FakeExecutor(
        [snap("render-b", pending=4, unavailable=15, max_unavailable=10)], [rollout]
    )
    now = [100.0]
    tracker = Tracker(executor, clock=lambda: now[0])  # type: ignore[arg-type]
    executor.pools[0].blocked_since = 90.0  # blocked 10 s ago (the health gate noticed it)
    said = " ".join(screen(render_frame(tracker.frame(), 40, 140), 140).split())
    assert "after 0 of ours" not in said
    assert (
        "render-b: blocked: 15 nodes down for other reasons: max_unavailable is 10; waiting "
        "for nodes to come back; stops (resumable, nodes kept pending) in 1m50s" in said
    )


def ladder_steps(sizes: list[int]) -> list[list[int]]:
    """Target ids 1..n cut into waves of ``sizes``."""
    waves, next_id = [], 1
    for size in sizes:
        waves.append(list(range(next_id, next_id + size)))
        next_id += size
    return waves


def test_the_eta_follows_the_ladder_and_the_measured_recovery() -> None:
    """A pool of 24 on a [1, 3, 12, 24] ladder, 6 at a time, nodes back in 60 s, 30 s pauses:
    60 + 30 + 60 + 30 + 2 x 60 + 30 + 2 x 60 = 450 s, not what a rate of the canary says."""
    sizes = [1, 2, 9, 12]
    rollout = PoolRollout(ladder_steps(sizes), max_unavailable=6, pause_between_waves=30.0)
    records = {
        t: SimpleNamespace(
            record=SimpleNamespace(account="prod", pool="render-a", wave=w), started=None
        )
        for w, wave in enumerate(ladder_steps(sizes))
        for t in wave
    }
    now = [0.0]
    executor = FakeExecutor(
        [snap("render-a", selected=24, pending=24, waves=4)], [rollout], targets=records, pause=30
    )
    recoveries = RecoveryMeter()
    tracker = Tracker(executor, clock=lambda: now[0], recoveries=recoveries)  # type: ignore[arg-type]
    assert tracker.frame().eta is None  # nothing measured yet: no ETA
    for seconds in (50.0, 60.0, 70.0):
        recoveries.event("node_healthy", {"duration_s": seconds})
    recoveries.event("node_failed", {"duration_s": 900.0})  # not a recovery
    assert tracker.frame().eta == pytest.approx(450.0)
    # The canary was sent 20 s ago: it holds its slot for 40 s more.
    assert rollout.take_next(0.0) == 1
    records[1].started = -20.0
    executor.snaps = [snap("render-a", selected=24, pending=23, in_flight=1, waves=4)]
    assert tracker.frame().eta == pytest.approx(430.0)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # nothing left
        ({"queued": 0, "in_progress": [], "later_waves": [0, 0]}, 0.0),
        # 3 in progress (20 s left), 6 queued, 6 slots: 3 start now (done at 60),
        # 3 when the first are back (at 20, done at 80); then 30 s pause, 12 nodes in 2 rounds
        ({"queued": 6, "in_progress": [20, 20, 20], "later_waves": [12]}, 80 + 30 + 120),
        # 8 down (others broke) with 6 slots: the first new node starts when 3 are back (30 s)
        ({"queued": 1, "in_progress": [10, 20, 30, 40, 50, 60, 70, 80], "later_waves": []}, 90),
        # waiting for a pause to end first
        ({"queued": 1, "in_progress": [], "later_waves": [], "wait": 25}, 85),
    ],
)
def test_ladder_eta_as_a_pure_function(args: dict[str, Any], expected: float) -> None:
    assert ladder_eta(slots=6, recovery=60.0, pause=30.0, **args) == pytest.approx(expected)


def test_ladder_eta_is_unknown_when_no_node_can_start() -> None:
    from fleet_reimage.views.eta import ladder_eta

    assert (
        ladder_eta(queued=5, in_progress=[], later_waves=[], slots=0, recovery=60, pause=0) is None
    )


@given(
    queued=st.integers(0, 40),
    in_progress=st.lists(st.floats(0, 100), max_size=12),
    later=st.lists(st.integers(0, 30), max_size=4),
    slots=st.integers(1, 10),
    recovery=st.floats(1, 100),
    pause=st.floats(0, 50),
)
def test_more_room_never_makes_the_eta_later(
    queued: int,
    in_progress: list[float],
    later: list[int],
    slots: int,
    recovery: float,
    pause: float,
) -> None:
    args = {"queued": queued, "in_progress": in_progress, "later_waves": later, "pause": pause}
    eta = ladder_eta(slots=slots, recovery=recovery, **args)
    assert eta is not None
    assert ladder_eta(slots=slots + 1, recovery=recovery, **args) <= eta + 1e-9
    if queued or any(later):
        assert eta >= recovery - 1e-9  # a node still to start takes one recovery at least
    nodes = queued + sum(later)
    # Never longer than doing every node alone, one after another, after those in progress.
    bound = max(in_progress, default=0) + nodes * recovery + pause * len(later)
    assert eta <= bound + 1e-6
