"""The service's rules as pure functions: which operation a node or pool may take now, and
with which error code it is refused; who is ready; which nodes a shrinking pool gives up;
how much a core quota still allows; conditional headers.

Nothing here touches a clock or mutates anything, so each rule is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from .resources import BatchOperationError
from .timefmt import TICKS_PER_SECOND

ACCEPTING_STATES = frozenset({"idle", "running"})  # reimage, reboot, deallocate
READY_STATES = ACCEPTING_STATES
NODE_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
SCHEDULING_OPTIONS = ("requeue", "terminate", "taskcompletion")
WAITING_OPTIONS = frozenset({"taskcompletion", "retaineddata"})  # let running tasks finish
# What a node waiting for its tasks is about to do, as the 409 it answers meanwhile.
_PENDING_CODES = {
    "reimage": ("NodeBeingReimaged", "The specified node is being reimaged"),
    "reboot": ("NodeBeingRebooted", "The specified node is being rebooted"),
    "deallocate": (
        "OperationInvalidForCurrentState",
        "The specified operation is not valid for the current state of the resource.",
    ),
    "remove": (
        "OperationInvalidForCurrentState",
        "The specified operation is not valid for the current state of the resource.",
    ),
}
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
# Where the node has no agent or is going away, its scheduling state cannot be changed.
_NO_SCHEDULING_CHANGE = frozenset(
    {"creating", "starting", "leavingpool", "deallocating", "deallocated"}
)
# Shrinking: the nodes a pool gives up first (lower is sooner).
_SHRINK_CLASS = {
    "unusable": 0,
    "starttaskfailed": 0,
    "offline": 0,
    "unknown": 0,
    "preempted": 0,
    "creating": 1,
    "starting": 1,
    "waitingforstarttask": 1,
    "idle": 2,
    "running": 4,
}
VM_REIMAGE_REASON = (
    "Operation reimage can be invoked only on pools created with cloudServiceConfiguration"
)


def conflict(code_message: tuple[str, str], reason: str | None = None) -> BatchOperationError:
    code, message = code_message
    return BatchOperationError(409, code, message, (("Reason", reason),) if reason else ())


def invalid_state(reason: str | None = None) -> BatchOperationError:
    """409 OperationInvalidForCurrentState, with the reason in ``values``."""
    return conflict(_INVALID_STATE, reason)


def action_conflict(state: str, pending: str | None) -> BatchOperationError | None:
    """Reimage, reboot or deallocate: only from idle or running, and not while another
    operation waits for the node's tasks."""
    if pending is not None:
        return conflict(_PENDING_CODES[pending])
    if state in ACCEPTING_STATES:
        return None
    return conflict(_BUSY_CODES.get(state, _INVALID_STATE))


def reimage_refused() -> BatchOperationError:
    """The answer recorded from the live service on pools that do not take reimage."""
    return BatchOperationError(
        409,
        "OperationNotValidOnNode",
        "The specified operation is not valid on the node.",
        (("Reason", VM_REIMAGE_REASON),),
    )


def start_conflict(state: str) -> BatchOperationError | None:
    if state == "deallocated":
        return None
    if state == "deallocating":
        return conflict(_INVALID_STATE, "The node is being deallocated.")
    return conflict(_INVALID_STATE, "Only a deallocated node can be started.")


def scheduling_conflict(state: str, current: str, wanted: str) -> BatchOperationError | None:
    """disablescheduling / enablescheduling: a change, on a node with an agent."""
    if state in _NO_SCHEDULING_CHANGE:
        return conflict(_BUSY_CODES.get(state, _INVALID_STATE))
    if current == wanted:
        return BatchOperationError(
            409,
            "NodeAlreadyInTargetSchedulingState",
            "The specified compute node is already in the target scheduling state.",
        )
    return None


def is_ready(state: str, scheduling_state: str, pending: str | None) -> bool:
    """Ready capacity: could take a new task now (idle or running, scheduling enabled, not
    waiting for its tasks before a reimage, reboot, deallocation or removal)."""
    return state in READY_STATES and scheduling_state == "enabled" and pending is None


class ShrinkCandidate(NamedTuple):
    state: str
    running_tasks: int
    position: int


def shrink_order(candidates: Iterable[ShrinkCandidate]) -> list[ShrinkCandidate]:
    """The order in which a shrinking pool gives nodes up: broken ones, then those not yet
    started, idle ones, others, running ones last (fewest tasks first); newest first."""
    return sorted(
        candidates,
        key=lambda node: (_SHRINK_CLASS.get(node.state, 3), node.running_tasks, -node.position),
    )


def quota_room(quota_cores: int | None, cores_per_node: int, nodes_in_use: int) -> int | None:
    """How many more nodes fit in a core quota (None: unlimited)."""
    if quota_cores is None:
        return None
    return max(0, quota_cores // max(1, cores_per_node) - nodes_in_use)


def _http_ticks(text: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return int(parsed.timestamp()) * TICKS_PER_SECOND


def condition_failure(
    headers: Mapping[str, str], etag: str, modified_ticks: int, *, read: bool
) -> int | None:
    """The status a conditional request gets (412, or 304 for a read), None to go ahead.

    ``If-Match`` / ``If-None-Match`` compare ETags (``*`` matches any); the dates compare
    whole seconds, as HTTP dates carry no more.
    """
    modified = modified_ticks // TICKS_PER_SECOND * TICKS_PER_SECOND
    wanted = headers.get("If-Match")
    if wanted is not None and not _etag_matches(wanted, etag):
        return 412
    unmodified_since = headers.get("If-Unmodified-Since")
    if unmodified_since is not None:
        since = _http_ticks(unmodified_since)
        if since is not None and modified > since:
            return 412
    unwanted = headers.get("If-None-Match")
    if unwanted is not None and _etag_matches(unwanted, etag):
        return 304 if read else 412
    modified_since = headers.get("If-Modified-Since")
    if modified_since is not None:
        since = _http_ticks(modified_since)
        if since is not None and modified <= since:
            return 304 if read else 412
    return None


def _etag_matches(header: str, etag: str) -> bool:
    tags: Sequence[str] = [tag.strip().strip('"') for tag in header.split(",")]
    return "*" in tags or etag in tags
