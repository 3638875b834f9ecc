"""The validated plan: what to do to which nodes, how fast, and how carefully.

Every object is frozen: a ``Plan`` is built once by ``parse_plan`` and then only read.
Durations are seconds (float); times are timezone-aware UTC ``datetime``; paths are absolute.
Node states are the strings the Batch REST API uses (``batch.models.NODE_STATES``).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from fractions import Fraction
from pathlib import Path

from fleet_reimage.batch.versions import DEFAULT_API_VERSION
from fleet_reimage.errors import Problem
from fleet_reimage.units import Amount

from .drain import DrainSpec, NotifySpec
from .gates import GateSpec

# Defaults, named so the docs, the loader and the tests agree.
DEFAULT_STATES: frozenset[str] = frozenset({"idle", "running"})
NO_SURGE = Amount(Fraction(0), percent=False)  # rollout.surge's default


class Action(StrEnum):
    REIMAGE = "reimage"
    REBOOT = "reboot"
    REPLACE = "replace"  # remove nodes and resize back: fresh nodes from the pool's image


class NodeOption(StrEnum):
    """What happens to tasks running on the node (``nodeReimageOption``/``nodeRebootOption``;
    for ``replace``, ``nodeDeallocationOption``: the same four values)."""

    REQUEUE = "requeue"
    TERMINATE = "terminate"
    TASKCOMPLETION = "taskcompletion"
    RETAINEDDATA = "retaineddata"


@dataclass(frozen=True, slots=True)
class SharedKeyAuth:
    """Shared Key: the key is read at run time from ``key_env`` or ``key_file`` (one is set)."""

    account: str
    key_env: str | None
    key_file: Path | None  # absolute (resolved against the plan's folder)


@dataclass(frozen=True, slots=True)
class EntraAuth:
    """Microsoft Entra ID; ``authority``/``audience`` override what the endpoint implies."""

    credential: str  # default | azure-cli | managed-identity | environment | workload-identity
    client_id: str | None
    tenant_id: str | None
    authority: str | None
    audience: str | None


AuthSpec = SharedKeyAuth | EntraAuth


@functools.cache
def _matches_any(globs: tuple[str, ...]) -> Callable[[str], bool]:
    """Does a text match any of ``globs`` (as ``fnmatchcase``)? One compiled pattern, made
    once per glob list: resolution checks every node of the fleet against these."""
    if "*" in globs:
        return lambda _: True
    if not globs:
        return lambda _: False
    match = re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs)).match
    return lambda text: match(text) is not None


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """Which nodes of a matched pool are eligible."""

    include: tuple[str, ...]  # globs on node ids; a node must match one
    exclude: tuple[str, ...]  # globs on node ids; a node matching one is skipped
    states: frozenset[str]  # eligible current states
    booted_before: datetime | None  # nodes with lastBootTime at/after this are skipped
    skip_booted_within: float | None = None  # seconds: nodes booted that recently are skipped

    def matches_id(self, node_id: str) -> bool:
        """The node id is included and not excluded (globs are case-sensitive)."""
        return _matches_any(self.include)(node_id) and not _matches_any(self.exclude)(node_id)

    def skip_reason(self, node_id: str, state: str, last_boot_time: datetime | None) -> str | None:
        """Why this node is not selected, or None when it is.

        A node with no ``lastBootTime`` is not skipped by ``booted_before``: it has not
        booted since anything, so it cannot have been patched already.
        """
        if not self.matches_id(node_id):
            return "node id not selected by include/exclude"
        if state not in self.states:
            return f"state {state} is not one of {', '.join(sorted(self.states))}"
        if (
            self.booted_before is not None
            and last_boot_time is not None
            and last_boot_time >= self.booted_before
        ):
            when, limit = last_boot_time.isoformat(), self.booted_before.isoformat()
            return f"booted at {when}, not before {limit}"
        return None


@dataclass(frozen=True, slots=True)
class PoolSelector:
    match: str  # a pool id or a glob
    nodes: NodeSelector
    line: int  # line of the entry in the plan, for "pattern matched nothing" warnings

    def matches(self, pool_id: str) -> bool:
        return fnmatch.fnmatchcase(pool_id, self.match)


@dataclass(frozen=True, slots=True)
class AccountSpec:
    name: str
    endpoint: str | None  # normalised: no trailing slash; exactly one of endpoint / emulator
    emulator: Path | None  # absolute path of an emulator fleet file
    auth: AuthSpec | None  # None only for an emulator account
    pools: tuple[PoolSelector, ...]
    custom_cloud: bool = False  # Entra hosts outside the known clouds (the plan says so)

    def selector_for(self, pool_id: str) -> PoolSelector | None:
        """The first entry (in plan order) whose ``match`` matches the pool id."""
        return next((p for p in self.pools if p.matches(pool_id)), None)


@dataclass(frozen=True, slots=True)
class HealthSpec:
    wait: bool
    ready_states: frozenset[str]
    timeout: float  # seconds
    poll_interval: float  # seconds


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    waves: tuple[Amount, ...]  # cumulative ladder, ends with 100% (appended when missing)
    max_unavailable: Amount
    pause_between_waves: float
    health: HealthSpec
    failure_budget: Amount
    deadline: datetime | None
    confirm_after_wave: int | None  # 1-based index into ``waves``
    # A node that failed after the action (back broken, or not in time) keeps holding its
    # room in max_unavailable while it is down (its capacity is down); False frees it.
    failed_holds_availability: bool = True
    # Claim each pool in its metadata before the first request, against other runs
    # (other journals, other machines): ``engine/poolclaim.py``.
    claim_pools: bool = False
    # action: replace only (``rollout/replace.py``): capacity added before old nodes leave,
    # and whether an auto-scaled pool may be replaced (its formula brings capacity back).
    surge: Amount = NO_SURGE
    autoscale: str = "refuse"  # refuse | allow
    # Drain a node that runs tasks before its action (``plan/drain.py``); None: no drain.
    drain: DrainSpec | None = None
    # Commands asked before each wave / after the run, and how long a wave's nodes must
    # stay healthy before the pool's next wave (``plan/gates.py``, ``engine/gates.py``).
    gates: tuple[GateSpec, ...] = ()
    soak: float = 0.0  # seconds


@dataclass(frozen=True, slots=True)
class RetrySpec:
    max_attempts: int
    initial_backoff: float
    max_backoff: float
    busy_timeout: float


@dataclass(frozen=True, slots=True)
class ExecutionSpec:
    concurrency: int
    per_account_concurrency: int
    request_timeout: float
    retry: RetrySpec
    api_version: str = DEFAULT_API_VERSION


@dataclass(frozen=True, slots=True)
class PlanSource:
    path: Path  # absolute
    text: str
    sha256: str  # hex digest of the text as UTF-8


@dataclass(frozen=True, slots=True)
class Plan:
    version: int
    name: str
    action: Action
    option: NodeOption
    accounts: tuple[AccountSpec, ...]
    rollout: RolloutSpec
    execution: ExecutionSpec
    source: PlanSource
    warnings: tuple[Problem, ...]
    notify: tuple[NotifySpec, ...] = ()  # webhooks, by environment variable (``plan/drain.py``)
