"""Reading a loaded YAML document one value at a time, collecting every problem.

Validation never stops at the first mistake: each reader method checks one value, records a
``Problem`` (with file, line, column and key path) when it is wrong, and returns ``None`` so
the caller can carry on with the rest of the plan. ``None`` means "invalid" (or absent);
callers only compare two values when both are usable, so one mistake does not cause a
second, confusing one.

Messages never echo a value that looks like a secret (see ``shown``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from fleet_reimage.errors import Problem, Severity
from fleet_reimage.units import Amount, UnitError, format_duration, parse_amount, parse_duration
from fleet_reimage.yamlsafe import MarkedList, MarkedMap

_MAX_SHOWN = 48
MAX_COUNT = 1_000_000
# Base64 of 30+ bytes (an account key is 88 characters), or an Entra client secret (which
# always holds a "~"). Mixed character classes keep ordinary names and paths from matching.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_ENTRA_SECRET = re.compile(r"[A-Za-z0-9_.~-]{30,}")
_SECRET_NOTE = "(a value that looks like a secret; not shown)"
_SECRET_NAMES = frozenset({"key", "sas", "pwd", "connectionstring", "credentials"})
_SECRET_WORDS = ("secret", "password", "passwd", "token")


def looks_like_secret(text: str) -> bool:
    """True for text that looks like an account key or a client secret."""
    candidate = text.strip()
    if _BASE64_RUN.fullmatch(candidate):
        classes = (r"[a-z]", r"[A-Z]", r"[0-9]")
        return all(re.search(c, candidate) for c in classes)
    return bool(_ENTRA_SECRET.fullmatch(candidate)) and "~" in candidate


def secret_name(key: str) -> bool:
    """A key that would hold a secret: key, account_key, client_secret, password, token..."""
    norm = key.lower().replace("_", "").replace("-", "")
    return norm in _SECRET_NAMES or norm.endswith("key") or any(w in norm for w in _SECRET_WORDS)


def shown(text: str) -> str:
    """Text for a message: quoted, shortened, and never a secret."""
    if looks_like_secret(text):
        return _SECRET_NOTE
    if len(text) > _MAX_SHOWN:
        return repr(text[:_MAX_SHOWN]) + "..."
    return repr(text)


def describe(value: object) -> str:
    """What a value is, for "expected X, got Y" messages."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {number_text(value)}"
    if isinstance(value, str):
        return f"the text {shown(value)}"
    if isinstance(value, datetime):
        return "a date and time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """' Did you mean 'x'?' when a choice is close, else ''."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def join(path: str, key: str | int) -> str:
    """The key path of a child: ``a.b`` for a key, ``a[0]`` for an item."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the document with where it was written."""

    value: Any
    path: str
    line: int | None
    column: int | None


def root_node(data: object) -> Node:
    line, column = data.position if isinstance(data, MarkedMap | MarkedList) else (1, 1)
    return Node(data, "", line, column)


class Checker:
    """Collects problems for one file while its values are read."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def report(self, at: Node, message: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(self.file, at.line, at.column, at.path, message, severity))

    def error(self, at: Node, message: str) -> None:
        self.report(at, message)

    def warning(self, at: Node, message: str) -> None:
        self.report(at, message, "warning")

    @property
    def error_count(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    def expected(self, at: Node, what: str, hint: str = "") -> None:
        self.error(at, f"expected {what}, got {describe(at.value)}{hint}")

    # -- containers --------------------------------------------------------------------------

    def mapping(
        self,
        at: Node,
        allowed: Sequence[str],
        required: Collection[str] = (),
        ignore: Collection[str] = (),
        *,
        defaults: bool = False,
    ) -> dict[str, Node] | None:
        """The children of a mapping; unknown keys and missing required keys are errors.

        ``defaults``: every key is optional, so an empty value is better left out.
        """
        data = at.value
        if not isinstance(data, MarkedMap):
            hint = " (remove the key to use the defaults)" if data is None and defaults else ""
            self.expected(at, f"a mapping with keys such as {', '.join(allowed[:4])}", hint)
            return None
        children: dict[str, Node] = {}
        for key, value in data.items():
            if key in ignore:
                continue
            if key not in allowed:
                line, column = data.key_positions[key]
                where = Node(key, join(at.path, key), line, column)
                hint = did_you_mean(key, allowed)
                if secret_name(key):
                    hint += (
                        " Never write a secret in the plan: name an environment variable "
                        "with auth.key_env, or a file with auth.key_file."
                    )
                self.error(
                    where, f"unknown key {shown(key)}.{hint} Allowed here: {', '.join(allowed)}"
                )
                continue
            line, column = data.value_positions[key]
            children[key] = Node(value, join(at.path, key), line, column)
        for key in required:
            if key not in data and key not in ignore:
                self.error(at, f"missing required key {key!r}")
        return children

    def sequence(
        self, at: Node, items: str, item: str, *, non_empty: bool = True
    ) -> list[Node] | None:
        """The items of a list; ``items``/``item`` name them (plural/singular) for messages."""
        data = at.value
        if not isinstance(data, MarkedList):
            self.expected(at, f"a list of {items}")
            return None
        if non_empty and not data:
            self.error(at, f"the list is empty; give at least one {item}")
            return None
        return [
            Node(item, join(at.path, index), *data.item_positions[index])
            for index, item in enumerate(data)
        ]

    # -- scalars -----------------------------------------------------------------------------

    def text(self, at: Node, what: str = "text") -> str | None:
        if isinstance(at.value, str):
            return at.value
        hint = " (quote it)" if isinstance(at.value, int | float | bool) else ""
        self.expected(at, what, hint)
        return None

    def boolean(self, at: Node) -> bool | None:
        if isinstance(at.value, bool):
            return at.value
        self.expected(at, "true or false")
        return None

    def integer(self, at: Node, low: int, high: int) -> int | None:
        value = at.value
        if isinstance(value, bool) or not isinstance(value, int):
            self.expected(at, f"a whole number from {low} to {high}")
            return None
        if not low <= value <= high:
            self.error(at, f"must be from {low} to {high}, got {number_text(value)}")
            return None
        return value

    def choice(self, at: Node, allowed: Sequence[str]) -> str | None:
        value = at.value
        listed = ", ".join(allowed)
        if not isinstance(value, str):
            self.expected(at, f"one of {listed}")
            return None
        if value not in allowed:
            hint = did_you_mean(value, allowed)
            self.error(at, f"unknown value {shown(value)}.{hint} Allowed: {listed}")
            return None
        return value

    def duration(
        self, at: Node, *, low: float = 0.0, high: float, positive: bool = False
    ) -> float | None:
        """Seconds; ``positive`` refuses zero; bounds are inclusive and shown as written."""
        example = "such as 500ms, 30s, 20m or 1h"
        try:
            seconds = parse_duration(at.value)
        except (UnitError, ValueError, OverflowError):
            hint = " (a bare number has no unit: write e.g. 30s)" if _is_number(at.value) else ""
            self.expected(at, f"a duration {example}", hint)
            return None
        if positive and seconds <= 0:
            self.error(at, "must be longer than 0s")
            return None
        if not low <= seconds <= high:
            self.error(at, f"must be from {_seconds(low)} to {_seconds(high)}, got {at.value}")
            return None
        return seconds

    def amount(self, at: Node, *, zero: bool) -> Amount | None:
        """A count or a percent; ``zero`` says whether 0 / "0%" is allowed.

        Counts are capped at ``MAX_COUNT``: no pool is that large, and a bigger number is
        a typo (it would also overflow ``Amount.__str__``).
        """
        value = at.value
        try:
            amount = parse_amount(value)
        except (UnitError, ValueError, OverflowError):
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                self.error(at, "a count cannot be negative")
            else:
                self.expected(at, 'a count such as 5 or a percent such as "25%" (0% to 100%)')
            return None
        if not amount.percent and amount.value > MAX_COUNT:
            self.error(at, f"a count of more than {MAX_COUNT} nodes cannot be meant")
            return None
        if not zero and amount.value == 0:
            self.error(at, 'must be at least 1 (or more than "0%")')
            return None
        return amount

    def timestamp(self, at: Node) -> datetime | None:
        """A date and time with a timezone, returned in UTC."""
        value = at.value
        example = "such as 2026-11-20T00:00:00Z or 2026-11-20T01:00:00+01:00"
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                self.expected(at, f"a date and time {example}")
                return None
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                self.error(at, f"the date and time needs a timezone, {example}")
                return None
            try:
                return value.astimezone(UTC)
            except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00
                self.error(at, "the date and time is out of range")
                return None
        if isinstance(value, date):
            self.error(at, f"a date alone is ambiguous; give a time and timezone, {example}")
            return None
        self.expected(at, f"a date and time {example}")
        return None


def number_text(value: float) -> str:
    """A number for a message; huge integers are not spelled out (str() would even fail)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "(a very long number)"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(seconds: float) -> str:
    return format_duration(seconds) if seconds else "0s"
