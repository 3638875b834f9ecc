"""Validating ``rollout`` (how fast and how carefully) and ``execution`` (how many requests).

Every key is optional; a missing one takes its ``DEFAULT_*`` value below, which the
documentation (README.md, "Plan format") repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from fractions import Fraction

from fleet_reimage.units import Amount

from ..batch.versions import API_VERSIONS, DEFAULT_API_VERSION
from .accounts import read_states
from .drain import DrainSpec, read_drain
from .gates import GateSpec, read_gates, read_soak
from .model import DEFAULT_STATES, NO_SURGE, ExecutionSpec, HealthSpec, RetrySpec, RolloutSpec
from .reader import Checker, Node
from .waves import is_all, normalise_ladder

ROLLOUT_KEYS = (
    "waves",
    "max_unavailable",
    "pause_between_waves",
    "health",
    "failure_budget",
    "deadline",
    "confirm_after_wave",
    "failed_holds_availability",
    "claim_pools",
    "surge",
    "autoscale",
    "drain",
    "gates",
    "soak",
)
HEALTH_KEYS = ("wait", "ready_states", "timeout", "poll_interval")
EXECUTION_KEYS = (
    "concurrency",
    "per_account_concurrency",
    "request_timeout",
    "api_version",
    "retry",
)
RETRY_KEYS = ("max_attempts", "initial_backoff", "max_backoff", "busy_timeout")

DEFAULT_MAX_UNAVAILABLE = Amount(Fraction(10), percent=True)
DEFAULT_FAILURE_BUDGET = Amount(Fraction(5), percent=True)
AUTOSCALE_CHOICES = ("refuse", "allow")
DEFAULT_HEALTH = HealthSpec(
    wait=True, ready_states=DEFAULT_STATES, timeout=1200.0, poll_interval=15.0
)
DEFAULT_RETRY = RetrySpec(max_attempts=8, initial_backoff=1.0, max_backoff=60.0, busy_timeout=600.0)
DEFAULT_CONCURRENCY = 64
DEFAULT_PER_ACCOUNT_CONCURRENCY = 32
MAX_CONCURRENCY = 1024
DAY = 86400.0
HOUR = 3600.0
# A node is ready again in these states only while it is still changing: waiting for them
# would call a node healthy before its reimage or reboot finished.
_NOT_READY = frozenset(
    {
        "creating",
        "starting",
        "rebooting",
        "reimaging",
        "waitingforstarttask",
        "leavingpool",
        "deallocating",
        "deallocated",
        "preempted",
        "upgradingos",
        "unknown",
        "offline",
    }
)


def read_rollout(checker: Checker, at: Node | None, replace: bool = False) -> RolloutSpec | None:
    fields = checker.mapping(at, ROLLOUT_KEYS, defaults=True) if at is not None else {}
    if fields is None:
        return None
    errors = checker.error_count
    waves = _read_waves(checker, fields["waves"]) if "waves" in fields else None
    ladder = normalise_ladder(waves or ())
    got = {key: fields.get(key) for key in ROLLOUT_KEYS}
    max_unavailable = DEFAULT_MAX_UNAVAILABLE
    if got["max_unavailable"] is not None:
        max_unavailable = checker.amount(got["max_unavailable"], zero=False) or max_unavailable
    pause = 0.0
    if got["pause_between_waves"] is not None:
        pause = checker.duration(got["pause_between_waves"], high=DAY) or pause
    health = read_health(checker, got["health"]) if got["health"] is not None else DEFAULT_HEALTH
    budget = DEFAULT_FAILURE_BUDGET
    if got["failure_budget"] is not None:
        budget = checker.amount(got["failure_budget"], zero=True) or budget
    deadline = checker.timestamp(got["deadline"]) if got["deadline"] is not None else None
    confirm = None
    if got["confirm_after_wave"] is not None:
        confirm = _read_confirm(checker, got["confirm_after_wave"], ladder, waves is not None)
    holds = _flag(checker, got["failed_holds_availability"], default=True)
    claim_pools = _flag(checker, got["claim_pools"], default=False)
    surge, autoscale = _read_replace_keys(checker, got, replace)
    drain, gates, soak = _read_drain_and_waits(checker, got, health, replace)
    if checker.error_count > errors or health is None or holds is None or claim_pools is None:
        return None
    if not health.wait and got["max_unavailable"] is not None and not is_all(max_unavailable):
        checker.warning(
            got["max_unavailable"],
            (
                "with health.wait: false a node stops counting as unavailable once Batch accepted "
                "the request, so max_unavailable only bounds requests in flight, not how much of "
                "the pool is reimaging at once; keep wait: true to hold it"
            ),
        )
    return RolloutSpec(
        waves=ladder,
        max_unavailable=max_unavailable,
        pause_between_waves=pause,
        health=health,
        failure_budget=budget,
        deadline=deadline,
        confirm_after_wave=confirm,
        failed_holds_availability=holds,
        claim_pools=claim_pools,
        surge=surge,
        autoscale=autoscale,
        drain=drain,
        gates=gates,
        soak=soak,
    )


def _flag(checker: Checker, at: Node | None, *, default: bool) -> bool | None:
    """A boolean key's value, its default when it is not written (None: it is wrong)."""
    return default if at is None else checker.boolean(at)


def _read_drain_and_waits(
    checker: Checker, got: Mapping[str, Node | None], health: HealthSpec | None, replace: bool
) -> tuple[DrainSpec | None, tuple[GateSpec, ...], float]:
    """``rollout.drain``, ``gates`` and ``soak``. A drain and a soak need the health gate,
    and ``action: replace`` has neither (errors where they are written)."""
    drain_at, soak_at = got["drain"], got["soak"]
    drain = read_drain(checker, drain_at) if drain_at is not None else None
    gates = read_gates(checker, got["gates"]) if got["gates"] is not None else ()
    soak = read_soak(checker, soak_at) if soak_at is not None else 0.0
    no_health = health is not None and not health.wait
    if soak and soak_at is not None:
        if replace:
            checker.error(
                soak_at,
                "a soak watches a wave's nodes after their action; with action: replace they "
                "are gone (their new nodes are health-gated instead): remove rollout.soak",
            )
        if no_health:
            checker.error(soak_at, "a soak watches the nodes' health: it needs health.wait: true")
    if drain is not None and drain_at is not None:
        if replace:
            checker.error(
                drain_at,
                "action: replace does not drain: its removal waits for running tasks itself "
                "with option: taskcompletion (or retaineddata); remove rollout.drain",
            )
        if no_health:
            checker.error(
                drain_at,
                "a drain needs health.wait: true (running tasks are read from the health "
                "polls, and a drained node's scheduling is enabled again once it is back)",
            )
    return drain, gates or (), soak or 0.0


def _read_waves(checker: Checker, at: Node) -> tuple[Amount, ...] | None:
    """The ladder as written: each step a count >= 1 or a percent > 0%, never going back."""
    items = checker.sequence(at, "wave targets", "wave target")
    if items is None:
        return None
    errors = checker.error_count
    ladder: list[Amount] = []
    last: dict[bool, tuple[Amount, int]] = {}  # kind (percent?) -> latest step and its index
    for index, item in enumerate(items):
        amount = checker.amount(item, zero=False)
        if amount is None:
            continue
        if ladder and is_all(ladder[-1]):
            checker.error(item, 'nothing can follow "100%": that wave already covers the pool')
        previous = last.get(amount.percent)
        if previous is not None and amount.value < previous[0].value:
            checker.error(
                item,
                f"waves are cumulative targets and must not decrease: {amount} "
                f"comes after {previous[0]} (waves[{previous[1]}])",
            )
        elif previous is not None and amount.value == previous[0].value:
            checker.warning(item, f"{amount} repeats waves[{previous[1]}]; this wave adds no node")
        last[amount.percent] = (amount, index)
        ladder.append(amount)
    return tuple(ladder) if checker.error_count == errors else None


def _read_replace_keys(
    checker: Checker, got: dict[str, Node | None], replace: bool
) -> tuple[Amount, str]:
    """``rollout.surge`` and ``rollout.autoscale``: ``action: replace``'s, warned about (and
    read all the same) with another action."""
    for key in ("surge", "autoscale"):
        node = got[key]
        if node is not None and not replace:
            checker.warning(node, "applies to action: replace only; ignored")
    surge = NO_SURGE
    if got["surge"] is not None:
        surge = checker.amount(got["surge"], zero=True) or surge
    autoscale = "refuse"
    if got["autoscale"] is not None:
        autoscale = checker.choice(got["autoscale"], AUTOSCALE_CHOICES) or autoscale
    return surge, autoscale


def _read_confirm(
    checker: Checker, at: Node, ladder: tuple[Amount, ...], explicit: bool
) -> int | None:
    note = "" if explicit else ' (no waves given: the only wave is "100%")'
    value = at.value
    if isinstance(value, int) and not isinstance(value, bool) and value > len(ladder):
        checker.error(at, f"there are only {len(ladder)} waves{note}")
        return None
    wave = checker.integer(at, 1, len(ladder))
    if wave is None:
        return None
    if wave == len(ladder):
        checker.warning(at, "pausing after the last wave has no effect; nothing follows it")
    return wave


def read_health(checker: Checker, at: Node) -> HealthSpec | None:
    fields = checker.mapping(at, HEALTH_KEYS, defaults=True)
    if fields is None:
        return None
    errors = checker.error_count
    spec = DEFAULT_HEALTH
    wait = checker.boolean(fields["wait"]) if "wait" in fields else spec.wait
    states = spec.ready_states
    if "ready_states" in fields:
        states = read_states(checker, fields["ready_states"]) or states
        for state in sorted(states & _NOT_READY):
            checker.warning(
                fields["ready_states"],
                f"a node that is {state} is not ready; "
                "counting it as healthy would hide a failed reimage or reboot",
            )
    timeout: float | None = spec.timeout
    if "timeout" in fields:
        timeout = checker.duration(fields["timeout"], high=DAY, positive=True)
    poll: float | None = spec.poll_interval
    if "poll_interval" in fields:
        poll = checker.duration(fields["poll_interval"], high=HOUR, positive=True)
    if poll is not None and timeout is not None and poll > timeout:
        where = fields.get("poll_interval") or fields["timeout"]
        checker.error(where, "health.poll_interval must not be longer than health.timeout")
    if checker.error_count > errors or wait is None or timeout is None or poll is None:
        return None
    return HealthSpec(wait=wait, ready_states=states, timeout=timeout, poll_interval=poll)


def read_execution(checker: Checker, at: Node | None) -> ExecutionSpec | None:
    fields = checker.mapping(at, EXECUTION_KEYS, defaults=True) if at is not None else {}
    if fields is None:
        return None
    errors = checker.error_count
    concurrency: int | None = DEFAULT_CONCURRENCY
    if "concurrency" in fields:
        concurrency = checker.integer(fields["concurrency"], 1, MAX_CONCURRENCY)
    per_account: int | None = min(DEFAULT_PER_ACCOUNT_CONCURRENCY, concurrency or 1)
    if "per_account_concurrency" in fields:
        node = fields["per_account_concurrency"]
        per_account = checker.integer(node, 1, MAX_CONCURRENCY)
        if per_account is not None and concurrency is not None and per_account > concurrency:
            checker.error(node, f"must not be more than execution.concurrency ({concurrency})")
    timeout = 30.0
    if "request_timeout" in fields:
        timeout = checker.duration(fields["request_timeout"], high=600.0, positive=True) or 30.0
    api_version = (
        read_api_version(checker, fields["api_version"])
        if "api_version" in fields
        else DEFAULT_API_VERSION
    )
    retry = read_retry(checker, fields["retry"]) if "retry" in fields else DEFAULT_RETRY
    if (
        checker.error_count > errors
        or concurrency is None
        or per_account is None
        or not retry
        or api_version is None
    ):
        return None
    return ExecutionSpec(
        concurrency=concurrency,
        per_account_concurrency=per_account,
        request_timeout=timeout,
        retry=retry,
        api_version=api_version,
    )


def read_api_version(checker: Checker, at: Node) -> str | None:
    """One of the api-versions we speak. ``2025-06-01`` unquoted is a YAML date: taken too."""
    if isinstance(at.value, date) and at.value.isoformat() in API_VERSIONS:
        return at.value.isoformat()
    return checker.choice(at, tuple(API_VERSIONS))


def read_retry(checker: Checker, at: Node) -> RetrySpec | None:
    fields = checker.mapping(at, RETRY_KEYS, defaults=True)
    if fields is None:
        return None
    errors = checker.error_count
    spec = DEFAULT_RETRY
    attempts = spec.max_attempts
    if "max_attempts" in fields:
        attempts = checker.integer(fields["max_attempts"], 1, 100) or attempts
    values = {
        "initial_backoff": spec.initial_backoff,
        "max_backoff": spec.max_backoff,
        "busy_timeout": spec.busy_timeout,
    }
    highs = {"initial_backoff": HOUR, "max_backoff": HOUR, "busy_timeout": DAY}
    for key, default in values.items():
        if key in fields:
            # A zero backoff would retry a struggling service in a tight loop.
            got = checker.duration(fields[key], high=highs[key], positive=key != "busy_timeout")
            values[key] = got if got is not None else default
    initial, maximum = values["initial_backoff"], values["max_backoff"]
    if initial > maximum and checker.error_count == errors:
        where = fields.get("max_backoff") or fields["initial_backoff"]
        checker.error(where, f"max_backoff must be at least initial_backoff ({initial:g}s)")
    if checker.error_count > errors:
        return None
    return RetrySpec(
        max_attempts=attempts,
        initial_backoff=initial,
        max_backoff=maximum,
        busy_timeout=values["busy_timeout"],
    )
