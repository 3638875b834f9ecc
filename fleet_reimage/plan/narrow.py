"""Narrowing a plan from the command line: ``--pool GLOB`` and ``--nodes-from FILE`` (pure).

An operator often retries or targets a few pools or nodes, and editing the plan for that
would make ``resume`` refuse it (the plan changed). These options **only narrow** what the
plan selects, never widen it:

* ``--pool GLOB`` (repeatable) keeps the plan's pools whose id matches one of the globs;
  ``ACCOUNT/GLOB`` matches the pools of that account only;
* ``--nodes-from FILE`` keeps the selected nodes whose id is in the file (one id a line,
  ``#`` starts a comment, blank lines are ignored). An id the plan does not select is
  reported (with its line, and why the plan leaves it out), not added.

The plan's own rules still apply to what is left (states, ``booted_before``, waves and
``max_unavailable`` computed over the narrowed selection). The narrowing is recorded with
the run (``as_options``), so ``status`` and ``report`` show it, and ``resume`` continues
the run's own targets, which were narrowed when it was created.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_reimage.errors import InputError, Problem, Severity
from fleet_reimage.units import count

from .model import Plan

POOL_GLOB = re.compile(r"(?:([A-Za-z0-9][A-Za-z0-9._-]{0,63})/)?([A-Za-z0-9_*?\[\]!-]+)")
NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,1024}")
NOT_IN_FILE = "not in --nodes-from"
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PoolGlob:
    account: str | None  # None: any account
    glob: str

    @classmethod
    def parse(cls, text: str) -> PoolGlob:
        """``GLOB`` or ``ACCOUNT/GLOB``; ValueError saying what is allowed."""
        match = POOL_GLOB.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a pool glob: write GLOB or ACCOUNT/GLOB, with letters, "
                "digits, - and _ and the glob characters * ? [ ] ! (e.g. render-* or "
                "prod-westus2/render-*)"
            )
        return cls(match.group(1), match.group(2))

    def matches(self, account: str, pool_id: str) -> bool:
        if self.account is not None and self.account.lower() != account.lower():
            return False
        return fnmatch.fnmatchcase(pool_id, self.glob)

    def __str__(self) -> str:
        return f"{self.account}/{self.glob}" if self.account else self.glob


@dataclass(frozen=True, slots=True)
class NodeList:
    """The node ids of a ``--nodes-from`` file, with the line each one is on."""

    path: str
    lines: Mapping[str, int]  # node id -> its first line

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.lines


@dataclass(frozen=True, slots=True)
class Narrowing:
    pools: tuple[PoolGlob, ...] = ()
    nodes: NodeList | None = None

    def __bool__(self) -> bool:
        return bool(self.pools) or self.nodes is not None

    def keeps_pool(self, account: str, pool_id: str) -> bool:
        return not self.pools or any(p.matches(account, pool_id) for p in self.pools)

    def node_reason(self, node_id: str) -> str | None:
        """Why the narrowing leaves out a node the plan selects, or None when it keeps it."""
        if self.nodes is None or node_id in self.nodes:
            return None
        return f"{NOT_IN_FILE} {Path(self.nodes.path).name}"

    def as_options(self) -> dict[str, Any]:
        """What the run records (JSON), for ``status`` and ``report``."""
        recorded: dict[str, Any] = {}
        if self.pools:
            recorded["pools"] = [str(p) for p in self.pools]
        if self.nodes is not None:
            recorded["nodes_from"] = self.nodes.path
            recorded["node_ids"] = len(self.nodes.lines)
        return recorded

    def check_accounts(self, plan: Plan) -> list[Problem]:
        """An ``ACCOUNT/`` that names no account of the plan is an error (exit 2)."""
        names = {a.name.lower() for a in plan.accounts}
        return [
            _option_problem(
                f"{pool}: the plan has no account {pool.account!r} "
                f"(its accounts: {', '.join(a.name for a in plan.accounts)})",
            )
            for pool in self.pools
            if pool.account is not None and pool.account.lower() not in names
        ]


def describe(recorded: Mapping[str, Any] | None) -> str | None:
    """A recorded narrowing in words: ``--pool render-* --nodes-from retry.txt (12 ids)``."""
    if not recorded:
        return None
    parts = [f"--pool {glob}" for glob in recorded.get("pools", ())]
    if "nodes_from" in recorded:
        ids = int(recorded.get("node_ids", 0))
        parts.append(f"--nodes-from {recorded['nodes_from']} ({count(ids, 'node id')})")
    return " ".join(parts) or None


# --- the nodes file ---------------------------------------------------------------------


def parse_node_list(text: str, path: str) -> NodeList:
    """Node ids, one a line (``#`` comments, blank lines ignored); InputError listing every
    bad line with its number."""
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not NODE_ID.fullmatch(line):
            column = len(raw) - len(raw.lstrip()) + 1
            problems.append(Problem(path, number, column, "", _bad_line(line)))
            continue
        lines.setdefault(line, number)
    if not problems and not lines:
        problems.append(
            Problem(path, None, None, "", "no node id in the file: it would select nothing")
        )
    if problems:
        raise InputError(problems)
    return NodeList(path, lines)


def _bad_line(line: str) -> str:
    if len(line.split()) > 1:
        return f"one node id a line, got {len(line.split())} words: {line[:80]!r}"
    return (
        f"{line[:80]!r} is not a node id: letters, digits, '-', '_' and '.' only "
        "(a comment starts with #)"
    )


def read_node_list(path: Path) -> NodeList:
    """Read and parse a ``--nodes-from`` file (blocking: run it off the event loop)."""
    shown = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError([Problem(shown, None, None, "", "no such file")]) from None
    except OSError as exc:
        raise InputError(
            [Problem(shown, None, None, "", f"cannot read the file: {exc.strerror or exc}")]
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError([Problem(shown, None, None, "", "file is larger than 16 MiB")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError([Problem(shown, line, None, "", "not UTF-8 text")]) from None
    return parse_node_list(text, shown)


# --- what the narrowing did -------------------------------------------------------------


def unselected_nodes(
    nodes: NodeList,
    selected: Iterable[str],
    excluded: Mapping[str, str],
    *,
    pools_left_out: bool,
) -> list[Problem]:
    """A warning for each listed node id the plan does not select: reported, never added.

    ``excluded``: node id -> why the plan leaves it out (in the pools it resolved).
    """
    chosen = set(selected)
    problems = []
    for node_id, line in nodes.lines.items():
        if node_id in chosen:
            continue
        why = excluded.get(node_id)
        if why is None:
            where = "the pools kept by --pool" if pools_left_out else "the pools the plan selects"
            why = f"no node of {where} has this id"
        problems.append(
            Problem(
                nodes.path,
                line,
                None,
                "",
                f"node {node_id} is not selected by the plan ({why}); it is not added",
                "warning",
            )
        )
    return problems


def unmatched_pools(narrowing: Narrowing, kept: Sequence[tuple[str, str]]) -> list[Problem]:
    """A warning for each ``--pool`` that matches none of the pools the plan selects."""
    return [
        _option_problem(
            f"{pool} matches none of the plan's pools; nothing is selected by it", "warning"
        )
        for pool in narrowing.pools
        if not any(pool.matches(account, pool_id) for account, pool_id in kept)
    ]


def _option_problem(message: str, severity: Severity = "error") -> Problem:
    """A problem with ``--pool`` (it has no file or line: it was typed)."""
    return Problem("--pool", None, None, "", message, severity)
