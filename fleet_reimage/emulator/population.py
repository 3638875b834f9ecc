"""The initial account a fleet spec describes: node ids, states, times and running tasks,
from the seed; and the nodes a growing pool adds later.

Everything here is a function of (seed, pool spec) and the clock's "now": the same fleet
file gives the same ids, the same state mix and the same task durations every run; boot
times are relative to now. Ids look like the service's on virtual-machine pools:
``tvmps_<64 hex>_d`` for dedicated nodes, ``_p`` for low-priority ones.
"""

from __future__ import annotations

import calendar
import math
import random

from .clock import Clock
from .ids import ip_address, vm_node_id
from .resources import Node, Pool
from .seeded import hex_digest, integer, uniform
from .spec import NODE_STATES, FleetSpec, PoolSpec
from .state import EmulatorState
from .timefmt import TICKS_PER_SECOND, ticks_from_seconds

_DAY = 86_400
_EPOCH_2025 = calendar.timegm((2025, 1, 1, 0, 0, 0, 0, 0, 0))


def build_state(spec: FleetSpec, clock: Clock) -> EmulatorState:
    """A fresh ``EmulatorState`` for ``spec``, with times relative to ``clock``'s now."""
    now = ticks_from_seconds(clock.wall())
    started = clock.monotonic()
    pools = [
        build_pool(spec.seed, index, pool_spec, now, started)
        for index, pool_spec in enumerate(spec.pools)
    ]
    return EmulatorState(
        pools,
        clock,
        timings=spec.timings,
        outcomes=spec.outcomes,
        seed=spec.seed,
        accepted_tokens=spec.account.bearer_tokens,
    )


def pool_allocation_seconds(seed: int, pool_id: str) -> int:
    """When the pool's nodes were allocated: a fixed, seeded instant in 2025."""
    return _EPOCH_2025 + integer(0, 180 * _DAY, seed, "allocation", pool_id)


def node_ids(seed: int, spec: PoolSpec) -> list[str]:
    if not isinstance(spec.nodes, int):
        return list(spec.nodes)
    rng = random.Random(hex_digest(seed, "ids", spec.id))
    return [vm_node_id(rng) for _ in range(spec.nodes)]


def state_plan(seed: int, spec: PoolSpec, count: int) -> list[str]:
    """Exactly ``count`` states in the spec's shares (largest remainder), shuffled by seed."""
    shares = [(state, spec.states.get(state, 0.0)) for state in NODE_STATES]
    exact = [(state, share * count) for state, share in shares]
    counts = {state: math.floor(amount) for state, amount in exact}
    left = count - sum(counts.values())
    by_remainder = sorted(exact, key=lambda item: item[1] - math.floor(item[1]), reverse=True)
    for state, _ in by_remainder[: max(0, left)]:
        counts[state] += 1
    plan = [state for state in NODE_STATES for _ in range(counts[state])]
    random.Random(hex_digest(seed, "states", spec.id)).shuffle(plan)
    return plan


def task_ends(seed: int, spec: PoolSpec, node_id: str, count: int, started: float) -> list[float]:
    """When each of a node's running tasks ends (monotonic seconds), ascending."""
    return sorted(
        started + spec.task_duration.seconds(uniform(seed, "task", spec.id, node_id, n))
        for n in range(count)
    )


def build_pool(seed: int, index: int, spec: PoolSpec, now: int, started: float = 0.0) -> Pool:
    allocated = pool_allocation_seconds(seed, spec.id) * TICKS_PER_SECOND
    pool = Pool(
        spec.id,
        spec.vm_size,
        creation_ticks=allocated - 300 * TICKS_PER_SECOND,
        index=index,
        spec=spec,
    )
    ids = node_ids(seed, spec)
    states = state_plan(seed, spec, len(ids))
    rng = random.Random(hex_digest(seed, "nodes", spec.id))
    recent = set(rng.sample(range(len(ids)), round(spec.recently_booted * len(ids))))
    for n, (node_id, state) in enumerate(zip(ids, states, strict=True)):
        node = _initial_node(pool, node_id, n, state, rng, now, allocated, recent=n in recent)
        if state == "running" and spec.running_tasks:
            node.task_ends = task_ends(seed, spec, node_id, spec.running_tasks, started)
            node.running_tasks = spec.running_tasks
        pool.add(node)
    return pool


def _initial_node(
    pool: Pool,
    node_id: str,
    n: int,
    state: str,
    rng: random.Random,
    now: int,
    allocated: int,
    *,
    recent: bool,
) -> Node:
    second = TICKS_PER_SECOND
    run = rng.randint(0, 400)
    succeeded = run - rng.randint(0, min(run, 5))
    address = ip_address(pool.index, n)
    if state == "creating":
        # A node still being created has no boot yet and was allocated moments ago.
        created = now - rng.randint(30, 600) * second
        return Node(
            pool,
            node_id,
            n,
            state,
            transition_ticks=created,
            last_boot_ticks=None,
            allocation_ticks=created,
            ip_address=address,
            total_tasks_run=run,
            total_tasks_succeeded=succeeded,
        )
    if recent:
        boot = now - rng.randint(30 * second, 3300 * second)
    else:
        boot = now - rng.randint(2 * _DAY * second, 30 * _DAY * second)
    transition = min(now, boot + rng.randint(5 * second, 60 * second))
    return Node(
        pool,
        node_id,
        n,
        state,
        transition_ticks=transition,
        last_boot_ticks=boot,
        allocation_ticks=min(allocated, boot - 60 * second),
        ip_address=address,
        total_tasks_run=run,
        total_tasks_succeeded=succeeded,
    )
