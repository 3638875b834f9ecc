"""Validating ``accounts``: names, where each account is (endpoint or emulator), and the pools
and nodes it selects.

An ``endpoint`` must be ``https://``: Shared Key signatures and Entra tokens authenticate
every request, and over plain http they (and the requests) would cross the network in the
clear. Plain ``http://`` is accepted only for a loopback host, where a local emulator or
proxy listens.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from fleet_reimage.yamlsafe import MarkedMap

from ..batch.models import NODE_STATES
from .auth import read_auth, read_file_path
from .clouds import check_entra, read_custom_cloud
from .model import (
    DEFAULT_STATES,
    AccountSpec,
    EntraAuth,
    NodeSelector,
    PoolSelector,
)
from .reader import Checker, Node, did_you_mean, shown

ACCOUNT_KEYS = ("name", "endpoint", "emulator", "auth", "pools", "custom_cloud")
POOL_KEYS = ("match", "nodes")
NODE_KEYS = ("include", "exclude", "states", "booted_before", "skip_booted_within")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
_GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!-]+")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*\.?")
# States in which Batch refuses a reimage or reboot (the node is busy changing already,
# or is not there): selecting them only produces skipped nodes.
_TRANSITIONAL = frozenset({
    "creating", "starting", "rebooting", "reimaging", "leavingpool", "deallocating",
    "deallocated", "preempted", "upgradingos",
})  # fmt: skip
_HTTPS_EXAMPLE = "https://myaccount.westus2.batch.azure.com"


def read_name(checker: Checker, at: Node, what: str) -> str | None:
    name = checker.text(at, f"an {what}" if what[0] in "aeiou" else f"a {what}")
    if name is not None and not NAME.fullmatch(name):
        checker.error(at, f"{shown(name)} is not a valid {what}: {NAME_RULE}")
        return None
    return name


def read_accounts(
    checker: Checker, at: Node, plan_dir: Path, environ: Mapping[str, str] | None
) -> tuple[AccountSpec, ...] | None:
    items = checker.sequence(at, "accounts", "account")
    if items is None:
        return None
    errors = checker.error_count
    seen: dict[str, int | None] = {}  # name (ignoring case) -> line of first use
    accounts: list[AccountSpec] = []
    for item in items:
        account = read_account(checker, item, plan_dir, environ)
        raw = item.value.get("name") if isinstance(item.value, MarkedMap) else None
        if isinstance(raw, str):
            name_at = Node(raw, f"{item.path}.name", *item.value.value_positions["name"])
            if raw.casefold() in seen:
                checker.error(
                    name_at,
                    f"account name {shown(raw)} is already used at line "
                    f"{seen[raw.casefold()]}; account names must be unique "
                    "(ignoring case)",
                )
            seen.setdefault(raw.casefold(), name_at.line)
        if account is not None:
            accounts.append(account)
    return tuple(accounts) if checker.error_count == errors else None


def read_account(
    checker: Checker, at: Node, plan_dir: Path, environ: Mapping[str, str] | None
) -> AccountSpec | None:
    fields = checker.mapping(at, ACCOUNT_KEYS, required=("name", "pools"))
    if fields is None:
        return None
    errors = checker.error_count
    name = read_name(checker, fields["name"], "account name") if "name" in fields else None
    endpoint = emulator = auth = None
    where = [k for k in ("endpoint", "emulator") if k in fields]
    if len(where) != 1:
        what = "both are given" if where else "neither is given"
        checker.error(
            at,
            f"give exactly one of endpoint (an {_HTTPS_EXAMPLE} URL) or emulator "
            f"(a local emulator fleet file); {what}",
        )
    if "endpoint" in fields:
        endpoint = read_endpoint(checker, fields["endpoint"])
    if "emulator" in fields:
        emulator = read_file_path(checker, fields["emulator"], plan_dir, "the emulator fleet file")
    if "auth" in fields:
        auth = read_auth(checker, fields["auth"], plan_dir, environ)
    elif "endpoint" in fields:
        checker.error(
            at,
            "missing required key 'auth' (an endpoint account needs "
            "{type: shared-key, ...} or {type: entra, ...})",
        )
    custom_cloud = read_custom_cloud(checker, fields.get("custom_cloud"))
    if isinstance(auth, EntraAuth):
        custom_at = fields["custom_cloud"] if custom_cloud else None
        auth = check_entra(
            checker, fields["auth"], auth, fields.get("endpoint"), endpoint, custom_at
        )
    elif custom_cloud:
        checker.warning(
            fields["custom_cloud"],
            "custom_cloud only changes which hosts Entra auth may use; this account does not "
            "use Entra",
        )
    pools = read_pools(checker, fields["pools"]) if "pools" in fields else None
    if checker.error_count > errors or name is None or pools is None:
        return None
    return AccountSpec(
        name=name,
        endpoint=endpoint,
        emulator=emulator,
        auth=auth,
        pools=pools,
        custom_cloud=custom_cloud,
    )


def read_endpoint(checker: Checker, at: Node) -> str | None:
    """The endpoint normalised (lowercase scheme and host, no trailing slash).

    Messages do not echo the URL: it could carry a password or a SAS token.
    """
    text = checker.text(at, f"an https:// URL such as {_HTTPS_EXAMPLE}")
    if text is None:
        return None
    problem = _endpoint_problem(text)
    if problem:
        checker.error(at, problem)
        return None
    parts = urlsplit(text)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _endpoint_problem(text: str) -> str | None:
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        return "the endpoint URL must not be empty or contain spaces"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        _ = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        return f"not a valid URL; expected an https:// URL such as {_HTTPS_EXAMPLE}"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        return f"expected an absolute https:// URL such as {_HTTPS_EXAMPLE}"
    if "@" in parts.netloc:
        return "the endpoint must not contain a user name or password; use auth"
    if "?" in text or "#" in text:
        return "the endpoint must not have a query (?...) or fragment (#...)"
    if not host or not (_is_ip(host) or _HOST.fullmatch(host)):
        return f"the endpoint has no valid host name; expected a URL such as {_HTTPS_EXAMPLE}"
    if scheme == "http" and not is_loopback(host):
        return (
            "plain http:// is allowed only for a loopback host (127.0.0.0/8, ::1, "
            "localhost): over http the Shared Key signature or Entra token would cross the "
            "network unencrypted; use https://"
        )
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_pools(checker: Checker, at: Node) -> tuple[PoolSelector, ...] | None:
    items = checker.sequence(at, "pool entries", "pool entry")
    if items is None:
        return None
    errors = checker.error_count
    seen: dict[str, int | None] = {}
    pools: list[PoolSelector] = []
    for item in items:
        pool = read_pool(checker, item)
        if pool is None:
            continue
        if pool.match in seen:
            checker.error(
                item,
                f"pool match {shown(pool.match)} is already listed at line "
                f"{seen[pool.match]}; merge the two entries",
            )
        seen.setdefault(pool.match, pool.line)
        pools.append(pool)
    return tuple(pools) if checker.error_count == errors else None


def read_pool(checker: Checker, at: Node) -> PoolSelector | None:
    if isinstance(at.value, str):
        checker.error(at, f"a pool entry is a mapping; write: - match: {at.value[:64]}")
        return None
    fields = checker.mapping(at, POOL_KEYS, required=("match",))
    if fields is None or "match" not in fields:
        return None
    match = read_glob(checker, fields["match"], "pool id or glob")
    nodes = read_nodes(checker, fields.get("nodes"))
    if match is None or nodes is None:
        return None
    return PoolSelector(match=match, nodes=nodes, line=at.line or 1)


def read_glob(checker: Checker, at: Node, what: str) -> str | None:
    text = checker.text(at, f"a {what}")
    if text is not None and not _GLOB.fullmatch(text):
        checker.error(
            at,
            f"{shown(text)} is not a {what}: letters, digits, '-' and '_', with "
            "the glob characters * ? [ ] !",
        )
        return None
    return text


def read_nodes(checker: Checker, at: Node | None) -> NodeSelector | None:
    if at is None:
        return NodeSelector(include=("*",), exclude=(), states=DEFAULT_STATES, booted_before=None)
    fields = checker.mapping(at, NODE_KEYS, defaults=True)
    if fields is None:
        return None
    errors = checker.error_count
    include = _read_globs(checker, fields.get("include"), non_empty=True) or ("*",)
    exclude = _read_globs(checker, fields.get("exclude"), non_empty=False) or ()
    if "*" in exclude and "exclude" in fields:
        checker.error(fields["exclude"], "exclude '*' leaves no node selected")
    states = DEFAULT_STATES
    if "states" in fields:
        states = read_states(checker, fields["states"]) or states
        for state in sorted(states & _TRANSITIONAL):
            checker.warning(
                fields["states"],
                f"nodes that are {state} cannot be reimaged or "
                "rebooted; Batch refuses the request and they will be skipped",
            )
    booted_before = None
    if "booted_before" in fields:
        booted_before = checker.timestamp(fields["booted_before"])
    within = None
    if "skip_booted_within" in fields:  # see plan/booted.py
        within = checker.duration(fields["skip_booted_within"], high=30 * 86400.0, positive=True)
    if checker.error_count > errors:
        return None
    return NodeSelector(
        include=include,
        exclude=exclude,
        states=states,
        booted_before=booted_before,
        skip_booted_within=within,
    )


def _read_globs(checker: Checker, at: Node | None, *, non_empty: bool) -> tuple[str, ...] | None:
    if at is None:
        return None
    items = checker.sequence(at, "node id globs", "node id glob", non_empty=non_empty)
    if items is None:
        return None
    globs = [read_glob(checker, item, "node id or glob") for item in items]
    return tuple(g for g in globs if g is not None)


def read_states(checker: Checker, at: Node) -> frozenset[str] | None:
    """A non-empty list of node states (the 16 Batch states, lowercase)."""
    items = checker.sequence(at, "node states", "node state")
    if items is None:
        return None
    states: set[str] = set()
    allowed = sorted(NODE_STATES)
    for item in items:
        state = checker.text(item, "a node state")
        if state is None:
            continue
        if state not in NODE_STATES:
            checker.error(
                item,
                f"unknown node state {shown(state)}."
                f"{did_you_mean(state, allowed)} Allowed: {', '.join(allowed)}",
            )
        elif state in states:
            checker.warning(item, f"state {state} is listed twice")
        states.add(state)
    return frozenset(states) if states <= NODE_STATES and states else None
