"""What a fleet file describes, as plain frozen data (no parsing, no I/O).

``fleet.py`` builds a ``FleetSpec`` from YAML; tests and benchmarks may also build one
directly, which is why every field past the required ones has a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..batch.models import NODE_STATE_ORDER

NODE_STATES: tuple[str, ...] = NODE_STATE_ORDER  # ordered: seeded draws depend on it
CONFIGURATIONS: tuple[str, ...] = ("cloudServiceConfiguration", "virtualMachineConfiguration")
OPERATIONS: tuple[str, ...] = (
    "list_pools",
    "get_pool",
    "list_nodes",
    "get_node",
    "reimage",
    "reboot",
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
class PoolSpec:
    """One pool: its nodes (a count, or explicit ids) and their initial condition."""

    id: str
    nodes: int | tuple[str, ...]
    configuration: str = "cloudServiceConfiguration"
    vm_size: str = "standard_d2_v3"
    states: Mapping[str, float] = field(default_factory=lambda: {"idle": 1.0})
    running_tasks: int = 1
    recently_booted: float = 0.0

    @property
    def node_count(self) -> int:
        return self.nodes if isinstance(self.nodes, int) else len(self.nodes)


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds each phase of a reimage or reboot lasts."""

    reimaging: float = 2.0
    rebooting: float = 1.0
    starting: float = 1.0
    waitingforstarttask: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Shares of reimaged/rebooted nodes that come back broken instead of idle."""

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
