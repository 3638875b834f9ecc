"""Fleet files (YAML) to ``FleetSpec``, with every mistake reported at its line and column.

``parse_fleet(text, filename)`` validates a whole document and raises one ``InputError``
carrying every ``Problem`` found; ``load_fleet(path)`` reads the file first (blocking: call
it before starting an event loop, or through ``anyio.to_thread``).
"""

from __future__ import annotations

import re
from pathlib import Path

from fleet_reimage.errors import InputError, Problem

from ..yamlsafe import MarkedMap, load_marked_yaml
from .auth import account_key
from .fleetcheck import Checker, join, type_name
from .fleetpools import read_pool
from .spec import (
    FAULT_KINDS,
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
_FAULT_KEYS = (*FAULT_KINDS, "delay", "latency", "jitter", "retry_after")
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{1,64}")
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
                account_key(key)
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
        pool = read_pool(check, item, path)
        if pool is None:
            continue
        if pool.id in seen:
            check.at_value(
                item, "id", path, f"duplicate pool id {pool.id!r} (first at pools[{seen[pool.id]}])"
            )
        seen.setdefault(pool.id, index)
        pools.append(pool)
    return tuple(pools)


def _timings(check: Checker, root: MarkedMap) -> Timings:
    where = check.mapping(root, "timings", "")
    if where is None:
        return Timings()
    defaults = Timings()
    names = tuple(Timings.__dataclass_fields__)
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
