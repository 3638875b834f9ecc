"""``action: replace`` in the plan, and its step arithmetic (pure)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.errors import InputError
from fleet_reimage.plan.load import parse_plan
from fleet_reimage.plan.model import Action, NodeOption
from fleet_reimage.rollout.replace import (
    REMOVE_BATCH,
    chunks,
    lowest_capacity,
    plan_steps,
    removals_after_surge,
    step_limit,
    surge_nodes,
)
from fleet_reimage.units import Amount

HEAD = """\
version: 1
name: swap
action: {action}
option: taskcompletion
accounts:
  - name: west
    endpoint: https://acct.westus2.batch.azure.com
    auth: {{type: shared-key, account: acct, key_env: BATCH_KEY}}
    pools: [{{match: "render-*"}}]
rollout:
  max_unavailable: 2
"""


def parse(text: str, folder: Path):  # type: ignore[no-untyped-def]
    return parse_plan(text, folder / "plan.yaml")


def test_replace_reads_surge_autoscale_and_the_deallocation_option(tmp_path: Path) -> None:
    plan = parse(HEAD.format(action="replace") + '  surge: "25%"\n  autoscale: allow\n', tmp_path)
    assert plan.action is Action.REPLACE and plan.option is NodeOption.TASKCOMPLETION
    assert plan.rollout.surge == Amount(Fraction(25), percent=True)
    assert plan.rollout.autoscale == "allow"
    assert not plan.warnings


def test_replace_defaults_to_no_surge_and_refusing_auto_scaled_pools(tmp_path: Path) -> None:
    plan = parse(HEAD.format(action="replace"), tmp_path)
    assert plan.rollout.surge.of(10) == 0 and plan.rollout.autoscale == "refuse"


def test_surge_on_a_reimage_plan_is_a_warning_with_its_line(tmp_path: Path) -> None:
    plan = parse(HEAD.format(action="reimage") + "  surge: 2\n", tmp_path)
    [warning] = plan.warnings
    assert warning.line == 12 and "replace only" in warning.message


@pytest.mark.parametrize(
    ("extra", "line", "words"),
    [
        ("  autoscale: maybe\n", 12, "refuse, allow"),
        ("  surge: -1\n", 12, "negative"),
        ("  soak: 1m\n", 12, "remove rollout.soak"),
        ("  drain: {timeout: 5m, then: requeue}\n", 12, "remove rollout.drain"),
    ],
)
def test_bad_replace_keys_are_errors_with_their_line(
    tmp_path: Path, extra: str, line: int, words: str
) -> None:
    with pytest.raises(InputError) as caught:
        parse(HEAD.format(action="replace") + extra, tmp_path)
    [problem] = [p for p in caught.value.problems if p.severity == "error"]
    assert problem.line == line and words in problem.message


@given(
    waves=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    extra=st.integers(0, 10),
    max_unavailable=st.integers(1, 10),
    surge=st.integers(0, 10),
)
def test_plan_steps_replace_every_node_and_stay_within_the_limit(
    waves: list[int], extra: int, max_unavailable: int, surge: int
) -> None:
    target = sum(waves) + extra  # the pool holds its selected nodes and maybe more
    steps = plan_steps(waves, target, max_unavailable, surge)
    assert sum(s.count for s in steps) == sum(waves)
    for wave, size in enumerate(waves):
        assert sum(s.count for s in steps if s.wave == wave) == size
    assert all(s.count <= (surge or max_unavailable) for s in steps)
    lowest = lowest_capacity(steps, target)
    assert lowest >= target - max_unavailable
    assert lowest == target if surge else lowest >= target - max_unavailable


@given(batch=st.integers(0, 50), ready=st.integers(0, 50), room=st.integers(-5, 50))
def test_a_surge_step_never_takes_capacity_below_what_room_allows(
    batch: int, ready: int, room: int
) -> None:
    ready = min(ready, batch)
    leaving = removals_after_surge(batch, ready, room)
    assert 0 <= leaving <= batch
    assert leaving - ready <= max(0, room)  # old nodes gone without a ready replacement
    assert leaving >= ready  # every ready new node lets one old node go


def test_step_limit_and_surge_amounts() -> None:
    assert step_limit(admit=5, surge=2, use_surge=True) == 2
    assert step_limit(admit=4, surge=2, use_surge=False) == 2  # room was m + s
    assert surge_nodes(Amount(Fraction(10), percent=True), 30) == 3
    assert surge_nodes(Amount(Fraction(0), percent=False), 30) == 0


def test_removals_go_in_calls_of_at_most_100_ids() -> None:
    ids = [f"n{i}" for i in range(250)]
    calls = chunks(ids)
    assert [len(c) for c in calls] == [REMOVE_BATCH, REMOVE_BATCH, 50]
    assert [i for c in calls for i in c] == ids
