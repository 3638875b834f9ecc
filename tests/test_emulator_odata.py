"""The emulator's $filter parser/evaluator and $select (unit tests and Hypothesis)."""

from __future__ import annotations

import operator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_reimage.emulator.odata import (
    NODE_FIELDS,
    And,
    Comparison,
    Expr,
    Not,
    ODataError,
    Or,
    compile_filter,
    parse_filter,
    parse_select,
    select,
)
from fleet_reimage.emulator.spec import NODE_STATES
from fleet_reimage.emulator.timefmt import iso, parse_iso

T0 = parse_iso("2026-11-20T00:00:00Z")
TIME_FIELDS = ("lastBootTime", "stateTransitionTime", "allocationTime")
OPS = ("eq", "ne", "ge", "gt", "le", "lt")


def node(**overrides: Any) -> SimpleNamespace:
    values = {
        "id": "n1",
        "state": "idle",
        "scheduling_state": "enabled",
        "last_boot_ticks": T0,
        "transition_ticks": T0,
        "allocation_ticks": T0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def matches(text: str, item: SimpleNamespace) -> bool:
    return compile_filter(text, NODE_FIELDS)(item)


def reason(text: str) -> str:
    with pytest.raises(ODataError) as caught:
        parse_filter(text, NODE_FIELDS)
    return caught.value.reason


def test_precedence_not_over_and_over_or() -> None:
    idle, x = Comparison("state", "eq", "idle"), Comparison("id", "eq", "x")
    running = Comparison("state", "eq", "running")
    assert parse_filter("state eq 'idle' or state eq 'running' and id eq 'x'", NODE_FIELDS) == Or(
        idle, And(running, x)
    )
    assert parse_filter("not state eq 'idle' and id eq 'x'", NODE_FIELDS) == And(Not(idle), x)
    assert parse_filter(
        "(state eq 'idle' or state eq 'running') and id eq 'x'", NODE_FIELDS
    ) == And(Or(idle, running), x)
    assert parse_filter("not (state eq 'idle' or id eq 'x')", NODE_FIELDS) == Not(Or(idle, x))


def test_evaluation_of_states_and_ids() -> None:
    assert matches("state eq 'idle'", node())
    assert not matches("state ne 'idle'", node())
    assert matches("state eq 'running' or state eq 'idle'", node())
    assert not matches("state eq 'idle' and schedulingState eq 'disabled'", node())
    assert matches("id eq 'it''s'", node(id="it's"))
    assert matches("id ge 'n0' and id lt 'n2'", node())


def test_time_literals_in_both_forms_and_exact_round_trip() -> None:
    seen = node(last_boot_ticks=T0 + 1_234_567)  # .1234567 s after T0
    assert matches("lastBootTime gt datetime'2026-11-20T00:00:00Z'", seen)
    assert matches("lastBootTime gt '2026-11-20T00:00:00Z'", seen)
    assert matches("lastBootTime eq datetime'2026-11-20T00:00:00.1234567Z'", seen)
    assert not matches("lastBootTime gt datetime'2026-11-20T00:00:00.1234567Z'", seen)
    assert matches("lastBootTime eq '2026-11-20T01:00:00.1234567+01:00'", seen)
    assert matches("allocationTime le datetime'2026-11-20T00:00:00Z'", node())
    assert matches(f"stateTransitionTime ge '{iso(T0)}'", node())


def test_a_node_without_a_boot_time_matches_no_comparison_on_it() -> None:
    creating = node(state="creating", last_boot_ticks=None)
    for op in OPS:
        assert not matches(f"lastBootTime {op} datetime'2026-11-20T00:00:00Z'", creating)
    assert matches("not (lastBootTime gt datetime'2026-11-20T00:00:00Z')", creating)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("state eq 'deleted'", "invalid state 'deleted'"),
        ("schedulingState eq 'on'", "invalid schedulingState 'on'"),
        ("color eq 'red'", "unknown or unsupported property 'color'"),
        ("state eq", "ends too early"),
        ("(state eq 'idle'", "ends too early"),
        ("state eq 'idle')", "unexpected ')'"),
        ("state = 'idle'", "unexpected character '='"),
        ("state eq idle", "quoted string"),
        ("lastBootTime gt 'yesterday'", "invalid time 'yesterday'"),
        ("lastBootTime gt 5", "unexpected character '5'"),
        ("id eq datetime'2026-01-01T00:00:00Z'", "quoted string"),
        ("state eq 'idle' and", "ends too early"),
        ("and state eq 'idle'", "expected a property name"),
        ("state is 'idle'", "comparison operator"),
        ("   ", "empty"),
        ("(" * 100 + "state eq 'idle'" + ")" * 100, "nested too deeply"),
    ],
)
def test_bad_filters_say_why(text: str, expected: str) -> None:
    assert expected in reason(text)


def test_select() -> None:
    assert parse_select("id, state ,lastBootTime") == ("id", "state", "lastBootTime")
    for bad in ("id,,state", "", "id;state", "a b"):
        with pytest.raises(ODataError):
            parse_select(bad)
    resource = {"id": "a", "url": "u", "state": "idle"}
    assert select(resource, ("state", "id", "missing")) == {"id": "a", "state": "idle"}


# -- Hypothesis -----------------------------------------------------------------------------
_ticks = st.integers(
    min_value=parse_iso("2000-01-01T00:00:00Z"), max_value=parse_iso("2099-12-31T23:59:59Z")
)


@st.composite
def comparisons(draw: st.DrawFn) -> Comparison:
    name = draw(st.sampled_from(sorted(NODE_FIELDS)))
    op = draw(st.sampled_from(OPS))
    if name == "state":
        value: str | int = draw(st.sampled_from(NODE_STATES))
    elif name == "schedulingState":
        value = draw(st.sampled_from(("enabled", "disabled")))
    elif name == "id":
        value = draw(st.text(max_size=8))
    else:
        value = draw(_ticks)
    return Comparison(name, op, value)


expressions = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.builds(Not, inner), st.builds(And, inner, inner), st.builds(Or, inner, inner)
    ),
    max_leaves=10,
)


def _precedence(expr: Expr) -> int:
    return {Or: 1, And: 2, Not: 3, Comparison: 4}[type(expr)]


def render(expr: Expr, spaces: str = " ", datetime_form: bool = True) -> str:
    """Text for ``expr`` with the fewest parentheses that keep its exact tree."""

    def wrap(child: Expr, needed: bool) -> str:
        text = render(child, spaces, datetime_form)
        return f"({spaces}{text}{spaces})" if needed else text

    if isinstance(expr, Comparison):
        if isinstance(expr.value, int):
            literal = f"'{iso(expr.value)}'"
            literal = "datetime" + literal if datetime_form else literal
        else:
            literal = "'" + expr.value.replace("'", "''") + "'"
        return f"{expr.name}{spaces}{expr.op}{spaces}{literal}"
    if isinstance(expr, Not):
        return f"not{spaces}" + wrap(expr.operand, _precedence(expr.operand) < 3)
    word = "and" if isinstance(expr, And) else "or"
    level = _precedence(expr)
    left = wrap(expr.left, _precedence(expr.left) < level)
    right = wrap(expr.right, _precedence(expr.right) <= level)
    return f"{left}{spaces}{word}{spaces}{right}"


_GETTERS = {
    "id": "id",
    "state": "state",
    "schedulingState": "scheduling_state",
    "lastBootTime": "last_boot_ticks",
    "stateTransitionTime": "transition_ticks",
    "allocationTime": "allocation_ticks",
}


def reference(expr: Expr, item: SimpleNamespace) -> bool:
    if isinstance(expr, Comparison):
        actual = getattr(item, _GETTERS[expr.name])
        if actual is None:
            return False
        return bool(getattr(operator, expr.op)(actual, expr.value))
    if isinstance(expr, Not):
        return not reference(expr.operand, item)
    if isinstance(expr, And):
        return reference(expr.left, item) and reference(expr.right, item)
    return reference(expr.left, item) or reference(expr.right, item)


nodes = st.builds(
    node,
    id=st.text(max_size=6),
    state=st.sampled_from(NODE_STATES),
    scheduling_state=st.sampled_from(("enabled", "disabled")),
    last_boot_ticks=st.none() | _ticks,
    transition_ticks=_ticks,
    allocation_ticks=_ticks,
)


@settings(max_examples=300, deadline=None)
@given(expressions, st.sampled_from((" ", "  ", "\t", " \n ")), st.booleans())
def test_random_expressions_round_trip(expr: Expr, spaces: str, datetime_form: bool) -> None:
    assert parse_filter(render(expr, spaces, datetime_form), NODE_FIELDS) == expr


@settings(max_examples=200, deadline=None)
@given(expressions, st.lists(nodes, min_size=1, max_size=5))
def test_random_expressions_evaluate_like_the_reference(
    expr: Expr, items: list[SimpleNamespace]
) -> None:
    predicate = compile_filter(render(expr), NODE_FIELDS)
    for item in items:
        assert predicate(item) == reference(expr, item)


_VOCABULARY = [
    "state",
    "id",
    "lastBootTime",
    "eq",
    "ne",
    "gt",
    "and",
    "or",
    "not",
    "(",
    ")",
    "'idle'",
    "'x'",
    "datetime'2026-01-01T00:00:00Z'",
    "datetime'",
    "'",
    "''",
    "5",
    "'2026-13-01T00:00:00Z'",
    "datetime'2026-02-30T00:00:00Z'",
    "lt",
    "$",
]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40), st.lists(st.sampled_from(_VOCABULARY), max_size=12).map(" ".join)
    )
)
def test_garbage_only_ever_raises_the_parse_error(text: str) -> None:
    try:
        parse_filter(text, NODE_FIELDS)
    except ODataError as exc:
        assert exc.reason
