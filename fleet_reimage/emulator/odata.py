"""The OData subset Batch list calls use: ``$filter`` expressions and ``$select`` lists.

Grammar (keywords and property names are case-sensitive, as in the service)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | comparison
    comparison := property ("eq"|"ne"|"ge"|"gt"|"le"|"lt") literal
    literal    := 'text' (quote doubled inside) | datetime'2026-11-20T00:00:00Z'

Time properties take ``datetime'...'`` or a quoted ISO-8601 string. A comparison on a
value the resource does not have (a node without lastBootTime) is false; ``not`` of it is
true. Expressions compile to closures, cached by text, so evaluating a filter over
100,000 nodes is one Python call per node.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .spec import NODE_STATES
from .timefmt import parse_iso

MAX_FILTER_LENGTH = 8192
MAX_DEPTH = 64
Kind = Literal["string", "enum", "time"]
Value = str | int
Predicate = Callable[[Any], bool]

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "ge": operator.ge,
    "gt": operator.gt,
    "le": operator.le,
    "lt": operator.lt,
}
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<paren>[()])
  | (?P<datetime>datetime'(?P<dtext>[^']*)')
  | (?P<string>'(?P<stext>(?:[^']|'')*)')
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""",
    re.VERBOSE,
)
_SELECT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ODataError(ValueError):
    """A $filter or $select the service would refuse; ``reason`` goes in the 400's values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    get: Callable[[Any], str | int | None]
    allowed: frozenset[str] | None = None  # enum values


Schema = Mapping[str, Field]


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr


Expr = Comparison | Not | And | Or
_Token = tuple[str, str]  # (kind, text) where kind is paren|datetime|string|word


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ODataError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = match.lastgroup or ""
        if kind == "datetime":
            tokens.append(("datetime", match.group("dtext")))
        elif kind == "string":
            tokens.append(("string", match.group("stext").replace("''", "'")))
        elif kind != "space":
            tokens.append((kind, match.group(0)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Token], schema: Schema) -> None:
        self.tokens = tokens
        self.pos = 0
        self.schema = schema

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise ODataError("the expression ends too early")
        self.pos += 1
        return token

    def keyword(self, word: str) -> bool:
        if self.peek() == ("word", word):
            self.pos += 1
            return True
        return False

    def expr(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise ODataError("the expression is nested too deeply")
        result = self.and_expr(depth)
        while self.keyword("or"):
            result = Or(result, self.and_expr(depth))
        return result

    def and_expr(self, depth: int) -> Expr:
        result = self.unary(depth)
        while self.keyword("and"):
            result = And(result, self.unary(depth))
        return result

    def unary(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise ODataError("the expression is nested too deeply")
        if self.keyword("not"):
            return Not(self.unary(depth + 1))
        if self.peek() == ("paren", "("):
            self.pos += 1
            inner = self.expr(depth + 1)
            if self.take() != ("paren", ")"):
                raise ODataError("expected ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        kind, name = self.take()
        if kind != "word" or name in _OPERATORS or name in ("and", "or", "not"):
            raise ODataError(f"expected a property name, got {name!r}")
        field = self.schema.get(name)
        if field is None:
            raise ODataError(
                f"unknown or unsupported property {name!r}; "
                f"supported: {', '.join(sorted(self.schema))}"
            )
        kind, op = self.take()
        if kind != "word" or op not in _OPERATORS:
            raise ODataError(f"expected a comparison operator (eq ne ge gt le lt), got {op!r}")
        return Comparison(name, op, _literal(name, field, self.take()))


def _literal(name: str, field: Field, token: _Token) -> Value:
    kind, text = token
    if field.kind == "time":
        if kind not in ("datetime", "string"):
            raise ODataError(
                f"{name} is compared with a time such as datetime'2026-01-01T00:00:00Z'"
            )
        try:
            return parse_iso(text)
        except ValueError:
            raise ODataError(f"invalid time {text!r} for {name}") from None
    if kind != "string":
        raise ODataError(f"{name} is compared with a quoted string such as 'idle'")
    if field.allowed is not None and text not in field.allowed:
        raise ODataError(f"invalid {name} {text!r}")
    return text


def parse_filter(text: str, schema: Schema) -> Expr:
    """The expression tree of ``text``; ODataError (only) when it is not valid."""
    if len(text) > MAX_FILTER_LENGTH:
        raise ODataError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    if not tokens:
        raise ODataError("the filter is empty")
    parser = _Parser(tokens, schema)
    result = parser.expr(0)
    leftover = parser.peek()
    if leftover is not None:
        raise ODataError(f"unexpected {leftover[1]!r} after a complete expression")
    return result


def compile_expr(expr: Expr, schema: Schema) -> Predicate:
    """A closure evaluating ``expr`` on a resource through ``schema``'s getters."""
    if isinstance(expr, Comparison):
        get = schema[expr.name].get
        value = expr.value
        compare = _OPERATORS[expr.op]
        if schema[expr.name].kind == "time":

            def missing_is_false(item: Any) -> bool:
                actual = get(item)
                return actual is not None and compare(actual, value)

            return missing_is_false
        if expr.op == "eq":  # the common case (state eq 'idle'), one call shorter
            return lambda item: get(item) == value
        return lambda item: compare(get(item), value)
    if isinstance(expr, Not):
        inner = compile_expr(expr.operand, schema)
        return lambda item: not inner(item)
    left = compile_expr(expr.left, schema)
    right = compile_expr(expr.right, schema)
    if isinstance(expr, And):
        return lambda item: left(item) and right(item)
    return lambda item: left(item) or right(item)


_compiled: dict[tuple[int, str], Predicate] = {}


def compile_filter(text: str, schema: Schema) -> Predicate:
    """``parse_filter`` then ``compile_expr``, remembered per (schema, text)."""
    key = (id(schema), text)
    predicate = _compiled.get(key)
    if predicate is None:
        predicate = compile_expr(parse_filter(text, schema), schema)
        if len(_compiled) >= 256:  # clients repeat a handful of filters; stay bounded
            _compiled.clear()
        _compiled[key] = predicate
    return predicate


def parse_select(text: str) -> tuple[str, ...]:
    """Property names of a ``$select``: comma-separated, whitespace around names ignored."""
    names = tuple(part.strip() for part in text.split(","))
    for name in names:
        if not _SELECT_NAME.fullmatch(name):
            raise ODataError(f"invalid property name {name!r} in $select")
    return names


def select(resource: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Only the selected properties the resource has, in the resource's own order."""
    return {key: value for key, value in resource.items() if key in names}


def _attr(name: str) -> Callable[[Any], str | int | None]:
    return operator.attrgetter(name)


NODE_FIELDS: Schema = {
    "id": Field("string", _attr("id")),
    "state": Field("enum", _attr("state"), frozenset(NODE_STATES)),
    "schedulingState": Field("enum", _attr("scheduling_state"), frozenset({"enabled", "disabled"})),
    "lastBootTime": Field("time", _attr("last_boot_ticks")),
    "stateTransitionTime": Field("time", _attr("transition_ticks")),
    "allocationTime": Field("time", _attr("allocation_ticks")),
}
POOL_FIELDS: Schema = {
    "id": Field("string", _attr("id")),
    "vmSize": Field("string", _attr("vm_size")),
    "state": Field("enum", lambda pool: "active", frozenset({"active", "deleting"})),
    "allocationState": Field(
        "enum", _attr("allocation_state"), frozenset({"steady", "resizing", "stopping"})
    ),
    "creationTime": Field("time", _attr("creation_ticks")),
    "stateTransitionTime": Field("time", _attr("creation_ticks")),
    "lastModified": Field("time", _attr("modified_ticks")),
}
