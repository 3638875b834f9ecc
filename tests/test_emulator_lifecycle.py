"""The emulator's state machine beyond reimage and reboot, on a manual clock: running
tasks that end, operations that wait for them, scheduling, deallocate and start, remove
nodes, resize (quota, timeout, stop) and auto-scale; the counters the stats report."""

from __future__ import annotations

import pytest
from emulator_helpers import TEST_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_reimage.emulator import (
    AccountSpec,
    AutoScaleSpec,
    BatchOperationError,
    CoreQuota,
    EmulatorState,
    FleetSpec,
    ManualClock,
    PoolSpec,
    TaskDuration,
    Timings,
    build_state,
)
from fleet_reimage.emulator.odata import POOL_FIELDS, compile_filter
from fleet_reimage.emulator.resources import Pool
from fleet_reimage.emulator.rules import is_ready
from fleet_reimage.emulator.timefmt import TICKS_PER_SECOND, iso

TIMINGS = Timings(
    reimaging=2, rebooting=1, starting=1, creating=1, allocating=1, leavingpool=1,
    deallocating=1, stopping=1, retention=5,
)  # fmt: skip
RUNNING = {"running": 1.0}


def make(*pools: PoolSpec, seed: int = 0) -> tuple[EmulatorState, ManualClock]:
    clock = ManualClock()
    spec = FleetSpec(AccountSpec("emu", TEST_KEY), tuple(pools), seed=seed, timings=TIMINGS)
    return build_state(spec, clock), clock


def at(state: EmulatorState, clock: ManualClock, seconds: float) -> None:
    """Move the clock to ``seconds`` after the start (1000 on the manual clock)."""
    clock.advance(1000 + seconds - clock.monotonic())
    state.advance()


def refused(action: object, *args: object) -> BatchOperationError:
    with pytest.raises(BatchOperationError) as caught:
        action(*args)  # type: ignore[operator]
    return caught.value


def fixed(seconds: float) -> TaskDuration:
    return TaskDuration("fixed", seconds, seconds)


def check_counters(pool: Pool) -> None:
    """What the stats say agrees with the nodes, counted from scratch."""
    ready = sum(is_ready(n.state, n.scheduling_state, n.pending) for n in pool.nodes)
    assert pool.ready_count == ready and pool.min_ready <= ready
    assert pool.current_unavailable == sum(node.busy for node in pool.nodes)
    assert sum(pool.state_counts.values()) == len(pool.nodes)
    for node in pool.nodes:
        assert node.running_tasks == len(node.task_ends)


def test_running_tasks_end_after_their_durations_and_the_node_goes_idle() -> None:
    state, clock = make(PoolSpec("p", 3, states=RUNNING, running_tasks=2, task_duration=fixed(60)))
    pool = state.pools["p"]
    node = pool.nodes[0]
    run_before = node.total_tasks_run
    t0 = state.now_ticks()
    at(state, clock, 59.9)
    assert (node.state, node.running_tasks) == ("running", 2)
    at(state, clock, 60)
    assert (node.state, node.running_tasks, node.total_tasks_run) == ("idle", 0, run_before + 2)
    assert node.transition_ticks == t0 + 60 * TICKS_PER_SECOND  # stamped when it happened
    assert (pool.tasks_completed, pool.tasks_requeued, pool.tasks_terminated) == (6, 0, 0)
    check_counters(pool)


def test_task_durations_are_seeded_and_follow_the_distribution() -> None:
    spec = PoolSpec("p", 200, states=RUNNING, task_duration=TaskDuration("uniform", 60, 120))
    state, _ = make(spec, seed=4)
    again, _ = make(spec, seed=4)
    ends = [node.task_ends[0] - 1000 for node in state.pools["p"].nodes]
    assert ends == [node.task_ends[0] - 1000 for node in again.pools["p"].nodes]
    assert all(60 <= end <= 120 for end in ends) and max(ends) - min(ends) > 30


@pytest.mark.parametrize(
    ("option", "counter"), [("requeue", "requeued"), ("terminate", "terminated")]
)
def test_requeue_and_terminate_end_the_tasks_at_once(option: str, counter: str) -> None:
    state, _ = make(PoolSpec("p", 2, states=RUNNING, running_tasks=3, task_duration=fixed(600)))
    pool = state.pools["p"]
    node = state.reimage("p", pool.nodes[0].id, option)
    assert (node.state, node.running_tasks) == ("reimaging", 0)
    assert getattr(pool, f"tasks_{counter}") == 3 and pool.tasks_completed == 0
    check_counters(pool)


def test_taskcompletion_waits_for_the_tasks_then_reimages() -> None:
    state, clock = make(PoolSpec("p", 2, states=RUNNING, running_tasks=2, task_duration=fixed(100)))
    pool = state.pools["p"]
    node_id = pool.nodes[0].id
    ready_before = pool.ready_count
    node = state.reimage("p", node_id, "taskcompletion")
    # Meanwhile: still running its tasks, counted as reimaged once, not ready, not down.
    assert (node.state, node.running_tasks, node.reimages, node.pending) == (
        "running", 2, 1, "reimage",
    )  # fmt: skip
    assert pool.ready_count == ready_before - 1 and pool.current_unavailable == 0
    assert refused(state.reimage, "p", node_id).code == "NodeBeingReimaged"
    assert refused(state.reboot, "p", node_id).code == "NodeBeingReimaged"
    at(state, clock, 99)
    assert node.state == "running"
    at(state, clock, 100)
    assert (node.state, node.running_tasks, pool.current_unavailable) == ("reimaging", 0, 1)
    assert (pool.tasks_completed, pool.tasks_requeued) == (4, 0)  # both nodes' tasks ended
    at(state, clock, 103)
    assert node.state == "idle" and node.reimages == 1
    check_counters(pool)


def test_retaineddata_also_waits_for_the_retention_time() -> None:
    state, clock = make(PoolSpec("p", 1, states=RUNNING, task_duration=fixed(10)))
    node = state.reboot("p", state.pools["p"].nodes[0].id, "retaineddata")
    at(state, clock, 10)
    assert (node.state, node.running_tasks, node.pending, node.ready) == (
        "idle",
        0,
        "reboot",
        False,
    )
    at(state, clock, 15)  # timings.retention = 5 s
    assert node.state == "rebooting"


def test_an_idle_node_with_taskcompletion_goes_at_once() -> None:
    state, _ = make(PoolSpec("p", 1))
    assert state.reimage("p", state.pools["p"].nodes[0].id, "taskcompletion").state == "reimaging"


def test_scheduling_disable_and_enable() -> None:
    state, clock = make(PoolSpec("p", 3, states=RUNNING, running_tasks=2, task_duration=fixed(50)))
    pool = state.pools["p"]
    first, second = pool.nodes[0].id, pool.nodes[1].id
    node = state.disable_scheduling("p", first, "requeue")
    assert (node.scheduling_state, node.state, node.running_tasks) == ("disabled", "idle", 0)
    assert pool.tasks_requeued == 2 and pool.ready_count == 2
    assert (
        refused(state.disable_scheduling, "p", first).code == "NodeAlreadyInTargetSchedulingState"
    )
    other = state.disable_scheduling("p", second, "taskcompletion")
    assert (other.state, other.running_tasks) == ("running", 2)
    at(state, clock, 50)
    assert (other.state, other.running_tasks, other.scheduling_state) == ("idle", 0, "disabled")
    assert pool.min_ready == 1
    state.enable_scheduling("p", first)
    assert refused(state.enable_scheduling, "p", first).code == "NodeAlreadyInTargetSchedulingState"
    assert (node.scheduling_disables, node.scheduling_enables, pool.ready_count) == (1, 1, 2)
    check_counters(pool)


def test_deallocate_keeps_the_node_down_until_it_is_started() -> None:
    state, clock = make(PoolSpec("p", 2))
    pool = state.pools["p"]
    node_id = pool.nodes[0].id
    boot = pool.nodes[0].last_boot_ticks
    assert refused(state.start, "p", node_id).code == "OperationInvalidForCurrentState"
    node = state.deallocate("p", node_id)
    assert node.state == "deallocating" and pool.current_unavailable == 1
    assert refused(state.start, "p", node_id).code == "OperationInvalidForCurrentState"
    at(state, clock, 1)
    assert node.state == "deallocated" and pool.current_unavailable == 1
    at(state, clock, 30)
    assert refused(state.reimage, "p", node_id).code == "OperationInvalidForCurrentState"
    state.start("p", node_id)
    assert node.state == "starting" and node.last_boot_ticks != boot
    at(state, clock, 31)
    assert node.state == "idle" and pool.current_unavailable == 0
    assert (node.deallocations, node.starts, pool.peak_unavailable) == (1, 1, 1)
    check_counters(pool)


def test_remove_nodes_passes_through_leavingpool_and_drops_the_target() -> None:
    state, clock = make(PoolSpec("p", 5))
    pool = state.pools["p"]
    gone = [node.id for node in pool.nodes[:2]]
    state.pool_ops.remove_nodes("p", gone, 900, "requeue")
    assert (pool.allocation_state, pool.target_dedicated) == ("resizing", 3)
    assert [pool.by_id[node_id].state for node_id in gone] == ["leavingpool"] * 2
    assert refused(state.pool_ops.remove_nodes, "p", [pool.nodes[2].id], 900, "requeue").code == (
        "PoolBeingResized"
    )
    at(state, clock, 1)
    assert pool.allocation_state == "steady" and len(pool.nodes) == 3
    assert refused(state.node, "p", gone[0]).code == "NodeNotFound"
    assert (len(pool.removed), pool.min_ready, pool.ready_count) == (2, 3, 3)
    assert [node.removals for node in pool.removed] == [1, 1]
    check_counters(pool)


def test_a_removal_waiting_for_tasks_past_the_timeout_fails_and_restores_the_target() -> None:
    spec = PoolSpec("p", 2, states=RUNNING, task_duration=fixed(1000))
    state, clock = make(spec)
    pool = state.pools["p"]
    node_id = pool.nodes[0].id
    state.pool_ops.remove_nodes("p", [node_id], 300, "taskcompletion")
    assert pool.by_id[node_id].state == "running" and pool.target_dedicated == 1
    at(state, clock, 300)
    assert pool.allocation_state == "steady" and pool.target_dedicated == 2
    assert [code for code, _, _ in pool.resize_errors] == ["RemoveNodesFailed"]
    assert pool.by_id[node_id].pending is None and pool.ready_count == 2
    check_counters(pool)


def test_resize_grows_with_new_batch_like_nodes_and_shrinks_idle_first() -> None:
    state, clock = make(PoolSpec("p", 3, states={"idle": 2 / 3, "running": 1 / 3}))
    pool = state.pools["p"]
    state.pool_ops.resize("p", 5, 1, 900, "requeue")
    assert refused(state.pool_ops.resize, "p", 1, None, 900, "requeue").code == "PoolBeingResized"
    at(state, clock, 1)  # allocated: creating
    new = pool.nodes[3:]
    assert [node.state for node in new] == ["creating"] * 3
    assert [node.id[-2:] for node in new] == ["_d", "_d", "_p"]
    assert [node.is_dedicated for node in new] == [True, True, False]
    assert pool.allocation_state == "steady" and pool.counts() == (5, 1)
    at(state, clock, 3)
    assert {node.state for node in new} == {"idle"} and pool.nodes_added == 3
    running = next(node for node in pool.nodes if node.state == "running")
    state.pool_ops.resize("p", 1, 0, 900, "requeue")
    at(state, clock, 4)
    assert [node.id for node in pool.nodes] == [running.id]  # the running node stayed
    check_counters(pool)


def test_a_core_quota_stops_the_growth_and_leaves_a_resize_error() -> None:
    state, clock = make(PoolSpec("p", 1, cores_per_node=4, core_quota=CoreQuota(dedicated=12)))
    pool = state.pools["p"]
    state.pool_ops.resize("p", 10, None, 900, "requeue")
    at(state, clock, 1)
    assert pool.counts() == (3, 0) and pool.target_dedicated == 10
    assert pool.allocation_state == "steady"
    assert pool.resize_errors[0][0] == "AccountCoreQuotaReached"
    assert pool.resize_errors[0][2] == (("CoreQuota", "12"),)


def test_stop_resize() -> None:
    state, clock = make(PoolSpec("p", 2))
    pool = state.pools["p"]
    assert refused(state.pool_ops.stop_resize, "p").code == "OperationInvalidForCurrentState"
    state.pool_ops.resize("p", 6, None, 900, "requeue")
    state.pool_ops.stop_resize("p")
    assert pool.allocation_state == "stopping" and pool.target_dedicated == 2
    at(state, clock, 1)
    assert pool.allocation_state == "steady" and len(pool.nodes) == 2  # nothing allocated
    assert [code for code, _, _ in pool.resize_errors] == ["ResizeStopped"]


def test_auto_scale_brings_capacity_back_after_removals() -> None:
    spec = PoolSpec("p", 4, auto_scale=AutoScaleSpec(target_dedicated=4, interval=60))
    state, clock = make(spec)
    pool = state.pools["p"]
    assert refused(state.pool_ops.resize, "p", 2, None, 900, "requeue").code == (
        "OperationInvalidForCurrentState"
    )
    state.pool_ops.remove_nodes("p", [node.id for node in pool.nodes[:2]], 900, "requeue")
    at(state, clock, 1)
    assert (len(pool.nodes), pool.target_dedicated, pool.min_ready) == (2, 2, 2)
    at(state, clock, 59)
    assert pool.auto_scale_evaluations == 0
    at(state, clock, 60)  # the evaluation restores the target and allocates
    assert (pool.target_dedicated, pool.allocation_state, pool.auto_scale_evaluations) == (
        4, "resizing", 1,
    )  # fmt: skip
    at(state, clock, 63)
    assert len(pool.nodes) == 4 and pool.ready_count == 4 and pool.nodes_added == 2
    at(state, clock, 120)
    assert pool.auto_scale_evaluations == 2 and pool.allocation_state == "steady"
    assert pool.min_ready == 2  # the dip is remembered
    check_counters(pool)


operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["reimage", "reboot", "deallocate", "start", "disable", "enable", "remove", "resize"]
        ),
        st.integers(0, 7),
        st.sampled_from(["requeue", "terminate", "taskcompletion", "retaineddata"]),
        st.integers(0, 8),
    ),
    max_size=25,
)


def apply(state: EmulatorState, name: str, node_id: str, option: str, which: int) -> None:
    scheduling_option = "requeue" if option == "retaineddata" else option
    if name == "reimage":
        state.reimage("p", node_id, option)
    elif name == "reboot":
        state.reboot("p", node_id, option)
    elif name == "deallocate":
        state.deallocate("p", node_id, option)
    elif name == "start":
        state.start("p", node_id)
    elif name == "disable":
        state.disable_scheduling("p", node_id, scheduling_option)
    elif name == "enable":
        state.enable_scheduling("p", node_id)
    elif name == "remove":
        state.pool_ops.remove_nodes("p", [node_id], 300, option)
    else:
        state.pool_ops.resize("p", which, None, 300, option)


@settings(max_examples=60, deadline=None)
@given(operations, st.integers(0, 3))
def test_counters_agree_with_the_nodes_whatever_happens(
    steps: list[tuple[str, int, str, int]], seed: int
) -> None:
    spec = PoolSpec(
        "p", 8, states={"idle": 0.5, "running": 0.5}, running_tasks=2,
        task_duration=TaskDuration("uniform", 1, 6),
        auto_scale=None if seed % 2 else AutoScaleSpec(8, interval=7),
    )  # fmt: skip
    state, clock = make(spec, seed=seed)
    pool = state.pools["p"]
    lowest = pool.ready_count
    for name, which, option, wait in steps:
        nodes = pool.nodes
        node_id = nodes[which % len(nodes)].id if nodes else "none"
        try:
            apply(state, name, node_id, option, which)
        except BatchOperationError as error:
            assert error.status in (404, 409)
        check_counters(pool)
        lowest = min(lowest, pool.ready_count)
        for _ in range(wait):
            clock.advance(0.5)
            state.advance()
            check_counters(pool)
            lowest = min(lowest, pool.ready_count)
    assert pool.min_ready <= lowest


def test_pool_filters_see_the_allocation_state_and_last_modified() -> None:
    state, _ = make(PoolSpec("p", 3), PoolSpec("q", 3))
    resizing = compile_filter("allocationState eq 'resizing'", POOL_FIELDS)
    before = state.pools["q"].modified_ticks
    state.pool_ops.remove_nodes("p", [state.pools["p"].nodes[0].id], 900, "requeue")
    assert [pool.id for pool in state.pools.values() if resizing(pool)] == ["p"]
    state.pool_ops.patch_metadata("q", [("k", "v")])
    changed = compile_filter(f"lastModified gt datetime'{iso(before)}'", POOL_FIELDS)
    assert [pool.id for pool in state.pools.values() if changed(pool)] == ["p", "q"]
