"""The YAML node budget holds while the tree is built, not after: a huge flat document is
refused once the budget is spent, where the loader stopped reading, never after composing
millions of nodes first."""

from __future__ import annotations

import pytest

from fleet_reimage.errors import InputError
from fleet_reimage.yamlsafe import MAX_DOCUMENT_BYTES, MAX_EXPANDED_NODES, load_marked_yaml

SMALL = 1000  # a budget for the tests that need not parse 200,000 values to make their point


def refusal(text: str, budget: int = MAX_EXPANDED_NODES) -> tuple[int, int, str]:
    with pytest.raises(InputError) as caught:
        load_marked_yaml(text, "big.yaml", budget=budget)
    (problem,) = caught.value.problems
    assert problem.line is not None and problem.column is not None
    return problem.line, problem.column, problem.message


def test_a_flat_list_of_four_mib_is_refused_where_the_budget_ran_out() -> None:
    items = (MAX_DOCUMENT_BYTES - 16) // 2  # ~2.1 million values on one line
    text = "[" + ",".join("0" for _ in range(items)) + "]\n"
    line, column, message = refusal(text)
    assert "too many values" in message and f"limit {MAX_EXPANDED_NODES}" in message
    # Item k (1-based) starts at column 2k: the loader stopped right after the budget's
    # last value, not at the end of the file (column ~4 million) nor at its start.
    assert line == 1
    assert 2 * MAX_EXPANDED_NODES <= column <= 2 * (MAX_EXPANDED_NODES + 2), column


def test_a_block_list_is_refused_at_the_line_where_the_budget_ran_out() -> None:
    text = "values:\n" + "  - 1\n" * (SMALL * 50)
    line, _, message = refusal(text, SMALL)
    assert f"too many values (limit {SMALL}" in message
    # Line 1 holds the mapping, its key and the list (3 nodes); value k is on line k + 1.
    assert line == SMALL - 3 + 2, line


def test_aliases_count_as_the_nodes_they_expand_to() -> None:
    # Level n expands to 2**(n + 2) - 1 nodes (a list of two aliases to level n - 1), so
    # levels 0..14 hold about 131,000 nodes, within the budget; two more aliases to level
    # 14 (65,535 nodes each) are past it, though the file is under 1 KiB.
    lines = ["a0: &a0 [0, 0]"]
    for level in range(1, 15):
        lines.append(f"a{level}: &a{level} [*a{level - 1}, *a{level - 1}]")
    within = "\n".join(lines) + "\n"
    assert len(load_marked_yaml(within, "ok.yaml")) == 15
    over = within + "b: [*a14, *a14]\n"
    line, column, message = refusal(over)
    assert "too many values" in message and "billion-laughs" in message
    assert (line, column) == (16, 11)  # the second alias spent the budget, not the first


def test_exactly_the_budget_loads_and_one_more_is_refused() -> None:
    # One mapping node, one key, one list, and values up to the budget exactly.
    values = SMALL - 3
    text = "v: [" + ",".join("1" for _ in range(values)) + "]\n"
    assert len(load_marked_yaml(text, "ok.yaml", budget=SMALL)["v"]) == values
    over = text.replace("[", "[1,", 1)
    line, column, message = refusal(over, SMALL)
    assert (line, column) == (1, 5 + 2 * values)  # the last value, the one past the budget
    assert "reading stopped here" in message
