"""``rollout.gates`` and ``rollout.soak`` in the plan: the form a gate must have (argv, known
placeholders, a positive timeout, unique names), each mistake at its line; ``validate``
exits 2 with file:line; ``plan`` lists the gates and the soak."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from clihelpers import emulator_process, fleet_reimage
from hypothesis import given
from hypothesis import strategies as st
from runhelpers import write_plan

from fleet_reimage.errors import InputError, Problem
from fleet_reimage.plan import parse_plan
from fleet_reimage.plan.changes import plan_changes
from fleet_reimage.plan.gates import PLACEHOLDERS, GatePer, GateWhen, fill, placeholder_problem

PLAN = """\
version: 1
name: gated
accounts:
  - name: west
    endpoint: https://acct.westus2.batch.azure.com
    auth: {type: shared-key, account: acct, key_env: BATCH_KEY}
    pools: [{match: "render-*"}]
rollout:
  waves: [1, "100%"]
"""


def parse(rollout_tail: str, tmp_path: Path) -> object:
    return parse_plan(PLAN + rollout_tail, tmp_path / "plan.yaml", environ={"BATCH_KEY": "x"})


def problems(rollout_tail: str, tmp_path: Path) -> list[Problem]:
    with pytest.raises(InputError) as caught:
        parse(rollout_tail, tmp_path)
    return caught.value.errors


def test_gates_and_soak_are_read_with_their_defaults(tmp_path: Path) -> None:
    plan = parse_plan(
        PLAN
        + "  soak: 10m\n"
        + "  gates:\n"
        + '    - {name: slo, command: ["./check-slo.sh", "--pool", "{pool}"], timeout: 5m}\n'
        + '    - {name: smoke, command: ["smoke", "{run}"], timeout: 30s, when: after_run}\n'
        + '    - {name: ticket, command: [tkt, "{wave}"], timeout: 1m, per: step}\n',
        tmp_path / "plan.yaml",
        environ={"BATCH_KEY": "x"},
    )
    rollout = plan.rollout
    assert rollout.soak == 600.0
    slo, smoke, ticket = rollout.gates
    assert slo.command == ("./check-slo.sh", "--pool", "{pool}") and slo.timeout == 300.0
    assert (slo.when, slo.per) == (GateWhen.BEFORE_WAVE, GatePer.POOL)
    assert (smoke.when, ticket.per) == (GateWhen.AFTER_RUN, GatePer.STEP)
    assert slo.line == 12 and smoke.line == 13  # PLAN is 9 lines, then soak, gates


# (rollout lines, 1-based line of the error within them, words the message holds)
BAD: list[tuple[str, int, str]] = [
    ('  gates: [{name: a, command: "./check.sh --pool x", timeout: 1m}]\n', 1, "never a shell"),
    ("  gates: [{name: a, command: [], timeout: 1m}]\n", 1, "the list is empty"),
    ("  gates: [{name: a, command: [check, 3], timeout: 1m}]\n", 1, "(quote it)"),
    ('  gates: [{name: a, command: [check, "{node}"], timeout: 1m}]\n', 1, "unknown placeholder"),
    ('  gates: [{name: a, command: [check, "{pool"], timeout: 1m}]\n', 1, "malformed"),
    ("  gates: [{name: a, command: [check], timeout: 0s}]\n", 1, "longer than 0s"),
    ("  gates: [{name: a, command: [check], timeout: 30}]\n", 1, "has no unit"),
    ("  gates: [{name: a, command: [check]}]\n", 1, "missing required key 'timeout'"),
    ("  gates: [{name: a, command: [check], timeout: 1m, when: after}]\n", 1, "before_wave"),
    (
        "  gates:\n"
        "    - {name: a, command: [x], timeout: 1m}\n"
        "    - {name: a, command: [y], timeout: 1m}\n",
        3,
        "used twice (first on line",
    ),
    (
        '  gates: [{name: a, command: [x, "{pool}"], timeout: 1m, when: after_run}]\n',
        1,
        "no value here",
    ),
    ('  gates: [{name: a, command: [x, "{pool}"], timeout: 1m, per: step}]\n', 1, "no value here"),
    ("  gates: [{name: a, command: [x], timeout: 1m, shell: true}]\n", 1, "unknown key 'shell'"),
    ("  soak: soon\n", 1, "a duration"),
    ("  soak: 2d\n", 1, "must be from"),
]


@pytest.mark.parametrize(("lines", "line", "words"), BAD)
def test_a_bad_gate_or_soak_is_one_error_at_its_line(
    lines: str, line: int, words: str, tmp_path: Path
) -> None:
    (problem,) = problems(lines, tmp_path)
    assert problem.line == PLAN.count("\n") + line
    assert words in problem.message, problem.message


def test_soak_needs_the_health_gate(tmp_path: Path) -> None:
    (problem,) = problems("  soak: 1m\n  health: {wait: false}\n", tmp_path)
    assert "health.wait" in problem.message and problem.path == "rollout.soak"


def test_validate_exits_2_with_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + '  gates: [{name: a, command: [check, "{nodes}"], timeout: 1m}]\n')
    result = fleet_reimage("validate", str(plan), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{plan}:10:" in result.stderr and "unknown placeholder {nodes}" in result.stderr
    assert "Traceback" not in result.stderr


@given(st.text(alphabet="{}abcdeklnoprstuvw_!:", max_size=16))
def test_an_argument_the_check_accepts_always_fills_and_one_it_refuses_never_does(
    arg: str,
) -> None:
    values = {name: f"<{name}>" for name in PLACEHOLDERS}
    if placeholder_problem(arg, PLACEHOLDERS) is None:
        filled = fill(arg, values)
        assert not any(
            f"{{{name}}}" in filled for name in PLACEHOLDERS if f"{{{{{name}}}}}" not in arg
        )
    else:
        with pytest.raises((KeyError, ValueError, IndexError, AttributeError)):
            fill(arg, values)


def test_plan_and_run_show_every_gate_and_a_failed_gate_exits_3_with_its_output(
    tmp_path: Path,
) -> None:
    check = tmp_path / "check.py"
    check.write_text("print('SLO burn rate 14x over budget')\nraise SystemExit(1)\n")
    gate = json.dumps([sys.executable, "check.py", "--pool", "{pool}"])  # relative: plan folder
    rollout = f"""
        waves: ["100%"]
        max_unavailable: "100%"
        soak: 2s
        health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
        gates: [{{name: slo, command: {gate}, timeout: 30s}}]
    """
    with emulator_process(tmp_path, [{"id": "p", "nodes": 3}]) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout)
        shown = fleet_reimage("plan", str(plan), cwd=tmp_path)
        as_json = fleet_reimage("plan", str(plan), "--output", "json", cwd=tmp_path)
        journal = str(tmp_path / "j.db")
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", journal, cwd=tmp_path)
        status = fleet_reimage("status", "--latest", "--journal", journal, cwd=tmp_path)
        status_json = fleet_reimage(
            "status", "--latest", "--journal", journal, "--output", "json", cwd=tmp_path
        )
        sent = emu.stats()["requests"]["mutating"]
    assert shown.returncode == 0, shown.stderr
    assert "soak 2s" in shown.stdout
    assert f"slo: {sys.executable} check.py --pool {{pool}} (before each wave, per pool" in (
        shown.stdout
    )
    schedule = json.loads(as_json.stdout)
    assert schedule["soak"] == 2.0 and schedule["gates"][0]["command"][1:] == [
        "check.py",
        "--pool",
        "{pool}",
    ]
    assert "slo: " in ran.stderr  # --yes: the gates are still shown before anything runs
    assert ran.returncode == 3 and sent == 0
    assert "gate 'slo' failed before wave 1 of emu/p (exit 1)" in ran.stdout
    assert "Gate failed (emu/p): 'slo' before wave 1 failed (exit 1)" in status.stdout
    assert "  | SLO burn rate 14x over budget" in status.stdout
    failed = json.loads(status_json.stdout)["gate_failed"]
    assert failed == {
        "pool": "emu/p",
        "what": "'slo' before wave 1 failed (exit 1)",
        "output": ["SLO burn rate 14x over budget"],
    }


def test_a_resumed_run_takes_changed_gates_and_soak_and_says_so(tmp_path: Path) -> None:
    gate = '  gates: [{name: slo, command: [check, "{pool}"], timeout: 1m}]\n'
    old = parse(gate + "  soak: 5m\n", tmp_path)
    new = parse(gate.replace("1m", "2m") + "  soak: 10m\n", tmp_path)
    changes = {c.key: c for c in plan_changes(old, new)}  # type: ignore[arg-type]
    assert set(changes) == {"rollout.gates", "rollout.soak"}
    assert (
        changes["rollout.gates"].now
        == "[slo: check {pool} (before each wave, per pool, timeout 120s)]"
    )
    assert changes["rollout.soak"].was == "5m" and changes["rollout.soak"].applies
