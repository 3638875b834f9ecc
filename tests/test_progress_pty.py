"""run under a pseudo-terminal, as an operator sees it: the live display, the log file
beside it, warnings above it, and the questions.

What the terminal *shows* is checked on a terminal emulator (pyte) fed every byte the run
wrote, at the pseudo-terminal's size: a line that the display later erased or overwrote is
not on that screen, whatever the byte stream once held.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pexpect
import pyte
from clihelpers import PYTHON, cli_env, emulator_process
from runhelpers import write_plan

ROWS, COLUMNS = 40, 150

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
        dimensions=(ROWS, COLUMNS),
        encoding="utf-8",
        timeout=60,
    )
    child.logfile_read = io.StringIO()  # every byte it wrote, for the terminal emulator
    return child


def screen(child: pexpect.spawn) -> list[str]:
    """Every line the terminal shows now, scrolled-off ones first (as a person reads it)."""
    terminal = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    pyte.Stream(terminal).feed(child.logfile_read.getvalue())
    scrolled = [
        "".join(line[x].data for x in range(COLUMNS)).rstrip() for line in terminal.history.top
    ]
    lines = scrolled + [line.rstrip() for line in terminal.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def pool_row(lines: list[str], pool: str = "emu/p") -> tuple[int, int, int]:
    """(in flight, awaiting health, healthy) of the pool's last row on the screen."""
    rows = [line for line in lines if re.match(rf"{re.escape(pool)} +\S+ +\d+ ", line)]
    cells = rows[-1].split()
    return int(cells[3]), int(cells[4]), int(cells[5])


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
    # Every node's line went to the log file beside the journal, named first; none on screen.
    lines = screen(child)
    assert lines[0] == (
        "fleet-reimage: logging to j.log (every node's lines; warnings show here; "
        "--log-file - keeps them all on the terminal)"
    )
    assert not [line for line in lines if "node finished" in line]
    logged = [json.loads(line) for line in (tmp_path / "j.log").read_text().splitlines()]
    assert sum(1 for event in logged if event["event"] == "node finished") == 16
    # The summary and the lines after it, whole, at the end of the screen: no log line
    # printed into them (the writer is flushed, and waited for, before the summary).
    end = lines[lines.index(summary.group(0)) :]
    assert [line.split(":")[0] for line in end] == ["run " + summary.group(0)[4:].split(":")[0],
                                                    "  details"]  # fmt: skip


def test_warnings_show_above_the_table_and_node_lines_do_not(tmp_path: Path) -> None:
    pools = [{"id": "p", "nodes": 8}, {"id": "sim", "nodes": 8, "reimage": "refused"}]
    with emulator_process(tmp_path, pools, timings=SLOW) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        child = spawn(tmp_path, "run", str(plan), "--yes", "--journal", "night.db")
        shown = finish(child)
        assert child.exitstatus == 3, shown
    lines = screen(child)
    warned = [i for i, line in enumerate(lines) if "[warning  ] pool stopped" in line]
    assert len(warned) == 1, lines  # once
    said = " ".join(lines[warned[0] : warned[0] + 4])  # wrapped at the terminal's width
    assert "pool=sim" in said and "OperationNotValidOnNode" in said
    headlines = [i for i, line in enumerate(lines) if line.startswith("fleet-reimage reimage run")]
    assert warned[0] < headlines[-1]  # above the table, which is drawn under it
    assert not [line for line in lines if "node finished" in line]
    logged = (tmp_path / "night.log").read_text()
    assert logged.count('"event": "pool stopped"') == 1 and '"event": "node finished"' in logged


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
        question = "wave 1 is complete in every pool: continue the rollout? [yes/no] "
        child.expect(re.escape(question))
        assert re.search(r"^total +16 ", plain(child.before), re.M)  # live during wave 1
        assert sum(emu.reimages().values()) == 2  # held after the canary wave
        # The question comes under a fresh table: the canaries are back, none in progress.
        at_question = screen(child)
        assert at_question[-1] == question.rstrip()
        assert pool_row(at_question) == (0, 0, 2)
        child.sendline("yes")
        shown = finish(child)
        assert child.exitstatus == 0, shown
        assert set(emu.reimages().values()) == {1}
    assert re.search(r"^total +16 ", shown, re.M)  # the display came back after the answer
    assert re.search(r"^run r\S+: finished \(exit 0\): 16 healthy$", shown, re.M)
    # The answer stays on screen, and the display comes back below it, whole: no piece of
    # the old table is left between them, nothing drawn over the question.
    lines = screen(child)
    answered = [i for i, line in enumerate(lines) if line == question + "yes"]
    assert len(answered) == 1, lines
    after = [line for line in lines[answered[0] + 1 :] if line]
    assert after[0].startswith("fleet-reimage reimage run "), after[:3]
    assert pool_row(lines[: answered[0]]) == (0, 0, 2)
