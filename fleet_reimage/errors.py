"""The public errors of fleet-reimage, as one tree, and the problems found in a user's input.

::

    FleetReimageError           anything fleet-reimage raises on purpose
    ├── InputError              bad input (plan, fleet file, options): every Problem found,
    │                           each with file, line, column and key path (exit 2)
    ├── UnitError               a duration, count or percent that cannot be read (also a
    │                           ValueError; ``units``)
    ├── RefusedError            refused for a reason the operator can act on: an unfinished
    │   │                       run of the plan, nothing selected, not confirmed (exit 2)
    │   └── UnsafeFile          a file to write is a link, a FIFO, someone else's or
    │                           hard-linked (``safefiles``)
    ├── JournalError            the journal cannot be used or a write was not recorded
    │   ├── JournalBusy         another runner holds the journal or the run (``journal``)
    │   ├── UnfinishedRun       the plan has an unfinished run: none created (``journal``)
    │   └── LeaseLost           a shared run's work is no longer this runner's
    └── BatchError              what the Batch client raises (tree in ``batch/errors.py``)

A ``Problem`` knows where it is (file, line, column, key path) and says what is wrong and
what is allowed. ``InputError`` carries every problem found; the CLI prints them and exits 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None  # 1-based
    column: int | None  # 1-based
    path: str  # key path such as "rollout.waves[2]", "" for the whole document
    message: str
    severity: Severity = "error"

    def render(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        subject = f"{self.path}: " if self.path else ""
        return f"{where}: {self.severity}: {subject}{self.message}"


class FleetReimageError(Exception):
    """The root of every error fleet-reimage raises on purpose (see the module docstring)."""


class RefusedError(FleetReimageError):
    """The operation was refused for a reason the operator can act on (exit code 2)."""


class InputError(FleetReimageError):
    """Bad input: every problem found, in file order. Never carries a secret."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.column or 0))
        super().__init__(self.render())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)
