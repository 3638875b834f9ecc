#!/usr/bin/env python3
"""Set-up and the project's commands, for a fresh machine with only python3.

    python3 dev.py demo     a rolling reimage of the demo fleet on the embedded emulator
    python3 dev.py test     the whole test suite (what CI runs)
    python3 dev.py lint     ruff (lint + format check) and mypy --strict
    python3 dev.py bench    the benchmarks in bench/ (see bench/README.md)

Each command creates ./.venv on first use and installs what it needs, pinned by
constraints.txt; later runs reinstall only when pyproject.toml or constraints.txt changed.
Only the standard library is used here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
DEMO_DIR = ROOT / ".demo"


def _digest(extra: str) -> str:
    text = b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt"))
    return hashlib.sha256(text + extra.encode()).hexdigest()


def ensure_env(extra: str = "") -> None:
    """A virtual environment with the package (and ``extra``) installed, up to date."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py itself may run on an older python3
        sys.exit(f"fleet-reimage needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed{'-' + extra if extra else ''}"
    wanted = _digest(extra)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    target = f".[{extra}]" if extra else "."
    print(f"installing fleet-reimage{f' with {extra} extras' if extra else ''} ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in (["--upgrade", "pip"], ["-c", "constraints.txt", "-e", target]):
        # Quiet unless it fails: the build backend's notices are not the user's concern.
        done = subprocess.run([*pip, *step], cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            sys.exit(f"dev.py: pip install {' '.join(step)} failed (exit {done.returncode})")
    stamp.write_text(wanted)


def run(*args: str) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT, check=False).returncode


def demo(extra_args: list[str]) -> int:
    ensure_env()
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    DEMO_DIR.mkdir()
    journal = DEMO_DIR / "journal.db"
    code = run(
        "-m",
        "fleet_reimage",
        "run",
        "plans/demo.yaml",
        "--yes",
        "--journal",
        str(journal),
        "--events",
        str(DEMO_DIR / "events.jsonl"),
        "--log-file",
        str(DEMO_DIR / "log.jsonl"),
        *extra_args,
    )
    meaning = {
        0: "every selected node was reimaged and came back healthy",
        1: "the run finished; some nodes failed (the demo fleet makes a few come back "
        "starttaskfailed on purpose)",
        3: "the run finished but stopped a pool on purpose: the demo's pool 'sim' plays "
        "a service that refuses reimage (409 OperationNotValidOnNode), so the tool stopped "
        "it after its canary's answer, as intended; the other pools accept reimage and "
        "were rolled",
    }
    print()
    print(f"demo: fleet-reimage exited {code}: {meaning.get(code, 'see the output above')}")
    print(
        f"demo: journal {journal.relative_to(ROOT)}, events .demo/events.jsonl, "
        "logs .demo/log.jsonl; try:"
    )
    print(f"  .venv/bin/fleet-reimage status --latest --journal {journal.relative_to(ROOT)}")
    shown = journal.relative_to(ROOT)
    print(f"  .venv/bin/fleet-reimage report --latest --journal {shown} --format markdown")
    return 0 if code in meaning else code


def test(extra_args: list[str]) -> int:
    ensure_env("test")
    return run("-m", "pytest", *extra_args)


def lint(_: list[str]) -> int:
    ensure_env("test")
    steps = (("-m", "ruff", "check", "."), ("-m", "ruff", "format", "--check", "."), ("-m", "mypy"))
    failed = [" ".join(step[1:]) for step in steps if run(*step) != 0]
    if failed:
        print(f"lint failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def bench(extra_args: list[str]) -> int:
    ensure_env("test,bench")
    return run("bench/run.py", *extra_args)


COMMANDS = {"demo": demo, "test": test, "lint": lint, "bench": bench}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
