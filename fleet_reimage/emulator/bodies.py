"""Request bodies, checked as the service checks them (pure: bytes in, values or the 400).

Shapes from the spec: ``NodeReimageParameter`` / ``NodeRebootParameter`` /
``NodeDeallocateParameter`` / ``NodeDisableSchedulingParameter`` (one optional option),
``NodeRemoveParameter``, ``PoolResizeParameter`` and ``PoolPatchParameter``. A property the
schema does not have is refused (``InvalidRequestBody``), like a misspelt one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .resources import BatchOperationError
from .rules import NODE_OPTIONS
from .timefmt import parse_iso_duration

MAX_REMOVE = 100
MIN_RESIZE_TIMEOUT = 300.0
DEFAULT_RESIZE_TIMEOUT = 900.0
_SYNTAX = "The specified Request Body is not syntactically valid."
_INVALID_VALUE = "The value provided for one of the properties in the request body is invalid."
# PoolPatchParameter's properties; only metadata is emulated.
PATCH_PROPERTIES = frozenset(
    {
        "startTask",
        "certificateReferences",
        "applicationPackageReferences",
        "metadata",
        "targetNodeCommunicationMode",
        "displayName",
        "vmSize",
        "taskSlotsPerNode",
        "taskSchedulingPolicy",
        "enableInterNodeCommunication",
        "virtualMachineConfiguration",
        "networkConfiguration",
        "userAccounts",
        "mountConfiguration",
        "upgradePolicy",
        "resourceTags",
    }
)


def syntax_error(reason: str) -> BatchOperationError:
    return BatchOperationError(400, "InvalidRequestBody", _SYNTAX, (("Reason", reason),))


def invalid_value(name: str, value: object, reason: str) -> BatchOperationError:
    return BatchOperationError(
        400,
        "InvalidPropertyValue",
        _INVALID_VALUE,
        (("PropertyName", name), ("PropertyValue", str(value)), ("Reason", reason)),
    )


def json_object(body: bytes, *, required: bool) -> dict[str, Any]:
    """The body as a JSON object ({} when empty and allowed)."""
    if not body.strip():
        if required:
            raise syntax_error("This request needs a body.")
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise syntax_error("The body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise syntax_error("The body must be a JSON object.")
    return document


def _only(document: dict[str, Any], allowed: Sequence[str]) -> None:
    for name in document:
        if name not in allowed:
            raise syntax_error(
                f"The property '{name}' is not part of this request; allowed: " + ", ".join(allowed)
            )


def node_option(body: bytes, name: str, allowed: Sequence[str] = NODE_OPTIONS) -> str | None:
    """The optional ``{name: option}`` of a node action (None when not given)."""
    if not body.strip():  # the hot path: no body at all
        return None
    document = json_object(body, required=False)
    _only(document, (name,))
    value = document.get(name)
    if value is not None and value not in allowed:
        raise syntax_error(f"{name} must be one of: {', '.join(allowed)} (got {value!r})")
    return value


def _option(document: dict[str, Any]) -> str:
    value = document.get("nodeDeallocationOption", "requeue")
    if value not in NODE_OPTIONS:
        raise invalid_value("nodeDeallocationOption", value, "allowed: " + ", ".join(NODE_OPTIONS))
    return str(value)


def _timeout(document: dict[str, Any]) -> float:
    text = document.get("resizeTimeout")
    if text is None:
        return DEFAULT_RESIZE_TIMEOUT
    try:
        seconds = parse_iso_duration(text) if isinstance(text, str) else -1.0
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise invalid_value("resizeTimeout", text, "an ISO-8601 duration such as PT15M")
    if seconds < MIN_RESIZE_TIMEOUT:
        raise invalid_value("resizeTimeout", text, "the minimum value is 5 minutes")
    return seconds


@dataclass(frozen=True, slots=True)
class RemoveNodes:
    node_ids: list[str]
    timeout: float
    option: str


def remove_nodes(body: bytes) -> RemoveNodes:
    document = json_object(body, required=True)
    _only(document, ("nodeList", "resizeTimeout", "nodeDeallocationOption"))
    ids = document.get("nodeList")
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        raise invalid_value("nodeList", ids, "a list of node ids is required")
    if not 1 <= len(ids) <= MAX_REMOVE:
        raise invalid_value("nodeList", len(ids), f"give 1 to {MAX_REMOVE} node ids")
    if len(set(ids)) != len(ids):
        raise invalid_value("nodeList", ids, "a node id is listed twice")
    return RemoveNodes(ids, _timeout(document), _option(document))


@dataclass(frozen=True, slots=True)
class Resize:
    dedicated: int | None
    low_priority: int | None
    timeout: float
    option: str


def resize(body: bytes) -> Resize:
    document = json_object(body, required=True)
    _only(
        document,
        (
            "targetDedicatedNodes",
            "targetLowPriorityNodes",
            "resizeTimeout",
            "nodeDeallocationOption",
        ),
    )
    targets: list[int | None] = []
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        value = document.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise invalid_value(name, value, "a whole number")
        if value is not None and not 0 <= value <= 100_000:
            raise invalid_value(name, value, "must be between 0 and 100000")
        targets.append(value)
    return Resize(targets[0], targets[1], _timeout(document), _option(document))


def pool_patch(body: bytes) -> list[tuple[str, str]] | None:
    """The new metadata (None when the patch leaves it alone)."""
    document = json_object(body, required=True)
    _only(document, sorted(PATCH_PROPERTIES))
    others = sorted(set(document) - {"metadata"})
    if others:
        raise invalid_value(
            others[0], "...", "the emulator patches metadata only; this property is not emulated"
        )
    if "metadata" not in document:
        return None
    items = document["metadata"]
    if not isinstance(items, list):
        raise invalid_value("metadata", items, "a list of {name, value} items")
    metadata = []
    for item in items:
        if (
            not isinstance(item, dict)
            or set(item) - {"name", "value"}
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("value"), str)
            or not item["name"]
        ):
            raise invalid_value("metadata", item, 'each item is {"name": text, "value": text}')
        metadata.append((item["name"], item["value"]))
    return metadata
