"""What a changed plan changes in a resumed run (pure): every changed setting is listed, with
whether it takes effect and why; what a run cannot take is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plan_load import MINIMAL

from fleet_reimage.plan.changes import (
    PlanChangeRefused,
    check_resumable,
    effective_plan,
    plan_changes,
)
from fleet_reimage.plan.load import parse_plan
from fleet_reimage.plan.model import Plan

SECOND_ACCOUNT = """\
  - name: east
    endpoint: https://acct2.eastus.batch.azure.com
    auth: {type: shared-key, account: acct2, key_env: EAST_KEY}
    pools:
      - match: "*"
"""


def plan(text: str) -> Plan:
    return parse_plan(text, Path("/plans/night.yaml"))


def test_each_changed_setting_says_whether_it_takes_effect() -> None:
    old = plan(MINIMAL + 'rollout: {waves: [1, "100%"], max_unavailable: "10%"}\n')
    edited = MINIMAL.replace('"render-*"', '"render-*"\n        nodes: {exclude: ["tvm-9*"]}')
    new = plan(
        edited.replace("key_env: BATCH_KEY", "key_env: OTHER_KEY")
        + 'rollout: {waves: [2, "100%"], max_unavailable: "30%", pause_between_waves: 5m}\n'
        + "execution: {concurrency: 8}\n"
    )
    lines = [change.line() for change in plan_changes(old, new)]
    assert lines == [
        "accounts[west].auth: type shared-key, account acct, key_env BATCH_KEY -> type "
        "shared-key, account acct, key_env OTHER_KEY: takes effect: the connection is made "
        "from the plan at each start",
        "accounts[west].pools: render-* (include [*], states idle, running) -> render-* "
        "(include [*], exclude [tvm-9*], states idle, running): does NOT take effect: the "
        "run's nodes were selected when it was created; select others in a new run, or "
        "narrow one with --pool / --nodes-from",
        "rollout.waves: [1, 100%] -> [2, 100%]: does NOT take effect: each node's wave was "
        "fixed when the run was created, so the run keeps its ladder; a new ladder needs a "
        "new run",
        "rollout.max_unavailable: 10% -> 30%: takes effect: recomputed for each pool from the "
        "run's nodes",
        "rollout.pause_between_waves: 0s -> 5m: takes effect: read from the plan at each start",
        "execution.concurrency: 64 -> 8: takes effect: read from the plan at each start",
        "execution.per_account_concurrency: 32 -> 8: takes effect: read from the plan at each "
        "start",
    ]
    kept = effective_plan(old, new)
    assert kept.rollout.waves == old.rollout.waves  # the run's own ladder
    assert kept.rollout.max_unavailable == new.rollout.max_unavailable


def test_an_overridden_setting_is_not_reached_by_the_plan() -> None:
    old, new = plan(MINIMAL), plan(MINIMAL + "execution: {concurrency: 8}\n")
    changes = plan_changes(old, new, overridden={"execution.concurrency": "--concurrency 4"})
    assert changes[0].line() == (
        "execution.concurrency: 64 -> 8: does NOT take effect: overridden by --concurrency 4 on "
        "a resume; give that option again to change it"
    )


def test_accounts_added_or_removed() -> None:
    two = plan(MINIMAL.replace("accounts:\n", "accounts:\n" + SECOND_ACCOUNT))
    one = plan(MINIMAL)
    assert [c.line() for c in plan_changes(one, two)] == [
        "accounts[east]: (none) -> added: does NOT take effect: the run's nodes were selected "
        "when it was created; select others in a new run, or narrow one with --pool / "
        "--nodes-from"
    ]
    check_resumable(two, one, accounts_in_run={"west"})  # east had no node in the run
    with pytest.raises(PlanChangeRefused, match="no longer has account east, which has nodes"):
        check_resumable(two, one, accounts_in_run={"west", "east"})


def test_a_run_does_one_action() -> None:
    with pytest.raises(PlanChangeRefused, match="action changed from reimage to reboot"):
        check_resumable(plan(MINIMAL), plan(MINIMAL + "action: reboot\n"), {"west"})
