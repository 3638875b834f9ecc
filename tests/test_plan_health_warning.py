"""A plan that does not wait for health is warned that max_unavailable then means less."""

from __future__ import annotations

from pathlib import Path

from fleet_reimage.plan.load import parse_plan

BASE = """version: 1
name: w
accounts:
  - name: x
    endpoint: https://x.westus2.batch.azure.com
    auth: {type: shared-key, account: xbatch, key_env: K}
    pools: [{match: "*"}]
rollout:
"""


def warnings_of(rollout: str) -> list[str]:
    plan = parse_plan(BASE + rollout, Path("w.yaml"), environ={"K": "a2V5"})
    return [w.message for w in plan.warnings]


def test_no_health_wait_with_a_limit_is_warned_with_its_line() -> None:
    plan = parse_plan(
        BASE + "  max_unavailable: 3\n  health: {wait: false}\n",
        Path("w.yaml"),
        environ={"K": "a2V5"},
    )
    (warning,) = [w for w in plan.warnings if "max_unavailable" in w.message]
    assert warning.line == 9 and "requests in flight" in warning.message


def test_no_warning_when_waiting_or_when_the_limit_is_everything() -> None:
    assert not any("in flight" in w for w in warnings_of("  max_unavailable: 3\n"))
    assert not any(
        "in flight" in w
        for w in warnings_of('  max_unavailable: "100%"\n  health: {wait: false}\n')
    )
