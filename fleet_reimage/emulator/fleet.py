"""Fleet files (YAML) to ``FleetSpec``, with every mistake reported at its line and column.

``parse_fleet(text, filename)`` validates a whole document and raises one ``InputError``
carrying every ``Problem`` found; ``load_fleet(path)`` reads the file first (blocking: call
it before starting an event loop, or through ``anyio.to_thread``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fleet_reimage.errors import InputError, Problem

from ..batch.sharedkey import decode_key
from ..yamlsafe import MarkedList, MarkedMap, load_marked_yaml
from .fleetcheck import Checker, join, type_name
from .spec import (
    CONFIGURATIONS,
    FAULT_KINDS,
    NODE_STATES,
    OPERATIONS,
    AccountSpec,
    FaultSpec,
    FaultsSpec,
    FleetSpec,
    Outcomes,
    PoolSpec,
    RateLimitSpec,
    Timings,
)

_TOP_KEYS = ("account", "seed", "pools", "timings", "outcomes", "faults", "rate_limit")
_ACCOUNT_KEYS = ("name", "key", "bearer_tokens")
_POOL_KEYS = (
    "id",
    "nodes",
    "configuration",
    "vm_size",
    "states",
    "running_tasks",
    "recently_booted",
)
_FAULT_KEYS = (*FAULT_KINDS, "delay", "latency", "jitter", "retry_after")
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{1,64}")
_POOL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")
MAX_NODES_PER_POOL = 1_000_000
_SUM_TOLERANCE = 1e-6


def load_fleet(path: str | Path) -> FleetSpec:
    """Read and validate a fleet file (blocking I/O)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            [Problem(str(path), None, None, "", f"cannot read the fleet file: {exc}")]
        ) from None
    return parse_fleet(text, str(path))


def parse_fleet(text: str, filename: str = "<fleet>") -> FleetSpec:
    """Validate a fleet document; InputError with every problem when it is not right."""
    root = load_marked_yaml(text, filename)
    check = Checker(filename)
    if not isinstance(root, MarkedMap):
        raise InputError(
            [Problem(filename, 1, 1, "", f"a fleet file is a mapping, got {type_name(root)}")]
        )
    check.known_keys(root, _TOP_KEYS, "")
    account = _account(check, root)
    seed = check.integer(root, "seed", "", 0, minimum=-(2**63), maximum=2**63 - 1)
    pools = _pools(check, root)
    timings = _timings(check, root)
    outcomes = _outcomes(check, root)
    faults = _faults(check, root, seed)
    rate_limit = _rate_limit(check, root)
    if check.problems or account is None:
        raise InputError(check.problems)
    return FleetSpec(
        account=account,
        pools=pools,
        seed=seed,
        timings=timings,
        outcomes=outcomes,
        faults=faults,
        rate_limit=rate_limit,
        source=filename,
    )


def _account(check: Checker, root: MarkedMap) -> AccountSpec | None:
    if not check.require(root, "account", ""):
        return None
    where = check.mapping(root, "account", "")
    if where is None:
        if root.get("account") is None:
            check.at_value(root, "account", "", "expected a mapping with name and key")
        return None
    check.known_keys(where, _ACCOUNT_KEYS, "account")
    name = key = ""
    if check.require(where, "name", "account"):
        name = check.string(where, "name", "account", "")
        if name and not _ACCOUNT_NAME.fullmatch(name):
            check.at_value(
                where, "name", "account", "an account name is lower-case letters and digits"
            )
    if check.require(where, "key", "account"):
        key = check.string(where, "key", "account", "")
        try:
            if key:
                decode_key(key)
        except ValueError as exc:  # the message never contains the key
            check.at_value(where, "key", "account", str(exc))
    tokens: list[str] = []
    items = check.sequence(where, "bearer_tokens", "account")
    for index, token in enumerate(items or ()):
        if not isinstance(token, str) or not token.strip():
            check.report(
                items.item_positions[index] if items else None,
                join("account.bearer_tokens", index),
                "expected a non-empty string",
            )
        else:
            tokens.append(token)
    return AccountSpec(name=name, key=key, bearer_tokens=tuple(tokens))


def _pools(check: Checker, root: MarkedMap) -> tuple[PoolSpec, ...]:
    if not check.require(root, "pools", ""):
        return ()
    items = check.sequence(root, "pools", "")
    if items is None:
        if root.get("pools") is None:
            check.at_value(root, "pools", "", "expected a list of pools")
        return ()
    if not items:
        check.at_value(root, "pools", "", "a fleet needs at least one pool")
    pools: list[PoolSpec] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        path = join("pools", index)
        if not isinstance(item, MarkedMap):
            check.report(
                items.item_positions[index],
                path,
                f"expected a mapping (a pool), got {type_name(item)}",
            )
            continue
        pool = _pool(check, item, path)
        if pool is None:
            continue
        if pool.id in seen:
            check.at_value(
                item, "id", path, f"duplicate pool id {pool.id!r} (first at pools[{seen[pool.id]}])"
            )
        seen.setdefault(pool.id, index)
        pools.append(pool)
    return tuple(pools)


def _pool(check: Checker, where: MarkedMap, path: str) -> PoolSpec | None:
    check.known_keys(where, _POOL_KEYS, path)
    pool_id = ""
    if check.require(where, "id", path):
        pool_id = check.string(where, "id", path, "")
        if pool_id and not _POOL_ID.fullmatch(pool_id):
            check.at_value(where, "id", path, "a pool id is 1-64 letters, digits, '-' or '_'")
    nodes = _nodes(check, where, path) if check.require(where, "nodes", path) else 0
    configuration = check.string(where, "configuration", path, CONFIGURATIONS[0])
    if configuration not in CONFIGURATIONS:
        check.at_value(
            where,
            "configuration",
            path,
            f"expected one of {', '.join(CONFIGURATIONS)}, got {configuration!r}",
        )
    vm_size = check.string(where, "vm_size", path, "standard_d2_v3")
    states = _states(check, where, path)
    running_tasks = check.integer(where, "running_tasks", path, 1, maximum=1000)
    recently_booted = check.share(where, "recently_booted", path)
    if not pool_id:
        return None
    return PoolSpec(
        id=pool_id,
        nodes=nodes,
        configuration=configuration,
        vm_size=vm_size,
        states=states,
        running_tasks=running_tasks,
        recently_booted=recently_booted,
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


def _timings(check: Checker, root: MarkedMap) -> Timings:
    where = check.mapping(root, "timings", "")
    if where is None:
        return Timings()
    defaults = Timings()
    names = ("reimaging", "rebooting", "starting", "waitingforstarttask")
    check.known_keys(where, names, "timings")
    values = {
        name: check.duration(where, name, "timings", getattr(defaults, name)) for name in names
    }
    return Timings(**values)


def _outcomes(check: Checker, root: MarkedMap) -> Outcomes:
    where = check.mapping(root, "outcomes", "")
    if where is None:
        return Outcomes()
    check.known_keys(where, ("starttaskfailed", "unusable"), "outcomes")
    outcomes = Outcomes(
        check.share(where, "starttaskfailed", "outcomes"),
        check.share(where, "unusable", "outcomes"),
    )
    if outcomes.starttaskfailed + outcomes.unusable > 1 + _SUM_TOLERANCE:
        check.at_value(root, "outcomes", "", "the outcome shares must sum to at most 1")
    return outcomes


def _faults(check: Checker, root: MarkedMap, fleet_seed: int) -> FaultsSpec:
    where = check.mapping(root, "faults", "")
    if where is None:
        return FaultsSpec(seed=fleet_seed)
    check.known_keys(where, ("seed", "all", *OPERATIONS), "faults")
    seed = check.integer(where, "seed", "faults", fleet_seed, minimum=-(2**63), maximum=2**63 - 1)
    fallback = _fault(check, where, "all")
    operations: dict[str, FaultSpec] = {}
    for operation in OPERATIONS:
        spec = _fault(check, where, operation) if operation in where else fallback
        if spec is not None:
            operations[operation] = spec
    return FaultsSpec(seed=seed, operations=operations)


def _fault(check: Checker, faults: MarkedMap, operation: str) -> FaultSpec | None:
    where = check.mapping(faults, operation, "faults")
    if where is None:
        return None
    path = join("faults", operation)
    check.known_keys(where, _FAULT_KEYS, path)
    defaults = FaultSpec()
    shares = {kind: check.share(where, kind, path) for kind in FAULT_KINDS}
    if sum(shares.values()) > 1 + _SUM_TOLERANCE:
        check.at_value(faults, operation, "faults", "the fault shares must sum to at most 1")
    times = {
        name: check.duration(where, name, path, getattr(defaults, name))
        for name in ("delay", "latency", "jitter", "retry_after")
    }
    return FaultSpec(**shares, **times)


def _rate_limit(check: Checker, root: MarkedMap) -> RateLimitSpec | None:
    where = check.mapping(root, "rate_limit", "")
    if where is None:
        return None
    check.known_keys(where, ("requests_per_second", "burst"), "rate_limit")
    if not check.require(where, "requests_per_second", "rate_limit"):
        return None
    rps = check.number(where, "requests_per_second", "rate_limit", 1.0, positive=True)
    burst = check.integer(where, "burst", "rate_limit", max(1, int(rps / 10)), minimum=1)
    return RateLimitSpec(requests_per_second=rps, burst=burst)
