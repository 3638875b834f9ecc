"""One ``pools[]`` entry of a fleet file, validated into a ``PoolSpec``.

Every pool is a ``virtualMachineConfiguration`` pool (api-version 2024-07-01.20.0 has no
other kind): the old ``configuration`` key is refused with what to write instead, since a
silent change of meaning would make a rehearsal lie.
"""

from __future__ import annotations

import re

from ..units import UnitError, parse_duration
from ..yamlsafe import MarkedList, MarkedMap
from .fleetcheck import Checker, join, type_name
from .spec import (
    NODE_STATES,
    REIMAGE_POLICIES,
    AutoScaleSpec,
    CoreQuota,
    PoolSpec,
    TaskDuration,
)

POOL_KEYS = (
    "id",
    "nodes",
    "vm_size",
    "states",
    "running_tasks",
    "task_duration",
    "recently_booted",
    "reimage",
    "auto_scale",
    "cores_per_node",
    "core_quota",
    "metadata",
)
_POOL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
MAX_NODES_PER_POOL = 1_000_000
_SUM_TOLERANCE = 1e-6
_RETIRED_CONFIGURATION = {
    "cloudServiceConfiguration": (
        "cloud-service pools do not exist in api-version 2024-07-01.20.0 (every pool is a "
        "virtualMachineConfiguration pool): remove this key; the pool accepts reimage "
        "(reimage: accepted, the default), or write 'reimage: refused' to rehearse a pool "
        "on which the service refuses it"
    ),
    "virtualMachineConfiguration": (
        "remove this key: every pool is a virtualMachineConfiguration pool now, and it "
        "accepts reimage by default; such a pool used to refuse reimage here (409 "
        "OperationNotValidOnNode): to keep that, write 'reimage: refused'"
    ),
}


def read_pool(check: Checker, where: MarkedMap, path: str) -> PoolSpec | None:
    check.known_keys(where, (*POOL_KEYS, "configuration"), path)
    if "configuration" in where:
        _retired_configuration(check, where, path)
    pool_id = ""
    if check.require(where, "id", path):
        pool_id = check.string(where, "id", path, "")
        if pool_id and not _POOL_ID.fullmatch(pool_id):
            check.at_value(where, "id", path, "a pool id is 1-64 letters, digits, '-' or '_'")
    nodes = _nodes(check, where, path) if check.require(where, "nodes", path) else 0
    reimage = check.string(where, "reimage", path, "accepted")
    if reimage not in REIMAGE_POLICIES:
        check.at_value(where, "reimage", path, f"expected accepted or refused, got {reimage!r}")
    cores = check.integer(where, "cores_per_node", path, 2, minimum=1, maximum=1024)
    spec = PoolSpec(
        id=pool_id,
        nodes=nodes,
        vm_size=check.string(where, "vm_size", path, "standard_d2_v3"),
        states=_states(check, where, path),
        running_tasks=check.integer(where, "running_tasks", path, 1, maximum=1000),
        task_duration=_task_duration(check, where, path),
        recently_booted=check.share(where, "recently_booted", path),
        reimage=reimage,
        auto_scale=_auto_scale(check, where, path),
        cores_per_node=cores,
        core_quota=_core_quota(check, where, path),
        metadata=_metadata(check, where, path),
    )
    return spec if pool_id else None


def _retired_configuration(check: Checker, where: MarkedMap, path: str) -> None:
    value = where["configuration"]
    message = _RETIRED_CONFIGURATION.get(value) if isinstance(value, str) else None
    check.at_value(
        where,
        "configuration",
        path,
        message
        or "remove this key: every pool is a virtualMachineConfiguration pool (write "
        "'reimage: refused' for a pool that refuses reimage)",
    )


def _nodes(check: Checker, where: MarkedMap, path: str) -> int | tuple[str, ...]:
    value = where["nodes"]
    if not isinstance(value, MarkedList):
        return check.integer(where, "nodes", path, 0, maximum=MAX_NODES_PER_POOL)
    ids: list[str] = []
    seen: set[str] = set()
    for index, node_id in enumerate(value):
        item_path = join(join(path, "nodes"), index)
        position = value.item_positions[index]
        if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
            check.report(
                position, item_path, "a node id is a string of letters, digits, '-', '_' or '.'"
            )
        elif node_id in seen:
            check.report(position, item_path, f"duplicate node id {node_id!r}")
        else:
            seen.add(node_id)
            ids.append(node_id)
    return tuple(ids)


def _states(check: Checker, where: MarkedMap, path: str) -> dict[str, float]:
    mix = check.mapping(where, "states", path)
    if mix is None:
        return {"idle": 1.0}
    states_path = join(path, "states")
    check.known_keys(mix, NODE_STATES, states_path, noun="state")
    shares = {state: check.share(mix, state, states_path) for state in mix if state in NODE_STATES}
    total = sum(shares.values())
    if shares and len(shares) == len(mix) and abs(total - 1.0) > _SUM_TOLERANCE:
        check.at_value(where, "states", path, f"the shares must sum to 1, they sum to {total:g}")
    return shares or {"idle": 1.0}


def _task_duration(check: Checker, where: MarkedMap, path: str) -> TaskDuration:
    """``task_duration: 5m`` (fixed), ``{min: 1m, max: 10m}`` (uniform) or ``{mean: 5m}``
    (exponential): how long each running task still runs."""
    default = TaskDuration()
    if "task_duration" not in where:
        return default
    value = where["task_duration"]
    if not isinstance(value, MarkedMap):
        try:
            seconds = parse_duration(value)
        except UnitError as exc:
            check.at_value(where, "task_duration", path, f"{exc} (or a mapping: min/max, mean)")
            return default
        return TaskDuration("fixed", seconds, seconds)
    here = join(path, "task_duration")
    check.known_keys(value, ("min", "max", "mean"), here)
    if "mean" in value:
        if "min" in value or "max" in value:
            check.at_value(where, "task_duration", path, "give either min and max, or mean")
        mean = check.duration(value, "mean", here, 600.0)
        return TaskDuration("exponential", mean, mean)
    low = check.duration(value, "min", here, default.low)
    high = check.duration(value, "max", here, max(low, default.high))
    if high < low:
        check.at_value(value, "max", here, "max must be at least min")
    return TaskDuration("uniform", low, max(low, high))


def _auto_scale(check: Checker, where: MarkedMap, path: str) -> AutoScaleSpec | None:
    """``auto_scale: {target_dedicated: N, target_low_priority: M, interval: 5m}``: every
    interval the pool's targets are set back to N and M (and the pool resized to them)."""
    value = check.mapping(where, "auto_scale", path)
    if value is None:
        return None
    here = join(path, "auto_scale")
    check.known_keys(value, ("target_dedicated", "target_low_priority", "interval"), here)
    check.require(value, "target_dedicated", here)
    interval = check.duration(value, "interval", here, 300.0)
    if interval <= 0:
        check.at_value(value, "interval", here, "the evaluation interval must be above 0s")
        interval = 300.0
    return AutoScaleSpec(
        target_dedicated=check.integer(value, "target_dedicated", here, 0, maximum=100_000),
        target_low_priority=check.integer(value, "target_low_priority", here, 0, maximum=100_000),
        interval=interval,
    )


def _core_quota(check: Checker, where: MarkedMap, path: str) -> CoreQuota:
    """``core_quota: {dedicated: 40, low_priority: 100}``: cores the pool may use."""
    value = check.mapping(where, "core_quota", path)
    if value is None:
        return CoreQuota()
    here = join(path, "core_quota")
    check.known_keys(value, ("dedicated", "low_priority"), here)
    limits = [
        check.integer(value, key, here, 0, maximum=10_000_000) if key in value else None
        for key in ("dedicated", "low_priority")
    ]
    return CoreQuota(limits[0], limits[1])


def _metadata(check: Checker, where: MarkedMap, path: str) -> tuple[tuple[str, str], ...]:
    """``metadata: {name: value, ...}``: the pool's initial metadata."""
    value = check.mapping(where, "metadata", path)
    if value is None:
        return ()
    items = []
    for name in value:
        item = value[name]
        if not isinstance(item, str):
            check.at_value(
                value, name, join(path, "metadata"), f"expected a string, got {type_name(item)}"
            )
            continue
        items.append((str(name), item))
    return tuple(items)
