"""``run --dry-run``: resolve the plan, then simulate its rollout; nothing that changes is sent.

Resolving only lists pools and nodes (read-only, like ``plan``), and the journal is not
opened. The simulation drives each pool's rollout policy (``rollout/pool.py`` and
``rollout/policy.py``, the very objects a run asks) on a simulated clock, with every node
assumed to take the same time to come back (``--assume-recovery``). So, as in a run:

* waves open one after another; the next opens ``pause_between_waves`` (or ``soak``, if
  longer) after the previous one completed (empty ladder steps are skipped without a pause);
* within a wave, a node starts whenever fewer than ``max_unavailable`` nodes of the pool are
  unavailable, counting the nodes already down for other reasons (so a wave of ``w`` nodes
  with ``s`` free slots takes ``ceil(w / s)`` recovery times);
* pools run side by side, so the run takes as long as its slowest pool.

For ``action: replace`` a step of the ladder replaces ``surge`` nodes at once (or, without
surge, as many as ``max_unavailable`` leaves room for), and the assumed time is a step's.
Without a health gate a node counts as done once its request is accepted (assumed
``REQUEST_TIME``) and is limited by the account's concurrency instead. Retries, throttling
and checkpoints are not simulated (checkpoints are named in the output).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from fleet_reimage.plan.model import Action, Plan
from fleet_reimage.plan.resolve import PoolResolution, Resolution
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.rollout.replace import surge_nodes
from fleet_reimage.units import count, format_duration, plural
from fleet_reimage.views.runview import span, when

DEFAULT_RECOVERY = 600.0  # without a health timeout to go by
REQUEST_TIME = 1.0  # a reimage/reboot request, when nothing waits for the node


@dataclass(frozen=True, slots=True)
class WaveSim:
    wave: int  # 1-based ladder step
    nodes: int
    start: float  # seconds from the start of the run
    end: float


@dataclass(slots=True)
class PoolSim:
    label: str
    selected: int
    slots: int  # nodes of the pool that may be down at once, after those already down
    waves: list[WaveSim] = field(default_factory=list)
    blocked: str | None = None  # why the pool cannot start at all
    warned: bool = False  # the schedule carries a warning for this pool

    @property
    def duration(self) -> float:
        return self.waves[-1].end if self.waves else 0.0


@dataclass(frozen=True, slots=True)
class Assumption:
    per_node: float  # seconds a node holds an unavailability slot
    text: str  # what was assumed, and why, for the output


def assumption(plan: Plan, assume_recovery: float | None) -> Assumption:
    """How long a node is assumed to stay unavailable, and the sentence that says so."""
    health = plan.rollout.health
    if not health.wait:
        return Assumption(
            REQUEST_TIME,
            f"the plan does not wait for health: a node counts as done once its request is "
            f"accepted (assumed {span(REQUEST_TIME)}); nodes reboot in the background",
        )
    if assume_recovery is not None:
        return Assumption(
            assume_recovery, f"each node assumed back {span(assume_recovery)} after its request"
        )
    half = health.timeout / 2
    return Assumption(
        half,
        f"each node assumed back {span(half)} after its request (half the health timeout "
        f"of {format_duration(health.timeout)}; change with --assume-recovery 10m)",
    )


def simulate_pool(
    label: str,
    wave_sizes: list[int],
    *,
    slots: int,
    per_node: float,
    pause: float,
) -> PoolSim:
    """The expected wave timeline of one pool: its rollout policy on a simulated clock (pure).

    ``slots``: how many of the pool's nodes may be down at once, after those already down.
    """
    pool = PoolSim(label, sum(wave_sizes), slots)
    waves: list[list[int]] = []
    for size in wave_sizes:
        first = sum(len(w) for w in waves)
        waves.append(list(range(first, first + size)))
    rollout = PoolRollout(waves, max_unavailable=slots, pause_between_waves=pause)
    back: list[tuple[float, int]] = []  # (when it is back, target), soonest first
    started: dict[int, float] = {}  # wave -> when its first node started
    clock = 0.0
    while not rollout.done:
        while (target := rollout.take_next(clock)) is not None:
            started.setdefault(rollout.wave, clock)
            heapq.heappush(back, (clock + per_node, target))
        clock = min(back[0][0] if back else math.inf, rollout.next_start_time(clock) or math.inf)
        if not math.isfinite(clock):  # pragma: no cover - a pool with slots never stalls
            break
        while back and back[0][0] <= clock:
            completed = rollout.settle(heapq.heappop(back)[1], clock)
            if completed is not None:
                step = completed.wave
                wave = WaveSim(step + 1, wave_sizes[step], started[step], completed.at)
                pool.waves.append(wave)
    return pool


def simulate(resolution: Resolution, assumed: Assumption) -> list[PoolSim]:
    plan = resolution.plan
    execution = plan.execution
    out = []
    for pool in resolution.pools:
        label = f"{pool.account}/{pool.pool_id}"
        if pool.skipped_reason or not pool.selected:
            continue
        slots = pool.max_unavailable - pool.baseline_unavailable
        if not plan.rollout.health.wait:
            slots = min(pool.max_unavailable, execution.per_account_concurrency)
        surge = surge_nodes(plan.rollout.surge, len(pool.selected))
        if plan.action is Action.REPLACE and surge > 0:  # a step replaces s nodes at once
            slots = surge
        if slots < 1:
            blocked = PoolSim(label, len(pool.selected), 0)
            blocked.blocked = blocked_reason(pool, plan)
            out.append(blocked)
            continue
        sim = simulate_pool(
            label,
            pool.wave_sizes,
            slots=slots,
            per_node=assumed.per_node,
            # A soak runs beside the pause; gates are assumed to pass at once.
            pause=max(plan.rollout.pause_between_waves, plan.rollout.soak),
        )
        sim.warned = bool(pool.warnings)
        out.append(sim)
    return out


def blocked_reason(pool: PoolResolution, plan: Plan) -> str:
    """Why a pool cannot start at all (its nodes already down fill max_unavailable)."""
    return (
        f"blocked: {count(pool.baseline_unavailable, 'node')} "
        f"{plural('is', pool.baseline_unavailable)} already unavailable and "
        f"max_unavailable is {pool.max_unavailable}; the run would wait for them and stop "
        f"this pool after {format_duration(plan.rollout.health.timeout)} if none comes back"
    )


def render_simulation(
    resolution: Resolution, pools: list[PoolSim], assumed: Assumption, deadline: float | None
) -> str:
    plan = resolution.plan
    lines = ["", "Expected timeline (simulated; nothing is sent):", f"  {assumed.text}"]
    for pool in pools:
        lines.extend(_pool_lines(pool))
    for skipped in resolution.pools:
        if skipped.skipped_reason:
            lines.append(
                f"  {skipped.account}/{skipped.pool_id}: skipped: {skipped.skipped_reason}"
            )
    overall = max((p.duration for p in pools), default=0.0)
    lines.append(
        f"  overall: about {span(overall)} (pools roll side by side; the slowest sets the pace)"
    )
    if plan.rollout.confirm_after_wave is not None:
        lines.append(
            f"  plus the wait at the checkpoint after wave {plan.rollout.confirm_after_wave}, "
            "for the operator's answer"
        )
    if plan.rollout.gates:
        lines.append(
            f"  plus the time the gates take ({', '.join(g.name for g in plan.rollout.gates)}): "
            "each is assumed to pass at once"
        )
    if deadline is not None:
        lines.append(_deadline_line(overall, deadline, resolution.resolved_at))
    return "\n".join(lines)


def _pool_lines(pool: PoolSim) -> list[str]:
    if pool.blocked:
        return [f"  {pool.label}: {count(pool.selected, 'node')}, {pool.blocked}"]
    lines = [
        f"  {pool.label}: {count(pool.selected, 'node')}, {pool.slots} at a time, "
        f"about {span(pool.duration)}"
    ]
    previous_end: float | None = None
    for wave in pool.waves:
        pause = ""
        if previous_end is not None and wave.start > previous_end:
            pause = f"  (after a {span(wave.start - previous_end)} pause)"
        nodes = count(wave.nodes, "node")
        lines.append(
            f"    wave {wave.wave}: {nodes:>11}  +{span(wave.start)} -> +{span(wave.end)}{pause}"
        )
        previous_end = wave.end
    if pool.warned:
        lines.append("    (see this pool's warning above: it may stop at its first answer)")
    return lines


def _deadline_line(overall: float, deadline: float, now: float) -> str:
    end = now + overall
    if end <= deadline:
        spare = span(deadline - end)
        return f"  deadline {when(deadline)}: expected end {when(end)}, {spare} to spare"
    return (
        f"  deadline {when(deadline)}: expected end {when(end)} is {span(end - deadline)} "
        "LATE; nothing new starts after the deadline, so the run would stop unfinished "
        "(resume it in the next window)"
    )
