"""One sample of a live run, for the live table and the progress log line (read-only).

A ``Tracker`` reads an executor's in-memory snapshots (a few objects per pool) into a
``Frame``: counts per pool and in total, rates of the nodes that went through the action,
the ETA along each pool's ladder (``views.eta``), the failure budget in use, and why a pool
is not moving (between waves, held at a checkpoint, over or at ``max_unavailable``, stopped).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet_reimage.engine.blockwatch import Blockage, blockage, is_blocked
from fleet_reimage.engine.gates import waits_of
from fleet_reimage.engine.runstate import PoolRun, PoolSnapshot
from fleet_reimage.units import count
from fleet_reimage.views.eta import RateMeter, RecoveryMeter, ladder_eta
from fleet_reimage.views.runview import span

if TYPE_CHECKING:
    from fleet_reimage.engine.executor import Executor

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


# --- one frame --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolLine:
    snap: PoolSnapshot
    rate: float | None
    eta: float | None
    note: str | None  # why the pool is not moving, if it is not


@dataclass(frozen=True, slots=True)
class Budget:
    """The failure budget in use: failures that count against it, and the limit."""

    counted: int
    limit: int
    forgiven: int = 0

    def cell(self, failed: int) -> str:
        """``17/20``; ``25 (5/20)`` when 20 earlier failures were forgiven on resume."""
        if self.forgiven:
            return f"{failed} ({self.counted}/{self.limit})"
        return f"{self.counted}/{self.limit}"


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
    budget: Budget


def sum_counts(snaps: Sequence[PoolSnapshot]) -> dict[str, int]:
    return {key: sum(getattr(s, key) for s in snaps) for key in COUNT_KEYS}


def processed(snap: PoolSnapshot) -> int:
    """Nodes that went through the action: the ones a rate is about (not skipped or gone)."""
    return snap.healthy + snap.done_unverified + snap.failed


def pool_note(pool: PoolRun, now: float, stops_after: float | None = None) -> str | None:
    """Why a pool is not starting nodes, from its rollout state (read-only).

    ``stops_after``: how long a blocked pool waits before it stops (the health timeout;
    None in a shared run, where a runner never stops a pool for being blocked)."""
    rollout = pool.rollout
    if rollout.stopped is not None:
        return f"stopped: {rollout.stopped}"
    if rollout.done:
        return None if pool.awaiting else "done"
    why = blockage(pool)
    if rollout.unavailable > rollout.max_unavailable and rollout.active:
        return over_limit_note(rollout.unavailable, why)  # (none of ours: it is blocked)
    if rollout.held:
        return "held at the checkpoint"
    if now < rollout.next_wave_at:
        return f"next wave in {span(rollout.next_wave_at - now)}"
    waiting = next_wave_note(pool, now)
    if waiting is not None:
        return waiting
    if is_blocked(pool) and pool.blocked_since is not None:
        wait = "waiting for nodes to come back"
        if stops_after is not None:
            left = stops_after - (now - pool.blocked_since)
            wait += f"; stops (resumable, nodes kept pending) in {span(left)}"
        return f"blocked: {why.reason()}; {wait}"
    if rollout.blocked_by_unavailability() and (why.others or why.failed_down):
        if not rollout.active:
            return why.reason()
        # Full with nodes of ours in progress too: say them, or the counts do not add up.
        ours = f"{count(rollout.active, 'node')} of ours in progress"
        joiner = ", " if why.others and why.failed_down else " and "
        return f"at max_unavailable {why.limit}: {ours}{joiner}{why.held()}"
    return None


def next_wave_note(pool: PoolRun, now: float) -> str | None:
    """The pool's next wave waits for its soak or its gates (``rollout.soak``, ``gates``)."""
    waits = waits_of(pool)
    if waits is None or not pool.rollout.queued:
        return None
    if waits.soaking is not None:
        left = waits.soak_until - now
        end = f"{span(left)} left" if left > 0 else "ends with the next poll"
        return f"soaking wave {waits.soaking + 1}: {end}"
    if waits.gate_due(pool.rollout.wave):
        return f"asking the gates before wave {pool.rollout.wave + 1}"
    return None


def over_limit_note(unavailable: int, why: Blockage) -> str:
    """Why a pool shows more nodes unavailable than its limit (it never starts one past it).

    The limit is checked before each dispatch, and a node of ours that fails after the
    action keeps its room without a gap (unless ``failed_holds_availability: false``); only
    nodes that go down on their own after ours started can take the pool past it, and
    nothing new starts there until it is back under.
    """
    ours = unavailable - why.others - why.failed_down
    held = f", {why.failed_down} failed ones of ours still down" if why.failed_down else ""
    return (
        f"{unavailable} unavailable, over max_unavailable {why.limit}: "
        f"{count(why.others, 'node')} went down for other reasons after {ours} of ours "
        f"started{held}; nothing starts until fewer than {why.limit} are down"
    )


class Tracker:
    """Samples one executor into frames, keeping the rate history between them."""

    def __init__(
        self,
        executor: Executor,
        clock: Any = time.monotonic,
        recoveries: RecoveryMeter | None = None,
    ) -> None:
        self.executor = executor
        self.clock = clock
        self.started = clock()
        self.recoveries = recoveries or RecoveryMeter()
        self.total_meter = RateMeter()
        self.meters: dict[tuple[str, str], RateMeter] = {}
        self.wave_sizes = _wave_sizes(executor)
        # How long a blocked pool waits before it stops (never, in a shared run).
        self.stops_after = None if executor.shared else executor.plan.rollout.health.timeout
        self.frame()  # the first sample: rates count from here

    def frame(self) -> Frame:
        now = self.clock()
        executor = self.executor
        snaps = executor.snapshots()
        lines = []
        etas: list[float | None] = []
        for snap, pool in zip(snaps, executor.pools, strict=False):
            meter = self.meters.setdefault((snap.account, snap.pool_id), RateMeter())
            meter.add(now, processed(snap))
            eta = self.pool_eta(snap, pool, now)
            if not snap.stopped:
                etas.append(eta)
            note = pool_note(pool, now, self.stops_after)
            lines.append(PoolLine(snap, meter.per_minute(), eta, note))
        totals = sum_counts(snaps)
        self.total_meter.add(now, sum(processed(s) for s in snaps))
        stopping = None
        if executor.stop_kind is not None:
            stopping = f"{executor.stop_kind}: {executor.stop_reason}"
        return Frame(
            run_id=executor.run_id,
            action=executor.action,
            elapsed=now - self.started,
            pools=lines,
            totals=totals,
            finished=sum(s.finished for s in snaps),
            rate=self.total_meter.per_minute(),
            eta=None if None in etas else max((e for e in etas if e is not None), default=0.0),
            stopping=stopping,
            budget=budget_in_use(executor),
        )

    def pool_eta(self, snap: PoolSnapshot, pool: PoolRun, now: float) -> float | None:
        """Seconds until the pool is done, along its ladder at the measured recovery time."""
        remaining = snap.selected - snap.finished
        if snap.stopped or remaining <= 0:
            return None if snap.stopped else 0.0
        recovery = self.recoveries.typical()
        if recovery is None:
            return None
        rollout = pool.rollout
        targets = self.executor.targets
        in_progress = []
        for target_id in rollout.active_targets():
            started = targets[target_id].started if target_id in targets else None
            in_progress.append(recovery / 2 if started is None else recovery - (now - started))
        sizes = self.wave_sizes.get((snap.account, snap.pool_id), [])
        wave = min(rollout.wave, len(sizes))
        waiting = remaining - len(in_progress)
        queued = max(0, min(waiting, sum(sizes[: wave + 1]) - snap.finished - len(in_progress)))
        return ladder_eta(
            queued=queued,
            in_progress=in_progress,
            later_waves=_trimmed(sizes[wave + 1 :], waiting - queued),
            slots=rollout.max_unavailable - rollout.baseline,
            recovery=recovery,
            pause=self.executor.plan.rollout.pause_between_waves,
            wait=max(0.0, rollout.next_wave_at - now) if rollout.next_wave_at > now else 0.0,
        )


def _wave_sizes(executor: Executor) -> dict[tuple[str, str], list[int]]:
    """Each pool's targets per ladder step (once, at the start: waves never change)."""
    sizes: dict[tuple[str, str], list[int]] = {}
    for pool in executor.pools:
        sizes[(pool.account.name, pool.pool_id)] = [0] * pool.rollout.wave_count
    for target in executor.targets.values():
        record = target.record
        steps = sizes.setdefault((record.account, record.pool), [])
        while len(steps) <= record.wave:
            steps.append(0)
        steps[record.wave] += 1
    return sizes


def _trimmed(sizes: Sequence[int], total: int) -> list[int]:
    """The later waves holding at most ``total`` nodes (a resumed run may have done some)."""
    out = []
    for size in sizes:
        take = max(0, min(size, total))
        out.append(take)
        total -= take
    return out


def budget_in_use(executor: Executor) -> Budget:
    """The failure budget the run enforces now (in a shared run, every runner's claims tell
    its budget the whole run's failures)."""
    budget = executor.budget
    return Budget(budget.counted, budget.limit, budget.forgiven)


_MOVING = (
    ("in_flight", "in flight"),
    ("awaiting_health", "awaiting health"),
    ("gone", "gone"),
    ("skipped", "skipped"),
)


def progress_text(frame: Frame) -> str:
    """The progress line in words, for standard error when the log goes to a file:
    ``progress: 12/59 finished (20%), 4 in flight, 2 awaiting health, failed 1/5, ...``."""
    totals = frame.totals
    selected = totals["selected"]
    share = 100.0 * frame.finished / selected if selected else 100.0
    parts = [f"{frame.finished}/{selected} finished ({share:.0f}%)"]
    parts += [f"{totals[key]} {label}" for key, label in _MOVING if totals[key]]
    parts.append(f"failed {frame.budget.cell(totals['failed'])}")
    if frame.rate is not None:
        parts.append(f"{frame.rate:.1f} nodes/min")
    if frame.eta is not None and frame.finished < selected:
        parts.append(f"ETA {span(frame.eta)}")
    if frame.stopping:
        parts.append(f"stopping ({frame.stopping})")
    return f"progress of run {frame.run_id}: " + ", ".join(parts)


def log_fields(frame: Frame) -> dict[str, Any]:
    """The ``progress`` log event's fields: one line, totals first; nothing unknown."""
    waves = sorted({f"{p.snap.wave}/{p.snap.waves}" for p in frame.pools if p.snap.waves})
    fields: dict[str, Any] = {
        "run": frame.run_id,
        "elapsed_s": round(frame.elapsed, 1),
        "finished": frame.finished,
        **{k: v for k, v in frame.totals.items() if v or k in ("selected", "failed")},
        "waves": ",".join(waves),
    }
    fields["failure_budget"] = frame.budget.limit
    if frame.budget.forgiven:
        fields["failures_forgiven"] = frame.budget.forgiven
    if frame.rate is not None:
        fields["rate_per_min"] = round(frame.rate, 1)
    if frame.eta is not None:
        fields["eta_s"] = round(frame.eta)
    if frame.stopping:
        fields["stopping"] = frame.stopping
    return fields
