"""Validating ``rollout.gates`` (commands that say whether the rollout may go on) and
``rollout.soak`` (how long a wave's nodes must stay healthy before the pool's next wave).

A gate's command is an argv list, never a shell string: its first item is the program, and
``{run}``, ``{account}``, ``{pool}``, ``{wave}`` and ``{nodes_file}`` inside any item are
replaced when it runs (``engine/gates.py``). A gate ``per: pool`` (the default) runs before
each wave of each pool; ``per: step`` runs once per ladder step, for every pool at once, so
``{account}`` and ``{pool}`` have no value there; an ``after_run`` gate runs once, when the
run has finished its nodes, so only ``{run}`` and ``{nodes_file}`` have a value.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from enum import StrEnum

from .reader import Checker, Node

GATE_KEYS = ("name", "command", "timeout", "when", "per")
PLACEHOLDERS = ("run", "account", "pool", "wave", "nodes_file")
MAX_GATE_TIMEOUT = 6 * 3600.0
MAX_SOAK = 86400.0


class GateWhen(StrEnum):
    BEFORE_WAVE = "before_wave"
    AFTER_RUN = "after_run"


class GatePer(StrEnum):
    POOL = "pool"  # before each wave of each pool, with that pool's nodes
    STEP = "step"  # once per ladder step, before the first pool starts it, for every pool


@dataclass(frozen=True, slots=True)
class GateSpec:
    name: str
    command: tuple[str, ...]  # argv; placeholders still in it
    timeout: float  # seconds
    when: GateWhen = GateWhen.BEFORE_WAVE
    per: GatePer = GatePer.POOL
    line: int | None = None  # where the gate is written in the plan

    def describe(self) -> str:
        """One line for ``plan`` and the confirmation: what runs, when, for how long."""
        scope = (
            "after the run"
            if self.when is GateWhen.AFTER_RUN
            else f"before each wave, per {self.per}"
        )
        argv = " ".join(_quoted(arg) for arg in self.command)
        return f"{self.name}: {argv} ({scope}, timeout {self.timeout:g}s)"


def allowed_placeholders(when: GateWhen, per: GatePer) -> tuple[str, ...]:
    """The placeholders that have a value for a gate run ``when``/``per``."""
    if when is GateWhen.AFTER_RUN:
        return ("run", "nodes_file")
    if per is GatePer.STEP:
        return ("run", "wave", "nodes_file")
    return PLACEHOLDERS


def read_gates(checker: Checker, at: Node) -> tuple[GateSpec, ...] | None:
    """The plan's gates: each a mapping with a unique name and an argv command."""
    items = checker.sequence(at, "gates", "gate", non_empty=False)
    if items is None:
        return None
    errors = checker.error_count
    gates: list[GateSpec] = []
    names: dict[str, int | None] = {}
    for item in items:
        gate = _read_gate(checker, item)
        if gate is None:
            continue
        if gate.name in names:
            checker.error(
                item, f"gate name {gate.name!r} is used twice (first on line {names[gate.name]})"
            )
            continue
        names[gate.name] = item.line
        gates.append(gate)
    return tuple(gates) if checker.error_count == errors else None


def _read_gate(checker: Checker, at: Node) -> GateSpec | None:
    fields = checker.mapping(at, GATE_KEYS, required=("name", "command", "timeout"))
    if fields is None or not {"name", "command", "timeout"} <= fields.keys():
        return None
    errors = checker.error_count
    name = checker.text(fields["name"], "a gate name")
    if name is not None and not name.strip():
        checker.error(fields["name"], "a gate name must not be empty")
    timeout = checker.duration(fields["timeout"], high=MAX_GATE_TIMEOUT, positive=True)
    when = GateWhen.BEFORE_WAVE
    if "when" in fields:
        when = GateWhen(checker.choice(fields["when"], tuple(GateWhen)) or when)
    per = GatePer.POOL
    if "per" in fields:
        per = GatePer(checker.choice(fields["per"], tuple(GatePer)) or per)
        if when is GateWhen.AFTER_RUN:
            checker.error(fields["per"], "an after_run gate runs once for the run; remove 'per'")
    command = _read_command(checker, fields["command"], allowed_placeholders(when, per))
    if checker.error_count > errors or name is None or timeout is None or command is None:
        return None
    return GateSpec(name, command, timeout, when, per, at.line)


def _read_command(checker: Checker, at: Node, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if isinstance(at.value, str):
        checker.error(
            at,
            "a gate's command is a list of arguments, never a shell string: "
            'write e.g. ["./check-slo.sh", "--pool", "{pool}"]',
        )
        return None
    items = checker.sequence(at, "command arguments", "argument (the program to run)")
    if items is None:
        return None
    argv: list[str] = []
    for item in items:
        arg = checker.text(item, "an argument (text)")
        if arg is None:
            continue
        problem = placeholder_problem(arg, allowed)
        if problem is not None:
            checker.error(item, problem)
            continue
        argv.append(arg)
    if len(argv) != len(items):
        return None
    if not argv[0].strip():
        checker.error(items[0], "the program to run must not be empty")
        return None
    return tuple(argv)


def placeholder_problem(arg: str, allowed: tuple[str, ...]) -> str | None:
    """What is wrong with the ``{...}`` placeholders in one argument, or None."""
    try:
        parsed = string.Formatter().parse(arg)
        fields = [field for _, field, _, _ in parsed if field is not None]
    except ValueError as error:
        return f"malformed placeholder ({error}); write {{{{ and }}}} for literal braces"
    for field in fields:
        if field not in allowed:
            known = ", ".join(f"{{{name}}}" for name in allowed)
            what = (
                "an unknown placeholder"
                if field not in PLACEHOLDERS
                else "a placeholder with no value here"
            )
            return (
                f"{what} {{{field}}}; known here: {known} (write {{{{ and }}}} for a literal brace)"
            )
    return None


def fill(arg: str, values: dict[str, str]) -> str:
    """One argument with its placeholders replaced (validated by ``placeholder_problem``)."""
    return arg.format_map(values)


def read_soak(checker: Checker, at: Node) -> float | None:
    return checker.duration(at, high=MAX_SOAK)


def _quoted(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./{}=:,@%+" for c in arg) else repr(arg)
