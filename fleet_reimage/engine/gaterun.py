"""Running one gate command: argv (never a shell), a deadline, and the last lines it printed.

The command's ``{...}`` placeholders are filled, and the same values are given as
``FLEET_REIMAGE_RUN``, ``_ACCOUNT``, ``_POOL``, ``_WAVE`` and ``_NODES_FILE`` in its
environment (a placeholder with no value for the gate is left out of both). The nodes file
holds one node per line, is readable by its owner only (0600) and is removed afterwards.
The command runs in the plan's folder, in a session of its own, so that at its timeout
(or when the run is aborted) the whole process group is killed, not just the first process.
Its standard output and error are read together; only the last ``TAIL_LINES`` lines are
kept, each cut to ``MAX_LINE`` characters, however much it prints.

The process is started and awaited with anyio (``open_process``); the nodes file is written
and removed in a worker thread: nothing here blocks the event loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process

from fleet_reimage.plan.gates import PLACEHOLDERS, GateSpec, fill

TAIL_LINES = 20
MAX_LINE = 400
ENV_PREFIX = "FLEET_REIMAGE_"
GATE_ENV = frozenset(ENV_PREFIX + name.upper() for name in PLACEHOLDERS)


@dataclass(frozen=True, slots=True)
class GateOutcome:
    name: str
    passed: bool
    exit_code: int | None  # None: it timed out or could not start
    timed_out: bool
    seconds: float
    tail: tuple[str, ...]  # the last lines it printed (stdout and stderr together)
    error: str | None = None  # why it could not start

    def summary(self) -> str:
        """Why it did not pass, in a few words (or that it passed)."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {self.seconds:.1f}s (killed)"
        return f"exit {self.exit_code}"

    def event_data(self) -> dict[str, object]:
        data: dict[str, object] = {
            "gate": self.name,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "seconds": round(self.seconds, 3),
        }
        if not self.passed:
            data["why"] = self.summary()
            data["output"] = list(self.tail)
        return data


async def run_gate(
    gate: GateSpec,
    values: Mapping[str, str],
    nodes: Sequence[str],
    *,
    cwd: Path,
    hidden_env: Collection[str] = (),
) -> GateOutcome:
    """Run ``gate`` with ``values`` for its placeholders (and ``nodes`` in its nodes file);
    ``hidden_env``: variables of ours the command must not see (the plan's secrets)."""
    path = await anyio.to_thread.run_sync(write_nodes_file, list(nodes))
    try:
        filled = {**values, "nodes_file": path}
        argv = [fill(arg, filled) for arg in gate.command]
        return await _run(gate, argv, _environment(filled, hidden_env), cwd)
    finally:
        await anyio.to_thread.run_sync(_remove, path)


def _environment(values: Mapping[str, str], hidden: Collection[str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in hidden and key not in GATE_ENV  # none left over from an outer run
    }
    env.update({ENV_PREFIX + key.upper(): value for key, value in values.items()})
    return env


async def _run(gate: GateSpec, argv: list[str], env: dict[str, str], cwd: Path) -> GateOutcome:
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        process = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as error:
        why = f"cannot start {argv[0]!r}: {error.strerror or error}"
        return GateOutcome(gate.name, False, None, False, 0.0, (), why)
    code: int | None = None
    try:
        with anyio.move_on_after(gate.timeout):
            assert process.stdout is not None
            await _read_tail(process.stdout, tail)
            code = await process.wait()
    finally:
        if process.returncode is None:  # timed out, or the run was aborted
            _kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.wait()
        with anyio.CancelScope(shield=True):
            await process.aclose()
    seconds = time.monotonic() - started
    return GateOutcome(gate.name, code == 0, code, code is None, seconds, tuple(tail))


async def _read_tail(stream: ByteReceiveStream, tail: deque[str]) -> None:
    """Read the stream to its end, keeping its last lines (a partial line is kept short)."""
    partial = b""
    async for chunk in stream:
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()[-4 * MAX_LINE :]
        tail.extend(_text(line) for line in lines[-TAIL_LINES:])
    if partial:
        tail.append(_text(partial))


def _text(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE] + "..."


def _kill_group(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


def write_nodes_file(nodes: list[str]) -> str:
    """A new file (0600) holding one node per line; returns its path."""
    handle, path = tempfile.mkstemp(prefix="fleet-reimage-gate-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as out:  # mkstemp creates it 0600
        out.writelines(f"{node}\n" for node in nodes)
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
