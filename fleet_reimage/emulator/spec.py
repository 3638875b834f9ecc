"""What a fleet file describes, as plain frozen data (no parsing, no I/O).

``fleet.py`` builds a ``FleetSpec`` from YAML; tests and benchmarks may also build one
directly, which is why every field past the required ones has a default.

Every pool is a ``virtualMachineConfiguration`` pool, as in api-version 2024-07-01.20.0
(the schema has no cloud-service pools any more); ``reimage`` says whether the emulated
service accepts reimage on it (the live service's answer is not settled, so both are
rehearsed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# The 16 values of a compute node's ``state``, in the spec's order (ComputeNodeState).
# Ordered: seeded draws depend on it. The emulator keeps its own copy of what the service
# is, apart from the client's (tests check both against the spec).
NODE_STATES: tuple[str, ...] = (
    "idle", "rebooting", "reimaging", "running", "unusable", "creating", "starting",
    "waitingforstarttask", "starttaskfailed", "unknown", "leavingpool", "offline",
    "preempted", "upgradingos", "deallocated", "deallocating",
)  # fmt: skip
REIMAGE_POLICIES: tuple[str, ...] = ("accepted", "refused")
OPERATIONS: tuple[str, ...] = (
    "list_pools",
    "get_pool",
    "list_nodes",
    "get_node",
    "reimage",
    "reboot",
    "deallocate",
    "start",
    "disable_scheduling",
    "enable_scheduling",
    "remove_nodes",
    "resize",
    "stop_resize",
    "patch_pool",
)
# In draw order: a request's uniform draw u picks the first kind whose cumulative share exceeds u.
FAULT_KINDS: tuple[str, ...] = (
    "throttle",
    "server_busy",
    "server_error",
    "reset_before",
    "reset_after",
    "delay_after",
)


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """The account the emulator impersonates. ``key`` is base64; it never shows in repr."""

    name: str
    key: str
    bearer_tokens: tuple[str, ...] = ()

    def __repr__(self) -> str:
        tokens = len(self.bearer_tokens)
        return f"AccountSpec(name={self.name!r}, key=<redacted>, bearer_tokens=<{tokens}>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TaskDuration:
    """How long a running task still runs: ``fixed`` (low), ``uniform`` [low, high] or
    ``exponential`` (mean ``low``), in seconds. Drawn per task from the seed."""

    distribution: str = "uniform"
    low: float = 1800.0
    high: float = 7200.0

    def seconds(self, draw: float) -> float:
        """The duration for a uniform ``draw`` in [0, 1) (pure)."""
        if self.distribution == "fixed":
            return self.low
        if self.distribution == "exponential":
            return -self.low * math.log1p(-draw)
        return self.low + (self.high - self.low) * draw


@dataclass(frozen=True, slots=True)
class AutoScaleSpec:
    """An auto-scale "formula" the emulator can run: restore fixed targets every interval."""

    target_dedicated: int
    target_low_priority: int = 0
    interval: float = 300.0


@dataclass(frozen=True, slots=True)
class CoreQuota:
    """Cores the pool may use (None: unlimited); a resize past it leaves resizeErrors."""

    dedicated: int | None = None
    low_priority: int | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool: its nodes (a count, or explicit ids) and their initial condition."""

    id: str
    nodes: int | tuple[str, ...]
    vm_size: str = "standard_d2_v3"
    states: Mapping[str, float] = field(default_factory=lambda: {"idle": 1.0})
    running_tasks: int = 1
    recently_booted: float = 0.0
    reimage: str = "accepted"
    task_duration: TaskDuration = TaskDuration()
    auto_scale: AutoScaleSpec | None = None
    cores_per_node: int = 2
    core_quota: CoreQuota = CoreQuota()
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def node_count(self) -> int:
        return self.nodes if isinstance(self.nodes, int) else len(self.nodes)


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds each phase lasts (reimage, reboot, node start-up, pool changes)."""

    reimaging: float = 2.0
    rebooting: float = 1.0
    starting: float = 1.0
    waitingforstarttask: float = 0.0
    creating: float = 1.0  # a new node, from allocated to starting
    allocating: float = 1.0  # a growing pool, from the resize to its new nodes
    leavingpool: float = 1.0  # a removed node, from leavingpool to gone
    deallocating: float = 1.0
    stopping: float = 0.5  # a stopped resize, from stopping to steady
    retention: float = 0.0  # retaineddata: after the tasks end, before the operation


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Shares of nodes that come back broken (after a reimage, reboot, start or creation)."""

    starttaskfailed: float = 0.0
    unusable: float = 0.0


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Fault shares (each 0..1, summing to at most 1) and timings for one operation."""

    throttle: float = 0.0
    server_busy: float = 0.0
    server_error: float = 0.0
    reset_before: float = 0.0
    reset_after: float = 0.0
    delay_after: float = 0.0
    delay: float = 40.0
    latency: float = 0.0
    jitter: float = 0.0
    retry_after: float = 1.0

    def shares(self) -> tuple[float, ...]:
        """The shares in ``FAULT_KINDS`` order."""
        return (
            self.throttle,
            self.server_busy,
            self.server_error,
            self.reset_before,
            self.reset_after,
            self.delay_after,
        )


@dataclass(frozen=True, slots=True)
class FaultsSpec:
    """Faults per operation, already resolved: "all" fills in every operation not listed."""

    seed: int = 0
    operations: Mapping[str, FaultSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    requests_per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """A whole emulated Batch account."""

    account: AccountSpec
    pools: tuple[PoolSpec, ...]
    seed: int = 0
    timings: Timings = Timings()
    outcomes: Outcomes = Outcomes()
    faults: FaultsSpec = FaultsSpec()
    rate_limit: RateLimitSpec | None = None
    source: str = "<fleet>"
