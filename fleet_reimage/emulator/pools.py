"""Pool operations: resize, stop resize, remove nodes, metadata, and auto-scale.

A resize (or a removal, or an auto-scale evaluation that changes the pool) moves the pool
from ``steady`` to ``resizing``: new nodes appear after ``timings.allocating`` (then
``creating`` → ``starting`` → ... like any boot), removed nodes pass through
``leavingpool`` (after their tasks, for ``taskcompletion``/``retaineddata``), and the pool
is ``steady`` again once both are done, with ``resizeErrors`` for what could not be done
(a core quota, the resize timeout, a stop). Auto-scale pools run the one "formula" the
emulator knows: every evaluation interval, restore fixed targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import rules
from .ids import new_node
from .resources import BatchOperationError, Node, Pool
from .spec import Timings
from .timefmt import iso_duration

Handler = Callable[[Any, float, int], None]  # (subject, monotonic due time, wall ticks)


class Lifecycle(Protocol):
    """What pool operations need of the node life cycle (``state.EmulatorState``)."""

    seed: int
    timings: Timings

    def pool(self, pool_id: str) -> Pool: ...

    def now(self) -> tuple[float, int]: ...

    def now_ticks(self) -> int: ...

    def schedule(
        self, subject: Node | Pool, at: float, kind: str, *, always: bool = False
    ) -> None: ...

    def request_removal(self, node: Node, option: str, at: float, ticks: int) -> None: ...

    def cancel_pending(self, node: Node, ticks: int) -> None: ...

    def add_node(self, pool: Pool, node: Node, at: float, ticks: int) -> None: ...


ALLOCATED = "@allocated"
RESIZE_TIMEOUT = "@resize-timeout"
STOPPED = "@stopped"
EVALUATE = "@evaluate"
ResizeError = tuple[str, str, tuple[tuple[str, str], ...]]


def _not_steady(pool: Pool) -> BatchOperationError:
    return BatchOperationError(
        409,
        "PoolBeingResized",
        "The specified pool is being resized.",
        (("Reason", f"The pool's allocation state is {pool.allocation_state}, not steady."),),
    )


def auto_scale_formula(pool: Pool) -> str | None:
    spec = pool.spec.auto_scale
    if spec is None:
        return None
    return (
        f"$TargetDedicatedNodes = {spec.target_dedicated};\n"
        f"$TargetLowPriorityNodes = {spec.target_low_priority};\n"
        "$NodeDeallocationOption = requeue;"
    )


def auto_scale_results(pool: Pool) -> str:
    spec = pool.spec.auto_scale
    assert spec is not None
    return (
        f"$TargetDedicatedNodes={spec.target_dedicated};"
        f"$TargetLowPriorityNodes={spec.target_low_priority};"
        "$NodeDeallocationOption=requeue"
    )


class PoolOperations:
    """The pool-level operations of one ``EmulatorState``, and their timed events."""

    def __init__(self, state: Lifecycle) -> None:
        self.state = state

    def handlers(self) -> dict[str, Handler]:
        return {
            ALLOCATED: self._allocated,
            RESIZE_TIMEOUT: self._timed_out,
            STOPPED: self._stopped,
            EVALUATE: self._evaluate,
        }

    def start(self, pool: Pool, now: float) -> None:
        """Initial targets; auto-scale pools get their first evaluation scheduled."""
        pool.target_dedicated, pool.target_low_priority = pool.counts()
        spec = pool.spec.auto_scale
        if spec is not None:
            pool.target_dedicated = spec.target_dedicated
            pool.target_low_priority = spec.target_low_priority
            self.state.schedule(pool, now + spec.interval, EVALUATE, always=True)

    # -- requests --------------------------------------------------------------------------
    def resize(
        self,
        pool_id: str,
        dedicated: int | None,
        low_priority: int | None,
        timeout: float,
        option: str,
    ) -> Pool:
        pool = self.state.pool(pool_id)
        if pool.spec.auto_scale is not None:
            raise rules.invalid_state(
                "The pool has auto-scaling enabled: it cannot be resized by hand.",
            )
        if pool.allocation_state != "steady":
            raise _not_steady(pool)
        at, ticks = self.state.now()
        if dedicated is not None:
            pool.target_dedicated = dedicated
        if low_priority is not None:
            pool.target_low_priority = low_priority
        pool.resize_timeout = timeout
        pool.touch(ticks)
        self._resize_to_targets(pool, option, at, ticks)
        return pool

    def stop_resize(self, pool_id: str) -> Pool:
        """Stop where the pool stands: no more new nodes, waiting removals dropped."""
        pool = self.state.pool(pool_id)
        if pool.allocation_state != "resizing":
            raise rules.invalid_state(
                f"The pool's allocation state is {pool.allocation_state}, not resizing.",
            )
        at, ticks = self.state.now()
        pool.generation += 1  # the allocation and the timeout no longer happen
        pool.allocating = (0, 0)
        for node in pool.leaving:
            if node.pending == "remove":
                self.state.cancel_pending(node, ticks)
        pool.leaving.clear()
        staying = [node for node in pool.nodes if node.state != "leavingpool"]
        pool.target_dedicated = sum(1 for node in staying if node.is_dedicated)
        pool.target_low_priority = len(staying) - pool.target_dedicated
        pool.pending_errors = [
            (
                "ResizeStopped",
                "Desired number of nodes could not be allocated due to a stop resize operation",
                (),
            )
        ]
        pool.touch(ticks)
        self._allocation_state(pool, "stopping", ticks)
        self.state.schedule(pool, at + self.state.timings.stopping, STOPPED)
        return pool

    def remove_nodes(self, pool_id: str, node_ids: list[str], timeout: float, option: str) -> Pool:
        pool = self.state.pool(pool_id)
        if pool.allocation_state != "steady":
            raise _not_steady(pool)
        nodes = []
        for node_id in node_ids:
            node = pool.by_id.get(node_id)
            if node is None:
                raise BatchOperationError(
                    404,
                    "NodeNotFound",
                    "The specified node does not exist.",
                    (("NodeId", node_id),),
                )
            if node.state == "leavingpool":
                raise rules.invalid_state(
                    f"Node {node_id} is already leaving the pool.",
                )
            nodes.append(node)
        at, ticks = self.state.now()
        for node in nodes:
            if node.is_dedicated:
                pool.target_dedicated = max(0, pool.target_dedicated - 1)
            else:
                pool.target_low_priority = max(0, pool.target_low_priority - 1)
        pool.resize_timeout = timeout
        pool.touch(ticks)
        self._begin_resize(pool, at, ticks)
        for node in nodes:
            self._remove(pool, node, option, at, ticks)
        self._maybe_steady(pool, ticks)
        return pool

    def patch_metadata(self, pool_id: str, metadata: list[tuple[str, str]]) -> Pool:
        """``metadata`` replaces the whole list (any time, whatever the allocation state)."""
        pool = self.state.pool(pool_id)
        pool.metadata = list(metadata)
        pool.touch(self.state.now_ticks())
        return pool

    # -- the resize machinery ----------------------------------------------------------------
    def _allocation_state(self, pool: Pool, value: str, ticks: int) -> None:
        pool.allocation_state = value
        pool.allocation_ticks = ticks

    def _begin_resize(self, pool: Pool, at: float, ticks: int) -> None:
        pool.generation += 1
        pool.resize_errors = []
        pool.pending_errors = []
        self._allocation_state(pool, "resizing", ticks)
        self.state.schedule(pool, at + pool.resize_timeout, RESIZE_TIMEOUT)

    def _remove(self, pool: Pool, node: Node, option: str, at: float, ticks: int) -> None:
        pool.leaving.add(node)
        self.state.request_removal(node, option, at, ticks)

    def _resize_to_targets(self, pool: Pool, option: str, at: float, ticks: int) -> None:
        self._begin_resize(pool, at, ticks)
        spec = pool.spec
        new = []
        for dedicated, target, quota in (
            (True, pool.target_dedicated, spec.core_quota.dedicated),
            (False, pool.target_low_priority, spec.core_quota.low_priority),
        ):
            staying = [
                node
                for node in pool.nodes
                if node.is_dedicated == dedicated
                and node.state != "leavingpool"
                and node.pending != "remove"
            ]
            missing = target - len(staying)
            room = rules.quota_room(quota, spec.cores_per_node, len(staying))
            if missing > 0 and room is not None and room < missing:
                pool.pending_errors.append(_quota_error(dedicated, quota or 0))
                missing = room
            new.append(max(0, missing))
            if missing < 0:
                by_index = {node.index: node for node in staying}
                order = rules.shrink_order(
                    rules.ShrinkCandidate(node.state, node.running_tasks, node.index)
                    for node in staying
                )
                for candidate in order[:-missing]:
                    self._remove(pool, by_index[candidate.position], option, at, ticks)
        pool.allocating = (new[0], new[1])
        if any(new):
            self.state.schedule(pool, at + self.state.timings.allocating, ALLOCATED)
        self._maybe_steady(pool, ticks)

    def _allocated(self, pool: Pool, at: float, ticks: int) -> None:
        dedicated, low_priority = pool.allocating
        pool.allocating = (0, 0)
        for is_dedicated, count in ((True, dedicated), (False, low_priority)):
            for _ in range(count):
                pool.new_nodes += 1
                node = new_node(self.state.seed, pool, pool.new_nodes, is_dedicated, ticks)
                self.state.add_node(pool, node, at, ticks)
        self._maybe_steady(pool, ticks)

    def node_gone(self, node: Node, at: float, ticks: int) -> None:
        pool = node.pool
        if node in pool.leaving:
            pool.leaving.discard(node)
            self._maybe_steady(pool, ticks)

    def _maybe_steady(self, pool: Pool, ticks: int) -> None:
        if pool.allocation_state == "resizing" and pool.allocating == (0, 0) and not pool.leaving:
            self._steady(pool, ticks)

    def _steady(self, pool: Pool, ticks: int) -> None:
        pool.generation += 1  # the timeout no longer applies
        pool.resize_errors = pool.pending_errors
        pool.pending_errors = []
        self._allocation_state(pool, "steady", ticks)

    def _timed_out(self, pool: Pool, at: float, ticks: int) -> None:
        """The resize timeout passed: stop allocating, drop removals still waiting."""
        if pool.allocating != (0, 0):
            pool.allocating = (0, 0)
            pool.pending_errors.append(
                (
                    "AllocationTimedOut",
                    "Desired number of dedicated nodes could not be allocated as the resize "
                    "timeout was reached",
                    (),
                )
            )
        waiting = [node for node in pool.leaving if node.pending == "remove"]
        for node in waiting:
            self.state.cancel_pending(node, ticks)
            if node.is_dedicated:
                pool.target_dedicated += 1
            else:
                pool.target_low_priority += 1
        if waiting:
            pool.pending_errors.append(
                (
                    "RemoveNodesFailed",
                    f"{len(waiting)} nodes were not removed: their tasks did not finish "
                    f"within the resize timeout ({iso_duration(pool.resize_timeout)})",
                    (),
                )
            )
        pool.leaving.clear()
        self._steady(pool, ticks)

    def _stopped(self, pool: Pool, at: float, ticks: int) -> None:
        self._steady(pool, ticks)

    # -- auto-scale --------------------------------------------------------------------------
    def _evaluate(self, pool: Pool, at: float, ticks: int) -> None:
        spec = pool.spec.auto_scale
        assert spec is not None
        pool.auto_scale_evaluations += 1
        pool.auto_scale_ticks = ticks
        if pool.allocation_state == "steady":
            wanted = (spec.target_dedicated, spec.target_low_priority)
            if (pool.target_dedicated, pool.target_low_priority) != wanted:
                pool.target_dedicated, pool.target_low_priority = wanted
                pool.touch(ticks)
            staying = [node for node in pool.nodes if node.state != "leavingpool"]
            dedicated = sum(1 for node in staying if node.is_dedicated)
            if (dedicated, len(staying) - dedicated) != wanted:
                self._resize_to_targets(pool, "requeue", at, ticks)
        # Evaluations go on whatever a resize does to the pool's generation.
        self.state.schedule(pool, at + spec.interval, EVALUATE, always=True)


def _quota_error(dedicated: bool, quota: int) -> ResizeError:
    if dedicated:
        return (
            "AccountCoreQuotaReached",
            "The specified account has reached VM core quota: desired number of dedicated "
            "nodes could not be allocated",
            (("CoreQuota", str(quota)),),
        )
    return (
        "AccountLowPriorityCoreQuotaReached",
        "The specified account has reached low-priority core quota: desired number of "
        "low-priority nodes could not be allocated",
        (("LowPriorityCoreQuota", str(quota)),),
    )
