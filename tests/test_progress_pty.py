"""run under a pseudo-terminal, as an operator sees it: the live display and the questions."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect
from clihelpers import PYTHON, cli_env, emulator_process
from runhelpers import write_plan

SLOW = {"reimaging": "400ms", "starting": "200ms"}
ROLLOUT = """
    waves: [2, "100%"]
    max_unavailable: 4
    health: {wait: true, poll_interval: 100ms, timeout: 30s}
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def spawn(tmp_path: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        PYTHON,
        ["-m", "fleet_reimage", *args],
        cwd=str(tmp_path),
        env=cli_env(TERM="xterm-256color"),
        dimensions=(40, 150),
        encoding="utf-8",
        timeout=60,
    )
    return child


def finish(child: pexpect.spawn) -> str:
    """Wait for the end; returns what the terminal showed since the last match, as text."""
    child.expect(pexpect.EOF)
    child.close()
    return plain(child.before)


def plain(shown: object) -> str:
    """Terminal output without escape codes and carriage returns (rich styles every cell)."""
    return ANSI.sub("", str(shown or "")).replace("\r", "")


def test_live_display_on_a_terminal_then_the_summary(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 16}], timings=SLOW) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        child = spawn(tmp_path, "run", str(plan), "--yes", "--journal", "j.db")
        shown = finish(child)
        assert child.exitstatus == 0, shown
        assert set(emu.reimages().values()) == {1}
    frames = re.findall(r"fleet-reimage reimage run r\S+ +(\d+)/16 finished", shown)
    assert len(frames) >= 3, shown  # redrawn while it ran, not printed once
    assert frames[-1] == "16" and int(frames[0]) < 16
    assert re.search(r"^emu/p +1/2 +16 ", shown, re.M)  # a pool line in wave 1 of 2
    assert re.search(r"^emu/p +done +16 ", shown, re.M)  # ... and at the end
    assert re.search(r"^total +16 ", shown, re.M)
    summary = re.search(r"^run r\S+: finished \(exit 0\): 16 healthy$", shown, re.M)
    assert summary is not None
    assert shown.rindex("16/16 finished (100%)") < summary.start()  # the last frame stays


def test_questions_are_asked_on_the_terminal_and_answered(tmp_path: Path) -> None:
    """Without --yes: confirm the start, then the checkpoint (the live display steps aside)."""
    with emulator_process(tmp_path, [{"id": "p", "nodes": 16}], timings=SLOW) as emu:
        rollout = ROLLOUT + "    confirm_after_wave: 1\n"
        plan = write_plan(tmp_path, emu.url, rollout=rollout)
        child = spawn(tmp_path, "run", str(plan), "--journal", "j.db")
        child.expect(r"Reimage 16 nodes in 1 pool\? \[yes/no\] ")  # "1 pool", not "1 pools"
        assert "16 of 16 nodes selected" in plain(child.before)  # the schedule comes first
        assert emu.stats()["requests"]["mutating"] == 0  # nothing before the answer
        child.sendline("yes")
        child.expect(r"wave 1 is complete in every pool: continue the rollout\? \[yes/no\] ")
        assert re.search(r"^total +16 ", plain(child.before), re.M)  # live during wave 1
        assert sum(emu.reimages().values()) == 2  # held after the canary wave
        child.sendline("yes")
        shown = finish(child)
        assert child.exitstatus == 0, shown
        assert set(emu.reimages().values()) == {1}
    assert re.search(r"^total +16 ", shown, re.M)  # the display came back after the answer
    assert re.search(r"^run r\S+: finished \(exit 0\): 16 healthy$", shown, re.M)
