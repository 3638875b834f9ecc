"""One gate command, run for real: its last lines kept (however much it prints), a program
that cannot start, placeholders and environment, and a timeout that kills its children."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest

from fleet_reimage.engine.gaterun import TAIL_LINES, run_gate
from fleet_reimage.plan.gates import GateSpec

pytestmark = pytest.mark.anyio


def gate(*argv: str, timeout: float = 20.0) -> GateSpec:
    return GateSpec("g", tuple(argv), timeout)


async def test_only_the_last_lines_are_kept_however_much_it_prints(tmp_path: Path) -> None:
    # (no braces: every argument is a template, and "{i}" would be an unknown placeholder)
    script = "import sys\nfor i in range(5000): print('line', i, 'x' * 50)\nsys.exit(7)\n"
    with anyio.fail_after(30):
        outcome = await run_gate(
            gate(sys.executable, "-c", script), {"run": "r1"}, [], cwd=tmp_path
        )
    assert not outcome.passed and outcome.exit_code == 7 and not outcome.timed_out
    assert len(outcome.tail) == TAIL_LINES
    assert outcome.tail[-1].startswith("line 4999 ") and outcome.tail[0].startswith("line 4980 ")


async def test_a_program_that_cannot_start_fails_the_gate_with_why(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        outcome = await run_gate(gate("./no-such-check.sh"), {"run": "r1"}, [], cwd=tmp_path)
    assert not outcome.passed and outcome.exit_code is None
    assert outcome.error is not None and "cannot start './no-such-check.sh'" in outcome.error


async def test_placeholders_and_environment_agree_and_secrets_are_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_BATCH_KEY", "secret")
    monkeypatch.setenv("FLEET_REIMAGE_POOL", "stale")  # ours, from an outer run: not passed on
    script = (
        "import os, sys\n"
        "print(sys.argv[1:])\n"
        "print(os.environ.get('FLEET_REIMAGE_POOL'), os.environ.get('FLEET_REIMAGE_WAVE'))\n"
        "print(os.environ.get('MY_BATCH_KEY'), os.getcwd())\n"
        "print(open(os.environ['FLEET_REIMAGE_NODES_FILE']).read().split())\n"
    )
    spec = gate(sys.executable, "-c", script, "{run}/{wave}", "{nodes_file}")
    real_folder = await anyio.Path(tmp_path).resolve()  # the gate runs in the plan folder
    values = {"run": "r9", "wave": "3"}
    with anyio.fail_after(30):
        outcome = await run_gate(
            spec, values, ["n1", "n2"], cwd=tmp_path, hidden_env={"MY_BATCH_KEY"}
        )
    assert outcome.passed and outcome.exit_code == 0
    argv, env_line, secret_line, nodes = outcome.tail
    assert argv.startswith("['r9/3', '") and "fleet-reimage-gate-" in argv
    assert env_line == "None 3"
    assert secret_line == f"None {real_folder}"
    assert nodes == "['n1', 'n2']"


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The gate starts a grandchild (which would outlive it), says its pid, then hangs.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    spec = gate(sys.executable, "-c", script, timeout=3.0)  # time to print, even when loaded
    with anyio.fail_after(30):
        outcome = await run_gate(spec, {}, [], cwd=tmp_path)
    assert outcome.timed_out and not outcome.passed and outcome.exit_code is None
    grandchild = int(outcome.tail[0])
    with anyio.fail_after(20):  # killed with the group: it ends (a zombie until reaped)
        await anyio.to_thread.run_sync(_until_ended, grandchild, abandon_on_cancel=True)


def _until_ended(pid: int) -> None:
    while _running(pid):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
