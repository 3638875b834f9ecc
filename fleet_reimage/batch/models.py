"""The few fields of Batch pools and nodes that fleet-reimage reads (parsed from JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

# The 16 values of a compute node's ``state`` in the Batch REST API, in the spec's order.
NODE_STATE_ORDER: tuple[str, ...] = (
    "idle", "rebooting", "reimaging", "running", "unusable", "creating", "starting",
    "waitingforstarttask", "starttaskfailed", "unknown", "leavingpool", "offline",
    "preempted", "upgradingos", "deallocated", "deallocating",
)  # fmt: skip
NODE_STATES = frozenset(NODE_STATE_ORDER)
READY_STATES = frozenset({"idle", "running"})
# States a node passes through after an accepted reimage/reboot, before it is ready again.
RECOVERING_STATES = frozenset({"reimaging", "rebooting", "starting", "waitingforstarttask"})

VIRTUAL_MACHINE = "virtualMachineConfiguration"

# The properties we ask for with $select: small pages, and all the tool needs. Each must be
# in the schema of every api-version we speak (an OData service may answer 400 to an
# unknown one): tests check them against the specifications.
NODE_SELECT = "id,state,lastBootTime,runningTasksCount"
REPLACE_NODE_SELECT = "id,state,isDedicated"  # action: replace tells the two kinds apart
REPLACE_POOL_SELECT = (
    "id,allocationState,enableAutoScale,targetDedicatedNodes,targetLowPriorityNodes,"
    "currentDedicatedNodes,currentLowPriorityNodes,resizeErrors"
)
POOL_SELECT = (
    "id,state,allocationState,vmSize,currentDedicatedNodes,currentLowPriorityNodes,"
    "virtualMachineConfiguration"
)


def parse_time(value: object) -> float | None:
    """Epoch seconds from a Batch timestamp (``2023-09-07T03:52:36.3086536Z``), None if absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class NodeInfo(NamedTuple):
    id: str
    state: str
    last_boot_time: float | None
    running_tasks: int
    scheduling_state: str | None = None  # enabled | disabled; None when not returned
    is_dedicated: bool | None = None  # False: a low-priority (Spot) node; None: not returned

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeInfo:
        tasks = data.get("runningTasksCount")
        scheduling = data.get("schedulingState")
        dedicated = data.get("isDedicated")
        return cls(
            id=str(data.get("id", "")),
            state=str(data.get("state", "unknown")),
            last_boot_time=parse_time(data.get("lastBootTime")),
            running_tasks=tasks if isinstance(tasks, int) else 0,
            scheduling_state=scheduling if isinstance(scheduling, str) else None,
            is_dedicated=dedicated if isinstance(dedicated, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class ResizeError:
    """One of a pool's ``resizeErrors``: why a resize or removal could not be met."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class PoolInfo:
    id: str
    state: str
    allocation_state: str
    configuration: str | None  # VIRTUAL_MACHINE, or None when not returned
    vm_size: str | None
    current_nodes: int
    current_dedicated: int = 0
    current_low_priority: int = 0
    target_dedicated: int | None = None  # None when not returned ($select)
    target_low_priority: int | None = None
    enable_auto_scale: bool = False
    metadata: tuple[tuple[str, str], ...] = ()  # name/value pairs, in the service's order
    resize_errors: tuple[ResizeError, ...] = ()
    e_tag: str | None = None  # from the body, or the answer's ETag header

    @classmethod
    def from_json(cls, data: dict[str, Any], *, e_tag: str | None = None) -> PoolInfo:
        configuration = VIRTUAL_MACHINE if data.get(VIRTUAL_MACHINE) else None
        dedicated, low = (
            _int(data.get("currentDedicatedNodes")),
            _int(data.get("currentLowPriorityNodes")),
        )
        body_tag = data.get("eTag")
        return cls(
            id=str(data.get("id", "")),
            state=str(data.get("state", "active")),
            allocation_state=str(data.get("allocationState", "steady")),
            configuration=configuration,
            vm_size=data.get("vmSize") if isinstance(data.get("vmSize"), str) else None,
            current_nodes=(dedicated or 0) + (low or 0),
            current_dedicated=dedicated or 0,
            current_low_priority=low or 0,
            target_dedicated=_int(data.get("targetDedicatedNodes")),
            target_low_priority=_int(data.get("targetLowPriorityNodes")),
            enable_auto_scale=data.get("enableAutoScale") is True,
            metadata=tuple(_pairs(data.get("metadata"), "name", "value")),
            resize_errors=tuple(
                ResizeError(code, message)
                for code, message in _pairs(data.get("resizeErrors"), "code", "message")
            ),
            e_tag=body_tag if isinstance(body_tag, str) else e_tag,
        )

    def metadata_value(self, name: str) -> str | None:
        return next((value for key, value in self.metadata if key == name), None)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pairs(items: object, key: str, value: str) -> list[tuple[str, str]]:
    """``[{key: .., value: ..}, ...]`` as pairs of strings; malformed entries are left out."""
    if not isinstance(items, list):
        return []
    pairs: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(key), str):
            text = item.get(value)
            pairs.append((item[key], text if isinstance(text, str) else ""))
    return pairs
