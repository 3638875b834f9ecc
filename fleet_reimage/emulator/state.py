"""The emulated account's nodes and the reimage/reboot life cycle (pure: no aiohttp, no I/O).

Time only moves through the injected ``Clock``. Transitions are lazy: a reimage pushes the
node's next transition onto one heap, and every public entry point first pops whatever is
due, in time order. Idle fleets therefore cost nothing, whatever their size, and
``peak_unavailable`` is exact: the unavailable count only rises at an operation and only
falls at a transition, so processing every transition due by "now" before applying an
operation leaves the count as it truly was at that instant.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from .clock import Clock
from .seeded import uniform
from .spec import Outcomes, Timings
from .timefmt import ticks_from_seconds as ticks_of

ACCEPTING_STATES = frozenset({"idle", "running"})
# Why a node cannot take a reimage/reboot now, by its state (409 codes of the service).
_BUSY_CODES = {
    "reimaging": ("NodeBeingReimaged", "The specified node is being reimaged"),
    "rebooting": ("NodeBeingRebooted", "The specified node is being rebooted"),
    "creating": ("NodeBeingCreated", "The specified node is being created"),
    "starting": ("NodeBeingStarted", "The specified node is being started"),
    "waitingforstarttask": ("NodeBeingStarted", "The specified node is being started"),
    "unusable": ("NodeStateUnusable", "The state of the specified node is unusable"),
}
_INVALID_STATE = (
    "OperationInvalidForCurrentState",
    "The specified operation is not valid for the current state of the resource.",
)
VM_REIMAGE_REASON = (
    "Operation reimage can be invoked only on pools created with cloudServiceConfiguration"
)


class BatchOperationError(Exception):
    """An operation the service refuses: status, Batch error code, message, detail values."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: tuple[tuple[str, str], ...] = (),
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values
        self.headers: Mapping[str, str] = headers or {}


class Node:
    """One compute node. Times are ticks (100 ns since the epoch); see ``timefmt``."""

    __slots__ = (
        "allocation_ticks",
        "busy",
        "generation",
        "id",
        "index",
        "ip_address",
        "last_boot_ticks",
        "operations",
        "outcome",
        "pool",
        "reboots",
        "reimages",
        "running_tasks",
        "scheduling_state",
        "state",
        "total_tasks_run",
        "total_tasks_succeeded",
        "transition_ticks",
        "version",
    )

    def __init__(
        self,
        pool: Pool,
        node_id: str,
        index: int,
        state: str,
        *,
        transition_ticks: int,
        last_boot_ticks: int | None,
        allocation_ticks: int,
        running_tasks: int = 0,
        ip_address: str = "10.0.0.4",
        total_tasks_run: int = 0,
        total_tasks_succeeded: int = 0,
    ) -> None:
        self.pool = pool
        self.id = node_id
        self.index = index
        self.state = state
        self.scheduling_state = "enabled"
        self.transition_ticks = transition_ticks
        self.last_boot_ticks = last_boot_ticks
        self.allocation_ticks = allocation_ticks
        self.running_tasks = running_tasks
        self.ip_address = ip_address
        self.total_tasks_run = total_tasks_run
        self.total_tasks_succeeded = total_tasks_succeeded
        self.reimages = 0
        self.reboots = 0
        self.operations = 0  # reimages + reboots applied: keys the seeded outcome
        self.busy = False  # unavailable because of a reimage/reboot we accepted
        self.version = 0  # bumped on every change, so renderers may cache
        self.generation = 0  # bumped when a test forces a state: pending transitions expire
        self.outcome = "idle"  # where the current reimage/reboot will end

    def __repr__(self) -> str:
        return f"Node({self.pool.id}/{self.id}, {self.state})"


class Pool:
    """A pool: its nodes in list order (for paging) and by id (for lookups)."""

    def __init__(
        self, pool_id: str, configuration: str, vm_size: str, *, creation_ticks: int, index: int = 0
    ) -> None:
        self.id = pool_id
        self.configuration = configuration
        self.vm_size = vm_size
        self.creation_ticks = creation_ticks
        self.index = index
        self.nodes: list[Node] = []
        self.by_id: dict[str, Node] = {}
        self.state_counts: dict[str, int] = {}
        self.current_unavailable = 0
        self.peak_unavailable = 0

    def add(self, node: Node) -> None:
        if node.id in self.by_id:
            raise ValueError(f"duplicate node id {node.id!r} in pool {self.id!r}")
        node.index = len(self.nodes)
        self.nodes.append(node)
        self.by_id[node.id] = node
        self.state_counts[node.state] = self.state_counts.get(node.state, 0) + 1

    def __repr__(self) -> str:
        return f"Pool({self.id}, {len(self.nodes)} nodes)"


@dataclass(frozen=True, slots=True)
class PoolSummary:
    peak_unavailable: int
    current_unavailable: int
    nodes: int
    states: dict[str, int]


class EmulatorState:
    """Every pool and node of the account, and the transitions still to come.

    ``accepted_tokens`` is the live set of bearer tokens the HTTP layer accepts; tests
    change it at run time to simulate expiry.
    """

    def __init__(
        self,
        pools: Iterable[Pool],
        clock: Clock,
        *,
        timings: Timings | None = None,
        outcomes: Outcomes | None = None,
        seed: int = 0,
        accepted_tokens: Iterable[str] = (),
    ) -> None:
        self.clock = clock
        self.timings = timings or Timings()
        self.outcomes = outcomes or Outcomes()
        self.seed = seed
        self.accepted_tokens: set[str] = set(accepted_tokens)
        self.pools: dict[str, Pool] = {}
        for pool in pools:
            if pool.id in self.pools:
                raise ValueError(f"duplicate pool id {pool.id!r}")
            self.pools[pool.id] = pool
        # (due monotonic time, sequence, node, state to enter, node generation): the
        # sequence keeps equal due times in push order and keeps tuples from comparing nodes.
        self._due: list[tuple[float, int, Node, str, int]] = []
        self._sequence = 0

    # -- time ---------------------------------------------------------------------------
    def advance(self) -> None:
        """Apply every transition due by now, oldest first."""
        due = self._due
        if not due:
            return
        now = self.clock.monotonic()
        if due[0][0] > now:
            return
        # Wall time of a monotonic instant, so a transition processed late is still
        # stamped with the time it was due, not the time somebody looked.
        wall_offset = self.clock.wall() - now
        while due and due[0][0] <= now:
            at, _, node, target, generation = heapq.heappop(due)
            if generation == node.generation:
                self._enter(node, target, at, ticks_of(at + wall_offset))

    def pending_transitions(self) -> int:
        return len(self._due)

    def now_ticks(self) -> int:
        return ticks_of(self.clock.wall())

    # -- lookups ------------------------------------------------------------------------
    def pool(self, pool_id: str) -> Pool:
        self.advance()
        pool = self.pools.get(pool_id)
        if pool is None:
            raise BatchOperationError(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def node(self, pool_id: str, node_id: str) -> Node:
        node = self.pool(pool_id).by_id.get(node_id)
        if node is None:
            raise BatchOperationError(404, "NodeNotFound", "The specified node does not exist.")
        return node

    def iter_nodes(self) -> Iterator[Node]:
        self.advance()
        for pool in self.pools.values():
            yield from pool.nodes

    # -- operations ---------------------------------------------------------------------
    def reimage(self, pool_id: str, node_id: str) -> Node:
        """Start a reimage, or raise the error the service would answer."""
        node = self.node(pool_id, node_id)
        if node.pool.configuration != "cloudServiceConfiguration":
            raise BatchOperationError(
                409,
                "OperationNotValidOnNode",
                "The specified operation is not valid on the node.",
                (("Reason", VM_REIMAGE_REASON),),
            )
        self._begin(node, "reimaging", self.timings.reimaging)
        node.reimages += 1
        return node

    def reboot(self, pool_id: str, node_id: str) -> Node:
        """Start a reboot, or raise the error the service would answer."""
        node = self.node(pool_id, node_id)
        self._begin(node, "rebooting", self.timings.rebooting)
        node.reboots += 1
        return node

    def _begin(self, node: Node, state: str, duration: float) -> None:
        if node.state not in ACCEPTING_STATES:
            code, message = _BUSY_CODES.get(node.state, _INVALID_STATE)
            raise BatchOperationError(409, code, message)
        node.operations += 1
        node.outcome = self._outcome(node)
        now = self.clock.monotonic()
        self._set_state(node, state, ticks_of(self.clock.wall()))
        node.running_tasks = 0
        node.busy = True
        pool = node.pool
        pool.current_unavailable += 1
        pool.peak_unavailable = max(pool.peak_unavailable, pool.current_unavailable)
        self._schedule(node, now + duration, "starting")

    def _outcome(self, node: Node) -> str:
        """The state this operation ends in: a pure function of (seed, pool, node, n)."""
        outcomes = self.outcomes
        if not (outcomes.starttaskfailed or outcomes.unusable):
            return "idle"
        draw = uniform(self.seed, "outcome", node.pool.id, node.id, node.operations)
        if draw < outcomes.starttaskfailed:
            return "starttaskfailed"
        if draw < outcomes.starttaskfailed + outcomes.unusable:
            return "unusable"
        return "idle"

    def _schedule(self, node: Node, at: float, target: str) -> None:
        self._sequence += 1
        heapq.heappush(self._due, (at, self._sequence, node, target, node.generation))

    def _enter(self, node: Node, target: str, at: float, ticks: int) -> None:
        self._set_state(node, target, ticks)
        timings = self.timings
        if target == "starting":
            node.last_boot_ticks = ticks  # the boot itself
            if timings.waitingforstarttask > 0:
                self._schedule(node, at + timings.starting, "waitingforstarttask")
            else:
                self._schedule(node, at + timings.starting, node.outcome)
        elif target == "waitingforstarttask":
            self._schedule(node, at + timings.waitingforstarttask, node.outcome)
        else:
            node.busy = False
            node.pool.current_unavailable -= 1

    @staticmethod
    def _set_state(node: Node, state: str, ticks: int) -> None:
        counts = node.pool.state_counts
        counts[node.state] -= 1
        counts[state] = counts.get(state, 0) + 1
        node.state = state
        node.transition_ticks = ticks
        node.version += 1

    # -- what tests and demos do behind the service's back ---------------------------------
    def force_state(self, pool_id: str, node_id: str, state: str) -> Node:
        """Put a node in ``state`` now (e.g. ``offline``), cancelling its pending transitions."""
        node = self.node(pool_id, node_id)
        self._release(node)
        self._set_state(node, state, self.now_ticks())
        if state == "creating":
            node.last_boot_ticks = None
        return node

    def remove_node(self, pool_id: str, node_id: str) -> None:
        """The node leaves the pool: later calls about it answer 404 NodeNotFound."""
        node = self.node(pool_id, node_id)
        self._release(node)
        pool = node.pool
        pool.state_counts[node.state] -= 1
        del pool.by_id[node.id]
        pool.nodes.remove(node)
        for index, other in enumerate(pool.nodes):
            other.index = index

    @staticmethod
    def _release(node: Node) -> None:
        node.generation += 1  # its queued transitions no longer apply
        if node.busy:
            node.busy = False
            node.pool.current_unavailable -= 1

    # -- reports ------------------------------------------------------------------------
    def summary(self, pool_id: str) -> PoolSummary:
        pool = self.pool(pool_id)
        states = {state: n for state, n in pool.state_counts.items() if n}
        return PoolSummary(pool.peak_unavailable, pool.current_unavailable, len(pool.nodes), states)
