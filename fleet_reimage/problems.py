"""Problems found in a user's input (plan, fleet file, command line), reported all at once.

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


class InputError(Exception):
    """Bad input: every problem found, in file order. Never carries a secret."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.column or 0))
        super().__init__(self.render())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)
