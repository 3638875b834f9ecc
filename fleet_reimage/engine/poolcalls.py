"""Journaled pool calls of ``action: replace``: removenodes and resize, one at a time per pool.

Every call is a row of the pool-operations journal (``journal/poolops.py``) written with its
client-request-id *before* it is sent, and given its outcome after. The pool's allocation
state is respected: a call waits for ``steady``, and a 409 because the pool is resizing is
waited out, not failed. An answer in doubt (timeout, connection lost) is reconciled by
reading the pool: did the nodes leave (removenodes)? did the target change (resize)? Only a
call known not to have taken effect is sent again, under a new client-request-id.

Anything else the service refuses stops the pool (``PoolCallFailed``, the service's words).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog

from fleet_reimage.batch.client import new_client_request_id
from fleet_reimage.batch.errors import (
    BatchError,
    BatchHTTPError,
    NotFound,
    PoolStateConflict,
    RequestInDoubt,
)
from fleet_reimage.batch.models import REPLACE_NODE_SELECT, REPLACE_POOL_SELECT, NodeInfo, PoolInfo
from fleet_reimage.batch.retry import backoff_delay, is_retryable
from fleet_reimage.engine.runstate import PoolRun
from fleet_reimage.journal import poolops
from fleet_reimage.journal.model import Journal
from fleet_reimage.journal.poolops import PoolOpEnd, PoolOpStart
from fleet_reimage.plan.model import Plan

log = structlog.get_logger("fleet_reimage.replace")

TRIES = 8  # sends of one call (transient errors, calls not applied) before the pool stops
Targets = tuple[int, int]  # (dedicated, low-priority)


class PoolCallFailed(Exception):
    """The pool cannot go on: the message says why, in the service's words where it spoke."""


class PoolCalls:
    """One pool's journaled calls (see the module docstring)."""

    def __init__(self, journal: Journal, run_id: str, pool: PoolRun, plan: Plan) -> None:
        self.journal = journal
        self.run_id = run_id
        self.pool = pool
        self.client = pool.account.client
        self.option = plan.option.value
        self.poll = min(plan.rollout.health.poll_interval, 5.0)
        self.retry = plan.execution.retry
        self.request_timeout = plan.execution.request_timeout
        self.calls = 0  # requests sent (reads included), for the report and the bench

    # --- reads ---

    async def info(self) -> PoolInfo:
        self.calls += 1
        return await self.client.get_pool(self.pool.pool_id, select=REPLACE_POOL_SELECT)

    async def nodes(self) -> dict[str, NodeInfo]:
        self.calls += 1
        listing = self.client.list_nodes(self.pool.pool_id, select=REPLACE_NODE_SELECT)
        return {node.id: node async for node in listing}

    async def steady(self) -> PoolInfo:
        """The pool, once its allocation state is ``steady`` (one change at a time)."""
        while True:
            info = await self._read_retrying()
            if info.allocation_state == "steady":
                return info
            await anyio.sleep(self.poll)

    async def _read_retrying(self) -> PoolInfo:
        for attempt in range(1, TRIES + 1):
            try:
                return await self.info()
            except BatchError as error:
                if not is_retryable(error) and not isinstance(error, RequestInDoubt):
                    raise PoolCallFailed(f"reading the pool failed: {error}") from error
                await anyio.sleep(self._backoff(attempt))
        raise PoolCallFailed("reading the pool kept failing")

    # --- the journal ---

    async def record_start(self, targets: Targets, node_ids: list[str]) -> None:
        """The pool's T and its nodes before anything changed (once per pool and run)."""
        cid = await self._started(poolops.START, node_ids, targets)
        await self._finished(cid, poolops.RECORDED)

    async def _started(self, operation: str, node_ids: list[str], targets: Targets) -> str:
        cid = new_client_request_id()
        await self.journal.pool_op_started(PoolOpStart(
            self.run_id, self.pool.account.name, self.pool.pool_id, operation, cid,
            tuple(node_ids), targets[0], targets[1], time.time()))  # fmt: skip
        return cid

    async def _finished(self, cid: str, outcome: str, error: BatchError | None = None) -> None:
        code = error.code if isinstance(error, BatchHTTPError) else None
        message = None if error is None else str(error)
        await self.journal.pool_op_finished(
            PoolOpEnd(self.run_id, cid, time.time(), outcome, code, message)
        )

    # --- removenodes ---

    async def remove(self, node_ids: list[str], after: Targets) -> None:
        """Remove ``node_ids`` (≤ 100) exactly once; returns once the service took the call
        (the nodes then leave; ``steady`` waits for them). ``after``: the targets expected."""
        for attempt in range(1, TRIES + 1):
            await self.steady()
            cid, outcome = await self._send(
                poolops.REMOVE, node_ids, after, attempt, "removing nodes",
                lambda request_id: self.client.remove_nodes(
                    self.pool.pool_id, node_ids, option=self.option, client_request_id=request_id,
                    timeout=self.request_timeout,
                ),
            )  # fmt: skip
            if outcome == poolops.ACCEPTED:
                return
            if outcome == poolops.IN_DOUBT and await self.removal_applied(cid, node_ids, after):
                return
        raise PoolCallFailed(f"removing {len(node_ids)} nodes did not succeed in {TRIES} tries")

    async def removal_applied(self, cid: str, node_ids: list[str], after: Targets) -> bool:
        """An in-doubt removal: did the nodes leave (or start leaving)? A node waiting for its
        tasks (``taskcompletion``) may not show it yet, but the pool's targets already
        dropped to ``after`` (this run alone changes them). Recorded either way."""
        nodes = await self.nodes()
        info = await self.steady()
        applied = all(
            node_id not in nodes or nodes[node_id].state == "leavingpool" for node_id in node_ids
        ) or (
            not info.enable_auto_scale
            and (info.target_dedicated, info.target_low_priority) == after
        )
        await self._finished(cid, poolops.APPLIED if applied else poolops.NOT_APPLIED)
        log.info("removal in doubt reconciled", pool=self.pool.pool_id, applied=applied,
                 client_request_id=cid)  # fmt: skip
        return applied

    # --- resize ---

    async def resize(self, targets: Targets) -> None:
        """Resize to ``targets``; returns once the service took the call."""
        doubtful: str | None = None  # a call of ours whose answer was lost
        for attempt in range(1, TRIES + 1):
            info = await self.steady()
            there = (info.target_dedicated, info.target_low_priority) == targets
            if doubtful is not None:  # the pool's targets tell whether it took effect
                await self._finished(doubtful, poolops.APPLIED if there else poolops.NOT_APPLIED)
                doubtful = None
            if there:
                return  # already there (an earlier call in doubt took effect)
            cid, outcome = await self._send(
                poolops.RESIZE, [], targets, attempt, "resizing the pool",
                lambda request_id: self.client.resize_pool(
                    self.pool.pool_id, target_dedicated=targets[0],
                    target_low_priority=targets[1], client_request_id=request_id,
                    timeout=self.request_timeout,
                ),
            )  # fmt: skip
            if outcome == poolops.ACCEPTED:
                return
            if outcome == poolops.IN_DOUBT:
                doubtful = cid
        raise PoolCallFailed(f"resizing the pool did not succeed in {TRIES} tries")

    async def _send(
        self,
        operation: str,
        node_ids: list[str],
        targets: Targets,
        attempt: int,
        doing: str,
        call: Callable[[str], Awaitable[object]],
    ) -> tuple[str, str]:
        """One call, journaled before it is sent (``call`` gets its client-request-id) and
        given its outcome after: (its id, accepted | in_doubt | rejected)."""
        cid = await self._started(operation, node_ids, targets)
        self.calls += 1
        try:
            await call(cid)
        except RequestInDoubt as error:
            await self._finished(cid, poolops.IN_DOUBT, error)
            return cid, poolops.IN_DOUBT
        except BatchError as error:
            await self._refused(cid, error, attempt, doing)
            return cid, poolops.REJECTED
        await self._finished(cid, poolops.ACCEPTED)
        return cid, poolops.ACCEPTED

    async def _refused(self, cid: str, error: BatchError, attempt: int, doing: str) -> None:
        """A call that did not take effect: wait and send again, or stop the pool."""
        await self._finished(cid, poolops.REJECTED, error)
        if isinstance(error, PoolStateConflict):
            return  # the pool is resizing: the next try waits for steady
        if is_retryable(error):
            await anyio.sleep(self._backoff(attempt))
            return
        if isinstance(error, NotFound) and error.code == "PoolNotFound":
            raise PoolCallFailed("the pool was deleted") from error
        raise PoolCallFailed(f"{doing} failed: {error}") from error

    def _backoff(self, attempt: int) -> float:
        retry = self.retry
        return backoff_delay(attempt, retry.initial_backoff, retry.max_backoff, random.random())
