"""Running fleet-reimage and the emulator as a user would: in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runhelpers import KEY, KEY_ENV, fleet_text

PYTHON = sys.executable


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env[KEY_ENV] = KEY
    env.pop("FLEET_REIMAGE_JOURNAL", None)
    env.update(extra)
    return env


def fleet_reimage(
    *args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "fleet_reimage", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_fleet_reimage(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "fleet_reimage", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_events(
    process: subprocess.Popen[str], events: Path, kind: str, count: int, timeout: float = 60
) -> None:
    """Return once the ``--events`` file holds ``count`` events of ``kind`` (or the process
    ended): a test synchronises on what the run did, not on how long it took."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if events.exists():
            kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
            if kinds.count(kind) >= count:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} x {kind} in {events} within {timeout:g} s")
        time.sleep(0.02)


class EmulatorProcess:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_emulator/stats", timeout=10) as answer:
            data: dict[str, Any] = json.load(answer)
        return data

    def reimages(self) -> dict[str, int]:
        return {n["id"]: n["reimages"] for n in self.stats()["nodes"]}


@contextmanager
def emulator_process(
    folder: Path, pools: list[dict[str, Any]], **sections: Any
) -> Iterator[EmulatorProcess]:
    """The emulator in its own process, so it outlives runners that are killed."""
    fleet = folder / "fleet.yaml"
    fleet.write_text(fleet_text(pools, **sections), encoding="utf-8")
    process = subprocess.Popen(
        [PYTHON, "-m", "fleet_reimage.emulator", "--fleet", str(fleet), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Batch emulator listening on http://"), line
        yield EmulatorProcess(process, line.split()[-1])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
