"""The health gate: one list-nodes call per pool per poll interval, not one GET per node.

Each poll asks only for what can have changed, with ``$select=id,state,lastBootTime`` and::

    $filter=(state ne 'idle' and state ne 'running') or lastBootTime ge datetime'<T>'

where T is a minute before the earliest request still awaiting health: the answer holds
every node that is not ready (ours recovering, and others' broken ones, which refresh the
pool's unavailability baseline) plus every node that booted since. An accepted node that
is missing from the answer is read on its own (it may have left the pool).

A pool is also polled while ``max_unavailable`` blocks it with nothing of ours in progress,
so that nodes recovering by themselves free the budget (``blockwatch.py``: said aloud while it
waits; blocked for a whole health timeout, the pool stops resumable, its nodes pending).

Each poll also tells the pool's rollout which of its targets are down: one that failed after
the action holds its room while its node stays down (``failed_holds_availability``), and
stops holding it once a poll sees the node ready again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import anyio
import structlog

from fleet_reimage.batch.errors import AuthFailed, BatchError, NotFound
from fleet_reimage.batch.explain import describe
from fleet_reimage.batch.models import NodeInfo
from fleet_reimage.engine.blockwatch import BlockWatch
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.drain import DRAIN_SELECT, Drains
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import Phase, PoolRun, RunTarget
from fleet_reimage.engine.soak import SoakWatch
from fleet_reimage.journal.model import TargetChange, TargetState
from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.where import locate_in_plan
from fleet_reimage.rollout.outcomes import health_verdict

log = structlog.get_logger("fleet_reimage.health")

FILTER_MARGIN = 60.0  # seconds before the earliest awaiting request (clock skew)
HEALTH_SELECT = "id,state,lastBootTime"


def health_filter(ready_states: frozenset[str], since: float) -> str:
    """The OData filter for a health poll (see the module docstring)."""
    not_ready = " and ".join(f"state ne '{state}'" for state in sorted(ready_states))
    stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"({not_ready}) or lastBootTime ge datetime'{stamp}'"


class HealthMonitor:
    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        plan: Plan,
        *,
        on_baseline: Callable[[PoolRun, int, Sequence[str]], Awaitable[None]] | None = None,
        soak: SoakWatch | None = None,
        drains: Drains | None = None,
    ) -> None:
        """``on_baseline``: told each pool's baseline and its targets seen down after a poll,
        before any target is judged (a shared run shares them through the journal);
        ``soak``: polls also watch soaking pools (``soak.py``); ``drains``: a planned
        drain's; its polls also list the nodes running tasks, with their
        ``runningTasksCount`` and ``schedulingState`` (``drain.py``)."""
        self.ledger = ledger
        self.control = control
        self.plan = plan  # its health spec, and where an account is written (messages)
        self.spec = plan.rollout.health
        self.on_baseline = on_baseline
        self.soak = soak
        self.polls = 0  # list calls made, for the calls-per-node figure
        self.blocks = BlockWatch(ledger, self.spec.timeout)
        self.drains = drains
        self.select = HEALTH_SELECT if drains is None else DRAIN_SELECT
        # With a drain, running nodes are listed too: what runs tasks, and what drained.
        self.listed_states = self.spec.ready_states - ({"running"} if drains else set())

    def _wants_poll(self, pool: PoolRun, now: float) -> bool:
        blocked = self.blocks.wants_poll(pool, now)  # also sees a blocking end
        soaking = self.soak is not None and self.soak.soaking(pool)
        draining = self.drains is not None and self.drains.wants_poll(pool)
        return blocked or soaking or bool(pool.awaiting) or draining

    async def run(self) -> None:
        """Poll every pool that needs it, each at most once per interval, until cancelled."""
        interval = self.spec.poll_interval
        async with anyio.create_task_group() as group:
            while True:
                now = time.monotonic()
                next_due = math.inf
                for pool in self.ledger.pools:
                    if pool.polling or not self._wants_poll(pool, now):
                        continue
                    due = pool.last_poll + interval
                    if due <= now:
                        pool.polling = True
                        group.start_soon(self._poll, pool)
                    else:
                        next_due = min(next_due, due)
                await anyio.sleep(min(max(next_due - now, 0.01), interval, 0.25))

    async def _poll(self, pool: PoolRun) -> None:
        polled_at = time.monotonic()
        try:
            nodes = await self._list(pool)
        except AuthFailed as error:
            client = pool.account.client
            where = locate_in_plan(error, self.plan, pool.account.name, client.endpoint)
            self.control.request_stop("auth", f"authentication failed: {describe(where)}")
            return
        except BatchError as error:
            log.warning("health poll failed", pool=pool.pool_id, error=str(error))
            return
        finally:
            pool.last_poll = time.monotonic()
            pool.polling = False
        await self._refresh_baseline(pool, nodes)
        await self._judge(pool, nodes)
        if self.soak is not None:
            await self.soak.judge(pool, nodes, polled_at)
        if self.drains is not None:
            self.drains.after_poll(pool, nodes)
        self.control.wake()

    async def _list(self, pool: PoolRun) -> dict[str, NodeInfo]:
        awaiting = pool.awaiting.values()
        earliest = min(
            (t.record.last_sent_at or time.time() for t in awaiting), default=time.time()
        )
        soaking_since = None if self.soak is None else self.soak.since(pool)
        if soaking_since is not None:  # a soaking node that booted again must be in the answer
            earliest = min(earliest, soaking_since)
        since = earliest - FILTER_MARGIN
        query = health_filter(self.listed_states, since) if self.listed_states else None
        nodes: dict[str, NodeInfo] = {}
        self.polls += 1
        async for page in pool.account.client.list_node_pages(
            pool.pool_id, filter=query, select=self.select
        ):
            self.polls += 1 if page.next_link else 0
            for item in page.items:
                node = NodeInfo.from_json(item)
                nodes[node.id] = node
        return nodes

    async def _refresh_baseline(self, pool: PoolRun, nodes: dict[str, NodeInfo]) -> None:
        ready = self.spec.ready_states
        down = {node.id for node in nodes.values() if node.state not in ready}
        baseline, down_targets = self.ledger.unavailability(pool, down)
        pool.rollout.set_baseline(baseline, [t.id for t in down_targets])
        if self.on_baseline is not None:  # before any judgement, so no claim sees a gap
            await self.on_baseline(pool, baseline, [t.record.node_id for t in down_targets])

    async def _judge(self, pool: PoolRun, nodes: dict[str, NodeInfo]) -> None:
        now = time.monotonic()
        settled: list[tuple[RunTarget, TargetState, str]] = []
        back: list[tuple[RunTarget, NodeInfo]] = []  # out of the action, for the drains
        for target in list(pool.awaiting.values()):
            node = nodes.get(target.record.node_id)
            if node is None:
                readable, node = await self._read_one(pool, target)
                if not readable:
                    continue
            verdict = health_verdict(
                node, sent_at=target.record.last_sent_at or 0.0, ready_states=self.spec.ready_states
            )
            if verdict.state is TargetState.HEALTHY and node is not None:
                target.healthy_boot = node.last_boot_time  # a soak tells a new boot by it
            if verdict.state is not None:
                settled.append((target, verdict.state, verdict.reason))
                if node is not None:
                    back.append((target, node))
            elif now - target.health_since > self.spec.timeout:
                settled.append(
                    (
                        target,
                        TargetState.FAILED,
                        f"not back within {self.spec.timeout:g}s (state {verdict.reason})",
                    )
                )
        if not settled:
            return
        if self.drains is not None:  # enabled again before the node counts as done
            await self.drains.enable_settled(pool, back)
        async with anyio.create_task_group() as group:
            for target, state, reason in settled:
                group.start_soon(
                    self.ledger.journal.target_changed,
                    TargetChange(self.ledger.run_id, target.id, state, time.time(), reason),
                )
        for target, state, reason in settled:
            if target.phase is Phase.HEALTH:
                self.ledger.settle(target, state, reason)

    async def _read_one(self, pool: PoolRun, target: RunTarget) -> tuple[bool, NodeInfo | None]:
        """A node missing from the poll: (readable, node), node None when it left the pool."""
        self.polls += 1
        try:
            return True, await pool.account.client.get_node(
                pool.pool_id, target.record.node_id, select=self.select
            )
        except NotFound:
            return True, None
        except BatchError:
            return False, None
