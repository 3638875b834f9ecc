"""The emulator's state machine, on a manual clock (no HTTP, no real time)."""

from __future__ import annotations

import random
import re

import pytest
from emulator_helpers import BUSY_CODES, TEST_KEY

from fleet_reimage.emulator import (
    AccountSpec,
    BatchOperationError,
    EmulatorState,
    FleetSpec,
    ManualClock,
    Outcomes,
    PoolSpec,
    Timings,
    build_state,
)
from fleet_reimage.emulator.population import node_ids
from fleet_reimage.emulator.rules import VM_REIMAGE_REASON
from fleet_reimage.emulator.spec import NODE_STATES
from fleet_reimage.emulator.timefmt import TICKS_PER_SECOND

ACCOUNT = AccountSpec("emu", TEST_KEY)
SECOND = TICKS_PER_SECOND


def make(
    *pools: PoolSpec,
    timings: Timings | None = None,
    outcomes: Outcomes | None = None,
    seed: int = 0,
    clock: ManualClock | None = None,
) -> tuple[EmulatorState, ManualClock]:
    clock = clock or ManualClock()
    spec = FleetSpec(
        ACCOUNT,
        tuple(pools),
        seed=seed,
        timings=timings or Timings(),
        outcomes=outcomes or Outcomes(),
    )
    return build_state(spec, clock), clock


def refused(action: object, *args: str) -> BatchOperationError:
    with pytest.raises(BatchOperationError) as caught:
        action(*args)  # type: ignore[operator]
    return caught.value


def test_reimage_life_cycle_with_exact_timestamps() -> None:
    state, clock = make(PoolSpec("p", 3), timings=Timings(reimaging=2, starting=1))
    node = state.pools["p"].nodes[0]
    old_boot = node.last_boot_ticks
    t0 = state.now_ticks()
    state.reimage("p", node.id)
    assert (node.state, node.transition_ticks, node.reimages) == ("reimaging", t0, 1)
    clock.advance(1.999)
    state.advance()
    assert node.state == "reimaging" and node.last_boot_ticks == old_boot
    clock.advance(0.001)
    state.advance()
    assert node.state == "starting"
    assert node.last_boot_ticks == t0 + 2 * SECOND == node.transition_ticks
    clock.advance(1)
    state.advance()
    assert node.state == "idle" and node.transition_ticks == t0 + 3 * SECOND
    assert state.pending_transitions() == 0


def test_lazy_advance_stamps_transitions_when_they_were_due() -> None:
    state, clock = make(
        PoolSpec("p", 2), timings=Timings(reimaging=2, starting=1, waitingforstarttask=0.5)
    )
    node = state.pools["p"].nodes[1]
    t0 = state.now_ticks()
    state.reimage("p", node.id)
    clock.advance(3600)  # nobody looks for an hour
    assert state.node("p", node.id).state == "idle"
    assert node.last_boot_ticks == t0 + 2 * SECOND
    assert node.transition_ticks == t0 + int(3.5 * SECOND)


def test_waiting_for_start_task_phase_only_when_timed() -> None:
    state, clock = make(
        PoolSpec("p", 1), timings=Timings(reimaging=1, starting=1, waitingforstarttask=2)
    )
    node_id = state.pools["p"].nodes[0].id
    seen = []
    state.reimage("p", node_id)
    for _ in range(5):
        seen.append(state.node("p", node_id).state)
        clock.advance(1)
    assert seen == ["reimaging", "starting", "waitingforstarttask", "waitingforstarttask", "idle"]


def test_reboot_life_cycle_and_running_tasks_cleared() -> None:
    state, clock = make(
        PoolSpec("p", 4, states={"running": 1.0}, running_tasks=3),
        timings=Timings(rebooting=1, starting=1),
    )
    node = state.pools["p"].nodes[0]
    assert node.running_tasks == 3
    state.reboot("p", node.id)
    assert (node.state, node.running_tasks, node.reboots, node.reimages) == ("rebooting", 0, 1, 0)
    clock.advance(2)
    assert state.node("p", node.id).state == "idle"


def test_every_conflict_code() -> None:
    share = 1 / len(NODE_STATES)
    state, _ = make(PoolSpec("p", len(NODE_STATES), states=dict.fromkeys(NODE_STATES, share)))
    by_state = {node.state: node.id for node in state.pools["p"].nodes}
    assert set(by_state) == set(NODE_STATES)
    for node_state, node_id in by_state.items():
        if node_state in ("idle", "running"):
            continue
        for action in (state.reimage, state.reboot):
            error = refused(action, "p", node_id)
            code = BUSY_CODES.get(node_state, "OperationInvalidForCurrentState")
            assert (error.status, error.code) == (409, code), node_state
    state.reimage("p", by_state["idle"])
    state.reboot("p", by_state["running"])
    assert refused(state.reboot, "p", by_state["idle"]).code == "NodeBeingReimaged"
    assert refused(state.reimage, "p", by_state["running"]).code == "NodeBeingRebooted"


def test_reimage_refused_on_a_refusing_pool_but_reboot_works() -> None:
    state, _ = make(PoolSpec("vm", 2, reimage="refused"))
    node_id = state.pools["vm"].nodes[0].id
    error = refused(state.reimage, "vm", node_id)
    assert (error.status, error.code) == (409, "OperationNotValidOnNode")
    assert error.values == (
        (
            "Reason",
            "Operation reimage can be invoked only on pools created with cloudServiceConfiguration",
        ),
    )
    assert error.values[0][1] == VM_REIMAGE_REASON
    assert state.pools["vm"].nodes[0].state == "idle"
    state.reboot("vm", node_id)
    assert state.pools["vm"].nodes[0].state == "rebooting"


def test_not_found() -> None:
    state, _ = make(PoolSpec("p", 1))
    assert (refused(state.reimage, "nope", "x").code, refused(state.node, "p", "x").code) == (
        "PoolNotFound",
        "NodeNotFound",
    )
    assert refused(state.reboot, "p", "x").status == 404


def _finish_all(state: EmulatorState, clock: ManualClock, order: list[str]) -> dict[str, str]:
    for node_id in order:
        state.reimage("p", node_id)
    clock.advance(100)
    state.advance()
    return {node.id: node.state for node in state.pools["p"].nodes}


def test_outcomes_are_deterministic_and_independent_of_order() -> None:
    outcomes = Outcomes(starttaskfailed=0.1, unusable=0.05)
    first, clock1 = make(PoolSpec("p", 4000), outcomes=outcomes, seed=5)
    second, clock2 = make(PoolSpec("p", 4000), outcomes=outcomes, seed=5)
    ids = [node.id for node in first.pools["p"].nodes]
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    result = _finish_all(first, clock1, ids)
    assert result == _finish_all(second, clock2, shuffled)
    counts = {name: list(result.values()).count(name) for name in set(result.values())}
    assert 330 <= counts["starttaskfailed"] <= 470  # 400 expected
    assert 140 <= counts["unusable"] <= 260  # 200 expected
    assert counts["idle"] == 4000 - counts["starttaskfailed"] - counts["unusable"]
    other, clock3 = make(PoolSpec("p", 4000), outcomes=outcomes, seed=6)
    other_result = _finish_all(other, clock3, [node.id for node in other.pools["p"].nodes])
    assert sorted(other_result.values()) != sorted(result.values())  # another seed, other draws


def test_outcome_depends_on_the_nth_operation() -> None:
    state, clock = make(PoolSpec("p", 400), outcomes=Outcomes(starttaskfailed=0.5), seed=2)
    nodes = state.pools["p"].nodes
    for node in nodes:
        state.reimage("p", node.id)
    clock.advance(10)
    survivors = [node for node in state.iter_nodes() if node.state == "idle"]
    assert 150 <= len(survivors) <= 250
    for node in survivors:
        state.reimage("p", node.id)
    clock.advance(10)
    state.advance()
    # Keyed by node only, every survivor would come back idle again.
    second_round = [node.state for node in survivors]
    assert 0 < second_round.count("starttaskfailed") < len(survivors)
    assert all(node.reimages == 2 and node.operations == 2 for node in survivors)


def test_peak_unavailable_exact_on_a_known_schedule() -> None:
    state, clock = make(PoolSpec("p", 6), timings=Timings(reimaging=2, starting=1))
    ids = [node.id for node in state.pools["p"].nodes]
    for at, node_id in ((0, ids[0]), (1, ids[1]), (2, ids[2]), (3, ids[3]), (3.5, ids[4])):
        clock.advance(at - (clock.monotonic() - 1000))
        state.reimage("p", node_id)
    # At t=3, node 0's 3 s finished exactly then, so 1, 2, 3 are out; at 3.5 also 4.
    pool = state.pools["p"]
    assert (pool.peak_unavailable, pool.current_unavailable) == (4, 4)
    clock.advance(100)
    state.advance()
    assert (pool.peak_unavailable, pool.current_unavailable) == (4, 0)


@pytest.mark.parametrize("seed", range(12))
def test_peak_unavailable_matches_a_brute_force_reference(seed: int) -> None:
    rng = random.Random(seed)
    duration = 3.0
    state, clock = make(PoolSpec("p", 60), timings=Timings(reimaging=2, starting=1))
    times = sorted(rng.randint(0, 40) * 0.5 for _ in range(40))  # exact in binary
    for index, (node, at) in enumerate(zip(state.pools["p"].nodes, times, strict=False)):
        clock.advance(at - (clock.monotonic() - 1000))
        state.reimage("p", node.id)
        # Reference: applied operations whose half-open window [t, t + 3) covers this instant.
        expected_now = sum(1 for t in times[: index + 1] if at < t + duration)
        assert state.pools["p"].current_unavailable == expected_now
    expected_peak = max(
        sum(1 for t in times[: index + 1] if at < t + duration) for index, at in enumerate(times)
    )
    assert state.pools["p"].peak_unavailable == expected_peak


def test_initially_busy_nodes_do_not_count_as_unavailable_from_operations() -> None:
    state, _ = make(PoolSpec("p", 10, states={"starting": 0.5, "idle": 0.5}))
    assert state.summary("p").current_unavailable == 0
    assert state.summary("p").states == {"starting": 5, "idle": 5}


def test_idle_fleet_costs_nothing_and_transitions_are_lazy() -> None:
    state, clock = make(PoolSpec("big", 100_000), timings=Timings(reimaging=2, starting=1))
    assert state.pending_transitions() == 0
    nodes = state.pools["big"].nodes
    for node in nodes[:500]:
        state.reimage("big", node.id)
    assert state.pending_transitions() == 500
    clock.advance(2.5)
    assert state.pending_transitions() == 500  # nothing moves until somebody looks
    state.advance()
    assert state.pending_transitions() == 500  # all 500 now wait for starting → idle
    assert state.summary("big").states == {"idle": 99_500, "starting": 500}
    clock.advance(1)
    state.advance()
    assert state.pending_transitions() == 0
    assert state.summary("big").peak_unavailable == 500


def test_node_ids_look_like_batch_and_follow_the_seed() -> None:
    vm = PoolSpec("v", 12)
    ids = node_ids(1, vm)
    assert all(re.fullmatch(r"tvmps_[0-9a-f]{64}_d", node_id) for node_id in ids)
    assert len(set(ids)) == 12
    assert node_ids(1, vm) == ids != node_ids(2, vm)
    assert node_ids(1, PoolSpec("w", 12)) != ids  # keyed by pool too
    assert node_ids(1, PoolSpec("x", ("a", "b"))) == ["a", "b"]


def test_initial_mix_boot_times_and_creating_nodes() -> None:
    spec = PoolSpec(
        "p", 1000, states={"idle": 0.697, "running": 0.3, "creating": 0.003}, recently_booted=0.1
    )
    state, _ = make(spec, seed=9)
    nodes = state.pools["p"].nodes
    assert state.summary("p").states == {"idle": 697, "running": 300, "creating": 3}
    now = state.now_ticks()
    booted = [node for node in nodes if node.state != "creating"]
    assert all(node.last_boot_ticks is None for node in nodes if node.state == "creating")
    ages = [(now - node.last_boot_ticks) / SECOND for node in booted if node.last_boot_ticks]
    recent = [age for age in ages if age <= 3600]
    assert 90 <= len(recent) <= 100  # the 10% chosen, minus any that landed on creating
    assert all(2 * 86_400 <= age <= 30 * 86_400 for age in ages if age > 3600)
    assert all(node.allocation_ticks < (node.last_boot_ticks or now) for node in booted)
    assert all(node.running_tasks == (1 if node.state == "running" else 0) for node in nodes)
    again, _ = make(spec, seed=9)
    assert [n.state for n in again.pools["p"].nodes] == [n.state for n in nodes]


def test_forced_states_and_removed_nodes() -> None:
    state, clock = make(PoolSpec("p", 5), timings=Timings(reimaging=2, starting=1))
    first, second, third = (node.id for node in state.pools["p"].nodes[:3])
    state.reimage("p", first)
    state.force_state("p", first, "offline")  # cancels the pending reimage
    assert state.summary("p").current_unavailable == 0
    clock.advance(10)
    assert state.node("p", first).state == "offline"
    assert refused(state.reimage, "p", first).code == "OperationInvalidForCurrentState"
    state.reimage("p", second)
    state.remove_node("p", second)
    assert refused(state.node, "p", second).code == "NodeNotFound"
    clock.advance(10)
    assert state.summary("p").states == {"idle": 3, "offline": 1}
    assert state.summary("p").peak_unavailable == 1
    assert [node.index for node in state.pools["p"].nodes] == [0, 1, 2, 3]
    assert state.force_state("p", third, "creating").last_boot_ticks is None
