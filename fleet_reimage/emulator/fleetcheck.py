"""Reading typed values out of marked YAML, collecting every problem with its position.

A ``Checker`` never raises on a bad value: it records a ``Problem`` (file, line, column,
key path, what is allowed) and hands back the default, so one pass reports everything.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from fleet_reimage.errors import Problem

from ..units import UnitError, parse_duration
from ..yamlsafe import MarkedList, MarkedMap, Position


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Checker:
    """Collects problems for one file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[Problem] = []

    def report(self, position: Position | None, path: str, message: str) -> None:
        line, column = position if position else (None, None)
        self.problems.append(Problem(self.filename, line, column, path, message))

    def at_value(self, where: MarkedMap, key: str, path: str, message: str) -> None:
        self.report(where.value_positions.get(key, where.position), join(path, key), message)

    def known_keys(
        self, where: MarkedMap, allowed: Iterable[str], path: str, noun: str = "key"
    ) -> None:
        """Report every key not in ``allowed``, with the closest allowed one as a hint."""
        allowed = list(allowed)
        for key in where:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            self.report(
                where.key_positions.get(key), join(path, key), f"unknown {noun} {key!r}{hint}"
            )

    def require(self, where: MarkedMap, key: str, path: str) -> bool:
        if key in where:
            return True
        self.report(where.position, join(path, key), f"missing required key {key!r}")
        return False

    def mapping(self, where: MarkedMap, key: str, path: str) -> MarkedMap | None:
        """The mapping under ``key``; None when absent (or null) or reported as wrong."""
        value = where.get(key)
        if value is None:
            return None
        if not isinstance(value, MarkedMap):
            self.at_value(where, key, path, f"expected a mapping, got {type_name(value)}")
            return None
        return value

    def sequence(self, where: MarkedMap, key: str, path: str) -> MarkedList | None:
        value = where.get(key)
        if value is None:
            return None
        if not isinstance(value, MarkedList):
            self.at_value(where, key, path, f"expected a list, got {type_name(value)}")
            return None
        return value

    def string(self, where: MarkedMap, key: str, path: str, default: str) -> str:
        value = where.get(key, default)
        if not isinstance(value, str) or not value.strip():
            self.at_value(where, key, path, f"expected a non-empty string, got {type_name(value)}")
            return default
        return value

    def integer(
        self,
        where: MarkedMap,
        key: str,
        path: str,
        default: int,
        *,
        minimum: int = 0,
        maximum: int | None = None,
    ) -> int:
        value = where.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.at_value(where, key, path, f"expected a whole number, got {type_name(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            top = f" and {maximum}" if maximum is not None else ""
            self.at_value(where, key, path, f"must be between {minimum}{top}, got {value}")
            return default
        return value

    def number(
        self, where: MarkedMap, key: str, path: str, default: float, *, positive: bool = False
    ) -> float:
        value: Any = where.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            self.at_value(where, key, path, f"expected a number, got {type_name(value)}")
            return default
        if value < 0 or (positive and value == 0):
            self.at_value(
                where, key, path, f"must be {'above' if positive else 'at least'} 0, got {value}"
            )
            return default
        return float(value)

    def share(self, where: MarkedMap, key: str, path: str, default: float = 0.0) -> float:
        value: Any = where.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            self.at_value(
                where,
                key,
                path,
                f"expected a share between 0 and 1 such as 0.05, got {type_name(value)}",
            )
            return default
        if not 0 <= value <= 1:
            self.at_value(where, key, path, f"a share must be between 0 and 1, got {value}")
            return default
        return float(value)

    def duration(self, where: MarkedMap, key: str, path: str, default: float) -> float:
        if key not in where:
            return default
        try:
            return parse_duration(where[key])
        except UnitError as exc:
            self.at_value(where, key, path, str(exc))
            return default
