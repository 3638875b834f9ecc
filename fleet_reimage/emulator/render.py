"""Resources and errors as the service writes them (shapes copied from recorded traffic).

``base`` is ``scheme://host[:port]`` of the request being answered, so every URL in a body
(``url``, ``odata.metadata``, ``odata.nextLink``) points back at whoever was asked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .pools import auto_scale_formula, auto_scale_results
from .resources import Node, Pool
from .timefmt import TICKS_PER_SECOND, iso, iso7, iso_duration

JSON_CONTENT_TYPE = "application/json; odata=minimalmetadata"
_ERROR_METADATA = "/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_VIRTUAL_MACHINE = {
    "imageReference": {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-focal",
        "sku": "20_04-lts",
        "version": "latest",
    },
    "nodeAgentSKUId": "batch.node.ubuntu 20.04",
}
_VM_INFO = {
    "imageReference": {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-focal",
        "sku": "20_04-lts",
        "version": "latest",
        "exactVersion": "20.04.202406140",
    }
}
_START_TASK = {
    "commandLine": "/bin/bash -c 'echo start task'",
    "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    "maxTaskRetryCount": 0,
    "waitForSuccess": True,
}
_START_FAILURE = {
    "category": "usererror",
    "code": "FailureExitCode",
    "message": "The task exited with an exit code representing a failure",
}
_AGENT_VERSION = "1.11.0"


def dumps(value: Any) -> bytes:
    """Compact JSON bytes, as the service sends them."""
    return _dumps(value).encode("utf-8")


def _start_task_info(node: Node) -> dict[str, Any] | None:
    boot = node.last_boot_ticks
    if boot is None or node.state == "starting":
        return None
    started = iso(boot + TICKS_PER_SECOND)
    if node.state == "waitingforstarttask":
        return {"state": "running", "startTime": started, "retryCount": 0}
    ended = iso(max(node.transition_ticks, boot + TICKS_PER_SECOND))
    if node.state == "starttaskfailed":
        return {
            "state": "completed",
            "startTime": started,
            "endTime": ended,
            "exitCode": 1,
            "failureInfo": _START_FAILURE,
            "retryCount": 0,
            "result": "failure",
        }
    return {
        "state": "completed",
        "startTime": started,
        "endTime": ended,
        "exitCode": 0,
        "retryCount": 0,
        "result": "success",
    }


def _boot(node: Node) -> str | None:
    return iso(node.last_boot_ticks) if node.last_boot_ticks is not None else None


def _agent(node: Node) -> dict[str, str] | None:
    if node.last_boot_ticks is None:
        return None
    return {"version": _AGENT_VERSION, "lastUpdateTime": iso(node.last_boot_ticks)}


# Property name -> value (None: the node does not have it), in the service's order. One
# table serves full bodies and $select, which then computes only what was asked for.
_NODE_PROPERTIES: tuple[tuple[str, Callable[[Node, str], Any]], ...] = (
    ("id", lambda node, base: node.id),
    ("url", lambda node, base: f"{base}/pools/{node.pool.id}/nodes/{node.id}"),
    ("state", lambda node, base: node.state),
    ("schedulingState", lambda node, base: node.scheduling_state),
    ("stateTransitionTime", lambda node, base: iso(node.transition_ticks)),
    ("lastBootTime", lambda node, base: _boot(node)),
    ("allocationTime", lambda node, base: iso(node.allocation_ticks)),
    ("ipAddress", lambda node, base: node.ip_address),
    ("affinityId", lambda node, base: f"TVM:{node.id}"),
    ("vmSize", lambda node, base: node.pool.vm_size),
    ("totalTasksRun", lambda node, base: node.total_tasks_run),
    ("totalTasksSucceeded", lambda node, base: node.total_tasks_succeeded),
    ("runningTasksCount", lambda node, base: node.running_tasks),
    ("runningTaskSlotsCount", lambda node, base: node.running_tasks),
    ("isDedicated", lambda node, base: node.is_dedicated),
    ("startTask", lambda node, base: _START_TASK),
    ("startTaskInfo", lambda node, base: _start_task_info(node)),
    ("nodeAgentInfo", lambda node, base: _agent(node)),
    ("virtualMachineInfo", lambda node, base: _VM_INFO),
)
NodeRenderer = Callable[[Node, str], dict[str, Any]]


def node_renderer(names: tuple[str, ...] | None = None) -> NodeRenderer:
    """A function giving a node's body with every property, or only ``names`` ($select)."""
    chosen = [(key, value) for key, value in _NODE_PROPERTIES if names is None or key in names]

    def render(node: Node, base: str) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for key, value in chosen:
            item = value(node, base)
            if item is not None:
                body[key] = item
        return body

    return render


node_json: NodeRenderer = node_renderer()
"""A node the way GET .../nodes/{id} shows it (without ``odata.metadata``)."""


def pool_json(pool: Pool, base: str) -> dict[str, Any]:
    """A pool the way GET /pools/{id} shows it (without ``odata.metadata``)."""
    created = iso(pool.creation_ticks)
    dedicated, low_priority = pool.counts()
    body: dict[str, Any] = {
        "id": pool.id,
        "url": f"{base}/pools/{pool.id}",
        "eTag": pool.etag,
        "lastModified": iso(pool.modified_ticks),
        "creationTime": created,
        "state": "active",
        "stateTransitionTime": created,
        "allocationState": pool.allocation_state,
        "allocationStateTransitionTime": iso(pool.allocation_ticks),
        "vmSize": pool.vm_size,
        "virtualMachineConfiguration": _VIRTUAL_MACHINE,
        "resizeTimeout": iso_duration(pool.resize_timeout),
    }
    if pool.resize_errors:
        body["resizeErrors"] = [_resize_error(error) for error in pool.resize_errors]
    body.update(
        {
            "currentDedicatedNodes": dedicated,
            "currentLowPriorityNodes": low_priority,
            "targetDedicatedNodes": pool.target_dedicated,
            "targetLowPriorityNodes": pool.target_low_priority,
            "enableAutoScale": pool.spec.auto_scale is not None,
        }
    )
    auto_scale = pool.spec.auto_scale
    if auto_scale is not None:
        body["autoScaleFormula"] = auto_scale_formula(pool)
        body["autoScaleEvaluationInterval"] = iso_duration(auto_scale.interval)
        if pool.auto_scale_ticks is not None:
            body["autoScaleRun"] = {
                "timestamp": iso(pool.auto_scale_ticks),
                "results": auto_scale_results(pool),
            }
    body.update(
        {
            "enableInterNodeCommunication": False,
            "startTask": _START_TASK,
            "taskSlotsPerNode": 1,
            "taskSchedulingPolicy": {"nodeFillType": "spread"},
        }
    )
    if pool.metadata:
        body["metadata"] = [{"name": name, "value": value} for name, value in pool.metadata]
    return body


def _resize_error(error: tuple[str, str, tuple[tuple[str, str], ...]]) -> dict[str, Any]:
    code, message, values = error
    item: dict[str, Any] = {"code": code, "message": message}
    if values:
        item["values"] = [{"name": name, "value": value} for name, value in values]
    return item


def error_json(
    base: str,
    code: str,
    message: str,
    request_id: str,
    now_ticks: int,
    values: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """The BatchError body: message text, then the request id and time, as the service does."""
    body: dict[str, Any] = {
        "odata.metadata": base + _ERROR_METADATA,
        "code": code,
        "message": {
            "lang": "en-US",
            "value": f"{message}\nRequestId:{request_id}\nTime:{iso7(now_ticks)}",
        },
    }
    if values:
        body["values"] = [{"key": key, "value": value} for key, value in values]
    return body
