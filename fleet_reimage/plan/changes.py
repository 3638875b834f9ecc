"""What a changed plan changes in a run being resumed (pure): each setting, and whether it
takes effect.

``resume --force-plan`` accepts a plan file edited since the run started. A run fixed some
things when it was created (which nodes, and each node's wave) and reads the rest from the
plan at every start; so each changed setting either takes effect, or is listed with why not:

* **takes effect**: ``option`` (for nodes not sent yet), each account's connection
  (``endpoint``, ``emulator``, ``auth``, ``custom_cloud``), ``rollout.max_unavailable``
  (recomputed for each pool from the run's nodes, as when it was created),
  ``pause_between_waves``, ``health``, ``failure_budget``, ``deadline``,
  ``confirm_after_wave``, ``failed_holds_availability``, ``claim_pools`` and ``execution``;
* **does not**: the selection (``accounts[].pools``, and an account added: the run's nodes
  were chosen when it was created), ``rollout.waves`` (each node's wave was fixed then: the
  run keeps its ladder), ``name`` (the run keeps its own), and any setting a resume overrode
  on the command line (the override wins until it is given again);
* **refused**: a new ``action`` (a run does one action), or a plan without an account that
  has nodes in the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from fleet_reimage.units import Amount, format_duration

from .gates import GateSpec
from .model import AccountSpec, Plan, PoolSelector, SharedKeyAuth


@dataclass(frozen=True, slots=True)
class PlanChange:
    key: str  # e.g. "rollout.max_unavailable", "accounts[prod].endpoint"
    was: str  # the value as a person reads it
    now: str
    applies: bool  # takes effect in the resumed run
    why: str  # how it takes effect, or why it does not

    def line(self) -> str:
        verdict = "takes effect" if self.applies else "does NOT take effect"
        return f"{self.key}: {self.was} -> {self.now}: {verdict}: {self.why}"

    def as_json(self) -> dict[str, object]:
        return {"setting": self.key, "was": self.was, "now": self.now, "applies": self.applies,
                "why": self.why}  # fmt: skip


class PlanChangeRefused(ValueError):
    """The new plan cannot continue this run (the message says why and what to do)."""


# Settings the run fixed when it was created, with why a change cannot reach it.
_FIXED = {
    "name": "the run keeps the name it was created with",
    "rollout.waves": "each node's wave was fixed when the run was created, so the run keeps "
    "its ladder; a new ladder needs a new run",
}
_SELECTION = (
    "the run's nodes were selected when it was created; select others in a new run, or "
    "narrow one with --pool / --nodes-from"
)
_HOW = {
    "option": "for the nodes not sent yet",
    "rollout.max_unavailable": "recomputed for each pool from the run's nodes",
    "rollout.deadline": "replaces the deadline the run had, unless --deadline is given",
    "rollout.failure_budget": "of all the run's nodes",
    "rollout.gates": "asked before the next wave (and after the run) from now on",
    "rollout.soak": "for the waves that complete from now on",
}


def plan_changes(
    old: Plan, new: Plan, *, overridden: Mapping[str, str] | None = None
) -> list[PlanChange]:
    """Every setting that differs between ``old`` and ``new``, in the plan's order.

    ``overridden``: settings a resume set on the command line (key -> the option, as
    "--max-unavailable 30%"), which a change in the plan does not reach."""
    overridden = overridden or {}
    changes = _accounts_in_one(old, new)
    before, after = settings(old), settings(new)
    for key in [k for k in before if k in after]:
        was, now = before[key], after[key]
        if was == now:
            continue
        applies, why = _verdict(key)
        if applies and key in overridden:
            applies = False
            why = (
                f"overridden by {overridden[key]} on a resume; give that option again to change it"
            )
        changes.append(PlanChange(key, was, now, applies, why))
    return changes


def _accounts_in_one(old: Plan, new: Plan) -> list[PlanChange]:
    """Accounts added (nothing of the run is there) or removed (with no node in the run:
    ``check_resumable`` refuses the others)."""
    before = {a.name for a in old.accounts}
    after = {a.name for a in new.accounts}
    added = [
        PlanChange(f"accounts[{name}]", "(none)", "added", False, _SELECTION)
        for name in sorted(after - before)
    ]
    removed = [
        PlanChange(f"accounts[{name}]", "present", "(removed)", True, "no node of the run is there")
        for name in sorted(before - after)
    ]
    return added + removed


def check_resumable(old: Plan, new: Plan, accounts_in_run: Collection[str]) -> None:
    """Raise ``PlanChangeRefused`` when ``new`` cannot continue a run of ``old``."""
    if new.action is not old.action:
        raise PlanChangeRefused(
            f"the plan's action changed from {old.action.value} to {new.action.value}: a run "
            "does one action; let this run finish (or leave it) and start a new run"
        )
    names = {account.name for account in new.accounts}
    missing = sorted(name for name in accounts_in_run if name not in names)
    if missing:
        raise PlanChangeRefused(
            f"the plan no longer has account {', '.join(missing)}, which has nodes in this "
            "run; put it back (its nodes are part of the run)"
        )


def effective_plan(old: Plan, new: Plan) -> Plan:
    """``new`` with what it cannot change in the run kept from ``old`` (name, ladder)."""
    rollout = dataclasses.replace(new.rollout, waves=old.rollout.waves)
    return dataclasses.replace(new, name=old.name, rollout=rollout)


def settings(plan: Plan) -> dict[str, str]:
    """The plan's settings as key -> text, in the plan's order (auth by kind only)."""
    out = {"name": plan.name, "action": plan.action.value, "option": plan.option.value}
    for account in plan.accounts:
        out.update(_account(account))
    out.update(_fields("rollout", plan.rollout))
    out.update(_fields("execution", plan.execution))
    return out


def _account(account: AccountSpec) -> dict[str, str]:
    base = f"accounts[{account.name}]"
    return {
        f"{base}.endpoint": text(account.endpoint),
        f"{base}.emulator": text(account.emulator),
        f"{base}.auth": _auth(account),
        f"{base}.custom_cloud": text(account.custom_cloud),
        f"{base}.pools": "; ".join(_selector(p) for p in account.pools),
    }


def _selector(pool: PoolSelector) -> str:
    """A pools[] entry in words (not its ``line``: that only says where it is written)."""
    nodes = pool.nodes
    shown = {f.name: getattr(nodes, f.name) for f in dataclasses.fields(nodes)}
    rules = ", ".join(f"{name} {text(value)}" for name, value in shown.items() if value)
    return f"{pool.match} ({rules})"


def _auth(account: AccountSpec) -> str:
    """What a person may see of the auth section: never a secret (it holds none, only where
    to find one), but a key path or variable is enough to tell a change."""
    auth = account.auth
    if auth is None:
        return "none"
    kind = "shared-key" if isinstance(auth, SharedKeyAuth) else "entra"
    shown = {k: v for k, v in dataclasses.asdict(auth).items() if v is not None}
    return ", ".join([f"type {kind}", *(f"{k} {text(v)}" for k, v in shown.items())])


def _fields(prefix: str, spec: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for field in dataclasses.fields(spec):  # type: ignore[arg-type]
        value = getattr(spec, field.name)
        key = f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, Amount | type):
            out.update(_fields(key, value))
        else:
            out[key] = text(value)
    return out


def _verdict(key: str) -> tuple[bool, str]:
    if key in _FIXED:
        return False, _FIXED[key]
    if key.startswith("accounts["):
        if key.endswith(".pools"):
            return False, _SELECTION
        return True, "the connection is made from the plan at each start"
    return True, _HOW.get(key, "read from the plan at each start")


def text(value: object) -> str:
    """A setting's value as a person reads it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return format_duration(value) if value else "0s"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, GateSpec):
        return value.describe()
    if isinstance(value, Amount | Path | int | str):
        return str(value)
    if isinstance(value, frozenset):
        return ", ".join(sorted(str(v) for v in value))
    if isinstance(value, tuple):
        return "[" + ", ".join(text(v) for v in value) + "]"
    return repr(value)
