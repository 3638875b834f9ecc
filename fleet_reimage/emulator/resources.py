"""The emulated account's resources as plain mutable records: nodes, pools, and the error
an operation raises. Behaviour lives in ``nodes.py`` / ``pools.py``; rules in ``rules.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .spec import PoolSpec
from .timefmt import etag_of


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
        "added",
        "allocation_ticks",
        "busy",
        "deallocations",
        "generation",
        "id",
        "index",
        "ip_address",
        "is_dedicated",
        "last_boot_ticks",
        "modified_ticks",
        "operations",
        "outcome",
        "pending",
        "pending_option",
        "pool",
        "ready",
        "reboots",
        "reimages",
        "removals",
        "removed",
        "running_tasks",
        "scheduling_disables",
        "scheduling_enables",
        "scheduling_state",
        "starts",
        "state",
        "task_ends",
        "task_epoch",
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
        is_dedicated: bool = True,
    ) -> None:
        self.pool = pool
        self.id = node_id
        self.index = index
        self.state = state
        self.scheduling_state = "enabled"
        self.transition_ticks = transition_ticks
        self.modified_ticks = transition_ticks
        self.last_boot_ticks = last_boot_ticks
        self.allocation_ticks = allocation_ticks
        self.running_tasks = running_tasks
        self.task_ends: list[float] = []  # monotonic end of each running task, ascending
        self.task_epoch = 0  # bumped when tasks are stopped: their queued ends expire
        self.ip_address = ip_address
        self.is_dedicated = is_dedicated
        self.added = False  # allocated by a resize (or an auto-scale evaluation)
        self.total_tasks_run = total_tasks_run
        self.total_tasks_succeeded = total_tasks_succeeded
        self.reimages = 0
        self.reboots = 0
        self.deallocations = 0
        self.starts = 0
        self.scheduling_disables = 0
        self.scheduling_enables = 0
        self.removals = 0
        self.removed = False
        self.operations = 0  # operations that end in a boot: keys the seeded outcome
        self.busy = False  # unavailable because of an operation we accepted
        self.pending: str | None = None  # an operation waiting for the running tasks
        self.pending_option = ""
        self.ready = False  # counted in pool.ready_count (see rules.is_ready)
        self.version = 0  # bumped on every change, so renderers may cache
        self.generation = 0  # bumped when pending transitions must expire
        self.outcome = "idle"  # where the current boot will end

    @property
    def etag(self) -> str:
        return etag_of(self.modified_ticks)

    def __repr__(self) -> str:
        return f"Node({self.pool.id}/{self.id}, {self.state})"


class Pool:
    """A pool: its nodes in list order (for paging) and by id (for lookups), its targets,
    its allocation state and what the stats report about it."""

    def __init__(
        self,
        pool_id: str,
        vm_size: str,
        *,
        creation_ticks: int,
        index: int = 0,
        spec: PoolSpec | None = None,
    ) -> None:
        self.id = pool_id
        self.vm_size = vm_size
        self.creation_ticks = creation_ticks
        self.index = index
        self.spec = spec or PoolSpec(pool_id, 0, vm_size=vm_size)
        self.nodes: list[Node] = []
        self.by_id: dict[str, Node] = {}
        self.dedicated = 0  # how many of the nodes are dedicated (the others low-priority)
        self.state_counts: dict[str, int] = {}
        self.current_unavailable = 0
        self.peak_unavailable = 0
        self.ready_count = 0
        self.min_ready = 0
        # The pool resource.
        self.modified_ticks = creation_ticks  # lastModified: pool-level data only
        self.allocation_state = "steady"
        self.allocation_ticks = creation_ticks
        self.target_dedicated = 0
        self.target_low_priority = 0
        self.resize_timeout = 900.0
        self.resize_errors: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []
        self.metadata: list[tuple[str, str]] = list(self.spec.metadata)
        self.auto_scale_ticks: int | None = None  # the last evaluation
        # The resize in progress (see pools.py).
        self.generation = 0
        self.allocating = (0, 0)  # (dedicated, low-priority) nodes still to appear
        self.leaving: set[Node] = set()  # nodes this resize removes, not yet gone
        self.pending_errors: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []
        # Counters for the stats.
        self.removed: list[Node] = []
        self.nodes_added = 0
        self.tasks_completed = 0
        self.tasks_requeued = 0
        self.tasks_terminated = 0
        self.auto_scale_evaluations = 0
        self.new_nodes = 0  # serial for new node ids

    @property
    def etag(self) -> str:
        return etag_of(self.modified_ticks)

    @property
    def reimage_refused(self) -> bool:
        return self.spec.reimage == "refused"

    def add(self, node: Node) -> None:
        if node.id in self.by_id:
            raise ValueError(f"duplicate node id {node.id!r} in pool {self.id!r}")
        node.index = len(self.nodes)
        self.nodes.append(node)
        self.by_id[node.id] = node
        self.dedicated += node.is_dedicated
        self.state_counts[node.state] = self.state_counts.get(node.state, 0) + 1

    def discard(self, node: Node) -> None:
        """The node leaves the list (later lookups answer 404); stats keep it."""
        self.state_counts[node.state] -= 1
        del self.by_id[node.id]
        self.nodes.remove(node)
        self.dedicated -= node.is_dedicated
        for index, other in enumerate(self.nodes[node.index :], node.index):
            other.index = index
        node.removed = True
        self.removed.append(node)

    def counts(self) -> tuple[int, int]:
        """(dedicated, low-priority) nodes in the pool now, leaving ones included."""
        return self.dedicated, len(self.nodes) - self.dedicated

    def touch(self, ticks: int) -> None:
        """Pool-level data changed: lastModified (and so the ETag) moves strictly forward."""
        self.modified_ticks = max(ticks, self.modified_ticks + 1)

    def __repr__(self) -> str:
        return f"Pool({self.id}, {len(self.nodes)} nodes)"
