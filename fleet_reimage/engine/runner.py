"""Starting and resuming runs: from a resolved plan, or a journal, to a running executor.

A new run writes the run, every target (with its wave) and every exclusion to the journal
before the first request. A resumed run reloads the targets, lists each unfinished pool once
to reconcile what was in flight when the run died, and continues the ladder where it stopped.
Both end in the same place: ``_execute`` builds the policies and runs the executor.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import anyio

from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.errors import BatchError, NotFound
from fleet_reimage.batch.models import NODE_SELECT, NodeInfo
from fleet_reimage.engine.drainresume import settle_left_drains
from fleet_reimage.engine.events import RunObserver
from fleet_reimage.engine.executor import Executor, RunResult, RunSettings, Sharing
from fleet_reimage.engine.ledger import failed_after_action
from fleet_reimage.engine.resumeopts import (
    ResumeOptions,
    plan_with_overrides,
    pool_limits,
    take_up,
)
from fleet_reimage.engine.runstate import AccountRun, JobKind, Phase, PoolKey, PoolRun, RunTarget
from fleet_reimage.engine.sharedrun import SharedSettings
from fleet_reimage.journal.model import (
    Exclusion,
    Journal,
    NewRun,
    NewTarget,
    RunRecord,
    TargetChange,
    TargetRecord,
    TargetState,
)
from fleet_reimage.journal.shared import SharedRuns
from fleet_reimage.plan.gates import GateWhen
from fleet_reimage.plan.model import Action, Plan
from fleet_reimage.plan.resolve import Resolution
from fleet_reimage.plan.where import locate_in_plan
from fleet_reimage.rollout.budget import FailureBudget
from fleet_reimage.rollout.claimed import ClaimedPoolRollout
from fleet_reimage.rollout.nextwave import NextWaveRules, NextWaveWaits
from fleet_reimage.rollout.outcomes import Accepted, Settle, after_reconcile
from fleet_reimage.rollout.policy import RolloutRules
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.rollout.replace import policy_room, surge_nodes
from fleet_reimage.rollout.throttle import AdaptiveThrottle


def new_run_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"r{stamp}-{secrets.token_hex(3)}"


def owner_label(run_id: str | None, doing: str = "starting a new run") -> str:
    """Who holds a journal, for a contender's message: "HOST pid N, run RUN_ID"."""
    what = f"run {run_id}" if run_id else doing
    return f"{socket.gethostname()} pid {os.getpid()}, {what}"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_unavailable: int
    baseline_unavailable: int
    down: frozenset[str] | None = None  # node ids of the pool's targets not ready (a resume's)


async def create_run(
    plan: Plan,
    resolution: Resolution,
    journal: Journal,
    *,
    options: Mapping[str, Any],
    run_id: str | None = None,
    unless_unfinished: bool = False,
) -> tuple[RunRecord, list[TargetRecord]]:
    """Write a new run, its targets and exclusions; nothing has been sent yet.

    ``unless_unfinished``: refuse (``UnfinishedRun``, nothing written) if the plan has an
    unfinished run, in the same atomic step as the write.
    Returns the run and its targets as recorded (hand them to ``execute``)."""
    run_id = run_id or new_run_id()
    now = time.time()
    targets: list[NewTarget] = []
    exclusions: list[Exclusion] = []
    for pool in resolution.pools:
        for position, (node, wave) in enumerate(zip(pool.selected, pool.wave_of, strict=True)):
            targets.append(NewTarget(pool.account, pool.pool_id, node.id, wave, position))
        exclusions.extend(
            Exclusion(pool.account, pool.pool_id, node_id, reason)
            for node_id, reason in pool.excluded
        )
        if pool.skipped_reason:
            exclusions.append(Exclusion(pool.account, pool.pool_id, None, pool.skipped_reason))
    limits = {
        f"{p.account}/{p.pool_id}": [p.max_unavailable, p.baseline_unavailable]
        for p in resolution.pools
        if p.selected
    }
    run = NewRun(
        run_id=run_id,
        name=plan.name,
        action=plan.action.value,
        plan_path=str(plan.source.path),
        plan_text=plan.source.text,
        plan_sha256=plan.source.sha256,
        options={**options, "pool_limits": limits},
        created_at=now,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    guard = plan.source.sha256 if unless_unfinished else None
    records = await journal.create_run(run, targets, exclusions, unless_unfinished_of=guard)
    record = await journal.get_run(run_id)
    assert record is not None
    return record, records


def _limits_from_options(
    run: RunRecord, changed: Mapping[str, list[int]] | None
) -> dict[str, PoolLimits]:
    """Each pool's limits as the run recorded them (``changed``: a resume's new ones)."""
    raw = {**run.options.get("pool_limits", {}), **(changed or {})}
    return {key: PoolLimits(int(value[0]), int(value[1])) for key, value in raw.items()}


async def execute(
    run: RunRecord,
    plan: Plan,
    journal: Journal,
    clients: Mapping[str, BatchClient],
    *,
    settings: RunSettings,
    observer: RunObserver,
    resume: ResumeOptions | None = None,
    resuming: bool = False,
    executor_ready: Any = None,
    shared: SharedSettings | None = None,
    records: list[TargetRecord] | None = None,
) -> RunResult:
    """Run (or resume, or join) ``run`` to its end or a stop; returns the result.

    ``resume``: what a resume changes (overrides, a changed plan: ``resumeopts.py``);
    ``records``: the run's targets as ``create_run`` just recorded them (read from the
    journal when not given).
    """
    if records is None:
        records = await journal.targets(run.run_id)
    resume = resume or ResumeOptions()
    changed = pool_limits(run.options, records, plan, resume)
    limits = _limits_from_options(run, changed)
    drained_before: list[int] = []
    if resuming and shared is None and plan.action is not Action.REPLACE:  # replace: its own
        drained_before = await settle_left_drains(run, journal, clients, records)
        limits = await _reconcile_on_resume(run, plan, journal, clients, records, limits)
    if resuming or shared is not None:
        run = await take_up(run, journal, records, resume, resuming=resuming, limits=changed)
    if resuming and shared is not None:  # resuming is the operator's go-ahead past a checkpoint
        await cast(SharedRuns, journal).resume_pools(run.run_id)
    plan = plan_with_overrides(plan, run.options)
    # A replace run's runners take turns per pool (engine/replace.py), not claims per node.
    claims = None if plan.action is Action.REPLACE else shared
    executor = build_executor(run, plan, journal, clients, records, limits, settings, observer,
                              shared=claims, drained_before=drained_before)  # fmt: skip
    if executor_ready is not None:
        executor_ready(executor)
    return await executor.run()


def build_executor(
    run: RunRecord,
    plan: Plan,
    journal: Journal,
    clients: Mapping[str, BatchClient],
    records: Sequence[TargetRecord],
    limits: Mapping[str, PoolLimits],
    settings: RunSettings,
    observer: RunObserver,
    *,
    shared: SharedSettings | None = None,
    drained_before: Sequence[int] = (),
) -> Executor:
    """The executor's in-memory state from the journal's targets (new or resumed alike)."""
    accounts: dict[str, AccountRun] = {}
    for account in plan.accounts:
        accounts[account.name] = AccountRun(
            account.name,
            clients[account.name],
            AdaptiveThrottle(plan.execution.per_account_concurrency),
        )
    budget = _failure_budget(run, plan, records)
    by_pool: dict[PoolKey, list[TargetRecord]] = defaultdict(list)
    for record in records:
        by_pool[(record.account, record.pool)].append(record)
    pools: list[PoolRun] = []
    targets: list[RunTarget] = []
    make_pool = _pool_run if shared is None else _claimed_pool_run
    for (account_name, pool_id), pool_records in by_pool.items():
        limit = limits.get(f"{account_name}/{pool_id}")
        rules = _rules(plan, pool_records, limit, budget)
        known = limit or PoolLimits(rules.max_unavailable, 0)
        pool, pool_targets = make_pool(
            plan, accounts[account_name], pool_id, pool_records, rules, known, budget
        )
        pools.append(pool)
        targets.extend(pool_targets)
    sharing = None if shared is None else Sharing(cast(SharedRuns, journal), shared)
    return Executor(run_id=run.run_id, plan=plan, journal=journal,
                    accounts=list(accounts.values()), pools=pools, targets=targets,
                    budget=budget, settings=settings, observer=observer,
                    sharing=sharing, drained_before=drained_before)  # fmt: skip


def _failure_budget(run: RunRecord, plan: Plan, records: Sequence[TargetRecord]) -> FailureBudget:
    """The run's budget: the plan's, or a resume's override; less the failures forgiven
    (both kept in the run's options). In a shared run every runner's claims tell it the
    whole run's failures."""
    override = run.options.get("failure_budget")
    limit = int(override) if override is not None else plan.rollout.failure_budget.of(len(records))
    failed = sum(1 for r in records if r.state is TargetState.FAILED)
    forgiven = int(run.options.get("forgiven_failures", 0))
    return FailureBudget(limit=limit, failures=failed, forgiven=forgiven)


def _rules(
    plan: Plan, records: Sequence[TargetRecord], limit: PoolLimits | None, budget: FailureBudget
) -> RolloutRules:
    """The pool's rules: its max_unavailable as resolved when the run was created (or from
    the plan, if missing), the plan's pause and checkpoint, the run's failure budget."""
    if limit is not None:
        max_unavailable = limit.max_unavailable
    else:
        max_unavailable = max(1, plan.rollout.max_unavailable.of(len(records)))
    if plan.action is Action.REPLACE:  # old nodes being replaced stay ready with surge
        max_unavailable = policy_room(
            max_unavailable, surge_nodes(plan.rollout.surge, len(records))
        )
    checkpoint = plan.rollout.confirm_after_wave
    return RolloutRules(
        max_unavailable,
        plan.rollout.pause_between_waves,
        None if checkpoint is None else checkpoint - 1,
        budget.rule,
        plan.rollout.failed_holds_availability,
    )


def next_wave_waits(plan: Plan) -> NextWaveWaits | None:
    """A pool's soak and gate state, when the plan soaks or has gates before waves."""
    gated = any(g.when is GateWhen.BEFORE_WAVE for g in plan.rollout.gates)
    if not gated and plan.rollout.soak <= 0:
        return None
    return NextWaveWaits(NextWaveRules(plan.rollout.soak, gated))


def _claimed_pool_run(
    plan: Plan,
    account: AccountRun,
    pool_id: str,
    records: list[TargetRecord],
    rules: RolloutRules,
    limit: PoolLimits,
    budget: FailureBudget,
) -> tuple[PoolRun, list[RunTarget]]:
    """A pool of a shared run: nothing is ours until the journal's claims say so."""
    rollout = ClaimedPoolRollout(
        len(plan.rollout.waves),
        rules,
        baseline=limit.baseline_unavailable,
        waits=next_wave_waits(plan),
    )
    pool = PoolRun(account, pool_id, rollout, selected=len(records))
    targets = []
    for record in sorted(records, key=lambda r: r.position):
        target = RunTarget(record, pool)
        pool.states[record.state] += 1
        target.phase = Phase.DONE if record.state.terminal else Phase.QUEUED
        targets.append(target)
    return pool, targets


def _pool_run(
    plan: Plan,
    account: AccountRun,
    pool_id: str,
    records: list[TargetRecord],
    rules: RolloutRules,
    limit: PoolLimits,
    budget: FailureBudget,
) -> tuple[PoolRun, list[RunTarget]]:
    records.sort(key=lambda r: r.position)
    steps = len(plan.rollout.waves)
    waves: list[list[int]] = [[] for _ in range(max(steps, 1 + max(r.wave for r in records)))]
    for record in records:
        waves[record.wave].append(record.target_id)
    settled = [r.target_id for r in records if r.state.terminal]
    active = [
        r.target_id for r in records if r.state in (TargetState.IN_FLIGHT, TargetState.ACCEPTED)
    ]
    down = limit.down
    rollout = PoolRollout(
        waves,
        max_unavailable=rules.max_unavailable,
        baseline_unavailable=limit.baseline_unavailable,
        pause_between_waves=rules.pause,
        checkpoint_after_wave=rules.checkpoint_after_wave,
        settled=settled,
        active=active,
        budget=budget,
        failed_holds_availability=rules.failed_holds_availability,
        failed_after_action=[r.target_id for r in records if failed_after_action(r)],
        down=None if down is None else [r.target_id for r in records if r.node_id in down],
        waits=next_wave_waits(plan),
    )
    pool = PoolRun(account, pool_id, rollout, selected=len(records))
    now = time.monotonic()
    targets = []
    for record in records:
        target = RunTarget(record, pool)
        pool.states[record.state] += 1
        if record.state.terminal:
            target.phase = Phase.DONE
        elif record.state is TargetState.ACCEPTED:
            target.phase, target.health_since = Phase.HEALTH, now
            pool.awaiting[target.id] = target
        elif record.state is TargetState.IN_FLIGHT:
            target.phase, target.maybe_applied = Phase.RECONCILE, True
            pool.schedule(now, record.target_id, record.target_id, JobKind.RECONCILE)
        targets.append(target)
    return pool, targets


async def _reconcile_on_resume(
    run: RunRecord,
    plan: Plan,
    journal: Journal,
    clients: Mapping[str, BatchClient],
    records: list[TargetRecord],
    limits: dict[str, PoolLimits],
) -> dict[str, PoolLimits]:
    """List each unfinished pool once: settle what was in flight, refresh the baselines."""
    unfinished: dict[PoolKey, list[TargetRecord]] = defaultdict(list)
    every: dict[PoolKey, list[TargetRecord]] = defaultdict(list)
    for record in records:
        every[(record.account, record.pool)].append(record)
        if not record.state.terminal:
            unfinished[(record.account, record.pool)].append(record)
    listings: dict[PoolKey, dict[str, NodeInfo] | None] = {}

    async def list_pool(key: PoolKey) -> None:
        client = clients[key[0]]
        try:
            listings[key] = {n.id: n async for n in client.list_nodes(key[1], select=NODE_SELECT)}
        except NotFound:
            listings[key] = None
        except BatchError as error:  # say which account, at which endpoint
            raise locate_in_plan(error, plan, key[0], client.endpoint) from None

    async with anyio.create_task_group() as group:
        for key in unfinished:
            group.start_soon(list_pool, key)
    fresh = dict(limits)
    for key, pool_records in unfinished.items():
        nodes = listings[key]
        label = f"{key[0]}/{key[1]}"
        if nodes is not None and label in limits:
            fresh[label] = _limits_now(limits[label], every[key], nodes, plan)
        await _settle_in_doubt(run, plan, journal, pool_records, nodes)
    return fresh


def _limits_now(
    limit: PoolLimits, records: Sequence[TargetRecord], nodes: Mapping[str, NodeInfo], plan: Plan
) -> PoolLimits:
    """The pool's unavailability as its listing shows it now: nodes down for reasons of their
    own (not a target in progress, nor one that failed after the action), and which of its
    targets are down (a failed one among them holds its room, under the plan's rule)."""
    ready = plan.rollout.health.ready_states
    down = {node.id for node in nodes.values() if node.state not in ready}
    ours = {
        r.node_id
        for r in records
        if (not r.state.terminal and r.state is not TargetState.PENDING) or failed_after_action(r)
    }
    targets = {r.node_id for r in records}
    return PoolLimits(limit.max_unavailable, len(down - ours), frozenset(down & targets))


async def _settle_in_doubt(
    run: RunRecord,
    plan: Plan,
    journal: Journal,
    records: list[TargetRecord],
    nodes: dict[str, NodeInfo] | None,
) -> None:
    """Targets left in flight by the dead run: applied (accepted), gone, or not applied."""
    now = time.time()
    server_timeout = min(30.0, plan.execution.request_timeout)
    changes: list[TargetChange] = []
    for record in records:
        if record.state is not TargetState.IN_FLIGHT or record.last_sent_at is None:
            continue
        node = None if nodes is None else nodes.get(record.node_id)
        step = after_reconcile(
            node, sent_at=record.last_sent_at, now=now, server_timeout=server_timeout
        )
        if isinstance(step, Accepted):
            state = (
                TargetState.ACCEPTED if plan.rollout.health.wait else TargetState.DONE_UNVERIFIED
            )
        elif isinstance(step, Settle):
            state = step.state
        else:
            continue  # not applied, or maybe still: the executor reads it again first
        record.state = state
        record.reason = step.reason
        if state is TargetState.ACCEPTED:
            record.accepted_at = now
        changes.append(TargetChange(run.run_id, record.target_id, state, now, step.reason))
    async with anyio.create_task_group() as group:
        for change in changes:
            group.start_soon(journal.target_changed, change)
