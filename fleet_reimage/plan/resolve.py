"""Resolving a plan against the service: which nodes, in which order, in which waves.

Reads only (``plan`` never sends a mutating request). Accounts are listed concurrently, and
so are the pools of an account (a few at a time); node lists use ``$select`` so a
10,000-node pool costs ten pages of small payloads.

Per pool, the targets are ordered deterministically: idle nodes first (no running work is
lost first), then running nodes with the fewest running tasks, then the rest, each group by
node id. The ordered list is cut into waves by the cumulative ladder (``waves.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import anyio

from fleet_reimage.errors import InputError, Problem

from ..batch.client import BatchClient
from ..batch.errors import BatchError
from ..batch.models import NODE_SELECT, POOL_SELECT, READY_STATES, NodeInfo
from .booted import booted_lately, booted_within_reason, recent_boot_warning
from .model import AccountSpec, Plan, PoolSelector
from .narrow import NOT_IN_FILE, Narrowing, unmatched_pools, unselected_nodes
from .waves import cumulative_targets
from .where import locate_in

POOLS_LISTED_AT_ONCE = 8  # per account
_STATE_ORDER = {"idle": 0, "running": 1}


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class SelectedNode(NamedTuple):
    id: str
    state: str
    last_boot_time: float | None
    running_tasks: int


@dataclass(slots=True)
class PoolResolution:
    account: str
    pool_id: str
    configuration: str | None
    selected: list[SelectedNode]  # in dispatch order
    wave_of: list[int]  # ladder step (0-based) of each selected node, same order
    wave_sizes: list[int]  # per ladder step (empty steps are 0)
    excluded: list[tuple[str, str]]  # (node id, reason)
    node_count: int
    baseline_unavailable: int  # nodes of the pool not ready now (idle/running)
    max_unavailable: int
    warnings: list[str] = field(default_factory=list)
    skipped_reason: str | None = None  # the whole pool is not rolled (and why)
    booted_lately: int = 0  # selected nodes that booted within the last hour (booted.py)

    @property
    def key(self) -> tuple[str, str]:
        return (self.account, self.pool_id)


@dataclass(slots=True)
class Resolution:
    plan: Plan
    pools: list[PoolResolution]
    warnings: list[Problem]
    resolved_at: float
    narrowing: Narrowing | None = None  # --pool / --nodes-from, when given

    @property
    def total_selected(self) -> int:
        return sum(len(p.selected) for p in self.pools)

    def failure_budget(self) -> int:
        return self.plan.rollout.failure_budget.of(self.total_selected)


def order_key(node: NodeInfo | SelectedNode) -> tuple[int, int, str]:
    return (_STATE_ORDER.get(node.state, 2), node.running_tasks, node.id)


def select_nodes(
    pool_id: str,
    nodes: list[NodeInfo],
    selector: PoolSelector,
    plan: Plan,
    account: str,
    configuration: str | None,
    narrowing: Narrowing | None = None,
    now: float | None = None,
) -> PoolResolution:
    """Apply a pool selector to a listing (pure): targets in order, exclusions, waves.

    ``narrowing`` (``--nodes-from``) only ever leaves out nodes the selector selects;
    ``now``: what "booted within" is measured from (default: the time of the call)."""
    now = time.time() if now is None else now
    within = selector.nodes.skip_booted_within
    selected: list[SelectedNode] = []
    excluded: list[tuple[str, str]] = []
    baseline = 0
    by_boot_time = selector.nodes.booted_before is not None
    for node in nodes:
        if node.state not in READY_STATES:
            baseline += 1
        boot = (
            datetime.fromtimestamp(node.last_boot_time, UTC)
            if by_boot_time and node.last_boot_time is not None
            else None
        )
        reason = selector.nodes.skip_reason(node.id, node.state, boot)
        if reason is None:
            reason = booted_within_reason(node.last_boot_time, within, now)
        if reason is None and narrowing is not None:
            reason = narrowing.node_reason(node.id)
        if reason is None:
            selected.append(
                SelectedNode(node.id, node.state, node.last_boot_time, node.running_tasks)
            )
        else:
            excluded.append((node.id, reason))
    selected.sort(key=order_key)
    excluded.sort()
    cumulative = cumulative_targets(plan.rollout.waves, len(selected))
    wave_of: list[int] = []
    sizes: list[int] = []
    done = 0
    for step, target in enumerate(cumulative):
        sizes.append(target - done)
        wave_of.extend([step] * (target - done))
        done = target
    resolution = PoolResolution(
        account=account,
        pool_id=pool_id,
        configuration=configuration,
        selected=selected,
        wave_of=wave_of,
        wave_sizes=sizes,
        excluded=excluded,
        node_count=len(nodes),
        baseline_unavailable=baseline,
        max_unavailable=max(1, plan.rollout.max_unavailable.of(len(selected))),
        booted_lately=booted_lately((n.last_boot_time for n in selected), now),
    )
    if not selected and nodes:
        resolution.warnings.append("no node of this pool is selected")
    return resolution


async def _resolve_pool(
    client: BatchClient,
    account: AccountSpec,
    pool_id: str,
    configuration: str | None,
    pool_state: str,
    plan: Plan,
    out: list[PoolResolution],
    narrowing: Narrowing | None,
    now: float,
) -> None:
    selector = account.selector_for(pool_id)
    assert selector is not None
    if pool_state == "deleting":
        out.append(
            PoolResolution(
                account.name,
                pool_id,
                configuration,
                [],
                [],
                [],
                [],
                0,
                0,
                0,
                skipped_reason="the pool is being deleted",
            )
        )
        return
    nodes = [node async for node in client.list_nodes(pool_id, select=NODE_SELECT)]
    out.append(
        select_nodes(pool_id, nodes, selector, plan, account.name, configuration, narrowing, now)
    )


@contextmanager
def _located(account: AccountSpec, client: BatchClient) -> Iterator[None]:
    """A service error inside says which account it came from, at which endpoint."""
    try:
        yield
    except BatchError as error:
        raise locate_in(error, account, client.endpoint) from None


async def _resolve_account(
    client: BatchClient,
    account: AccountSpec,
    plan: Plan,
    out: list[PoolResolution],
    warnings: list[Problem],
    narrowing: Narrowing | None,
    planned: list[tuple[str, str]],
    now: float,
) -> None:
    with _located(account, client):
        pools = [pool async for pool in client.list_pools(select=POOL_SELECT)]
    matched = [pool for pool in pools if account.selector_for(pool.id) is not None]
    planned.extend((account.name, pool.id) for pool in matched)
    if narrowing is not None:
        matched = [pool for pool in matched if narrowing.keeps_pool(account.name, pool.id)]
    for selector in account.pools:
        if not any(selector.matches(pool.id) for pool in pools):
            warnings.append(
                Problem(
                    str(plan.source.path),
                    selector.line,
                    None,
                    f"accounts.{account.name}.pools",
                    f"pattern {selector.match!r} matched no pool (the account has {len(pools)})",
                    "warning",
                )
            )
    limiter = anyio.CapacityLimiter(POOLS_LISTED_AT_ONCE)

    async def one(pool_id: str, configuration: str | None, state: str) -> None:
        async with limiter:
            with _located(account, client):
                await _resolve_pool(
                    client, account, pool_id, configuration, state, plan, out, narrowing, now
                )

    async with anyio.create_task_group() as group:
        for pool in matched:
            group.start_soon(one, pool.id, pool.configuration, pool.state)


async def resolve(
    plan: Plan,
    clients: Mapping[str, BatchClient],
    *,
    now: float | None = None,
    narrowing: Narrowing | None = None,
) -> Resolution:
    """List what the plan selects, in every account at once; read-only.

    ``narrowing`` (``--pool``, ``--nodes-from``) keeps part of that selection, never more.
    """
    now = time.time() if now is None else now
    pools: list[PoolResolution] = []
    warnings: list[Problem] = list(plan.warnings)
    planned: list[tuple[str, str]] = []
    narrowing = narrowing or None  # an empty narrowing is none
    if narrowing is not None and (wrong := narrowing.check_accounts(plan)):
        raise InputError(wrong)
    async with anyio.create_task_group() as group:
        for account in plan.accounts:
            group.start_soon(
                _resolve_account,
                clients[account.name],
                account,
                plan,
                pools,
                warnings,
                narrowing,
                planned,
                now,
            )
    order = {account.name: index for index, account in enumerate(plan.accounts)}
    pools.sort(key=lambda p: (order[p.account], p.pool_id))
    if narrowing is not None:
        warnings += narrowing_warnings(narrowing, pools, planned)
    lately = {f"{p.account}/{p.pool_id}": p.booted_lately for p in pools}
    recent = recent_boot_warning(lately, str(plan.source.path))
    if recent is not None:
        warnings.append(recent)
    return Resolution(plan, pools, warnings, now, narrowing)


def narrowing_warnings(
    narrowing: Narrowing, pools: list[PoolResolution], planned: list[tuple[str, str]]
) -> list[Problem]:
    """What the command line asked for that the plan does not select (never added)."""
    problems = unmatched_pools(narrowing, planned)
    if narrowing.nodes is not None:
        selected = (node.id for pool in pools for node in pool.selected)
        excluded = {
            node_id: reason
            for pool in pools
            for node_id, reason in pool.excluded
            if not reason.startswith(NOT_IN_FILE)
        }
        problems += unselected_nodes(
            narrowing.nodes, selected, excluded, pools_left_out=bool(narrowing.pools)
        )
    return problems
