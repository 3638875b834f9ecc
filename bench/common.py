"""What every benchmark shares: the emulator in its own process, plans, timed child processes.

Everything talks to 127.0.0.1 only, every child process has a timeout, and every figure is
measured in the same command that prints it. Children are timed from just before they are
started to the moment ``wait4`` reaps them, and ``wait4`` also gives each child's own CPU
time and peak RSS (not its siblings').
"""

from __future__ import annotations

import argparse
import base64
import compileall
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PYTHON = sys.executable
# A PUBLIC TEST KEY for the emulator only (64 bytes 0x40..0x7f); it protects nothing.
KEY = base64.b64encode(bytes(range(64, 128))).decode()
KEY_ENV = "FR_BENCH_BATCH_KEY"
ACCOUNT = "bench"
API_VERSION = "2024-07-01.20.0"
EMULATOR_CPU = 0  # with BENCH_PIN=1 the emulator is pinned to this core, clients to the rest


def client_cpus() -> set[int] | None:
    """The cores a client runs on: every core but the emulator's (None: do not pin).

    Off by default: on a shared machine, another process busy on a pinned core slows the
    pinned benchmark process more than the scheduler's free choice does.
    """
    if not os.environ.get("BENCH_PIN") or not hasattr(os, "sched_setaffinity"):
        return None
    cores = os.sched_getaffinity(0)
    rest = cores - {EMULATOR_CPU}
    return rest or None


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env[KEY_ENV] = KEY
    env.pop("FLEET_REIMAGE_JOURNAL", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


# --- fleets and plans ---------------------------------------------------------------------


def pools_of(total: int, count: int, prefix: str = "pool") -> list[dict[str, Any]]:
    """``total`` nodes in ``count`` pools of (almost) equal size, all idle."""
    base, extra = divmod(total, count)
    return [
        {
            "id": f"{prefix}-{i:03d}",
            "nodes": base + (1 if i < extra else 0),
            "states": {"idle": 1.0},
        }
        for i in range(count)
    ]


def fleet_text(
    pools: list[dict[str, Any]],
    *,
    timings: dict[str, str] | None = None,
    faults: dict[str, Any] | None = None,
    seed: int = 1,
) -> str:
    doc: dict[str, Any] = {
        "account": {"name": ACCOUNT, "key": KEY},
        "seed": seed,
        "pools": pools,
        # Nodes are idle again at once: the benchmark measures requests, not reimaging.
        "timings": timings
        or {"reimaging": "0s", "rebooting": "0s", "starting": "0s", "waitingforstarttask": "0s"},
    }
    if faults:
        doc["faults"] = faults
    return yaml.safe_dump(doc, sort_keys=False)


def plan_text(
    endpoint: str,
    *,
    name: str = "bench",
    action: str = "reimage",
    waves: str = '["100%"]',
    max_unavailable: str = '"100%"',
    health: str = "{wait: false}",
    failure_budget: str = '"100%"',
    concurrency: int = 64,
    per_account: int | None = None,
    request_timeout: str = "30s",
    retry: str = "{max_attempts: 8, initial_backoff: 100ms, max_backoff: 2s}",
) -> str:
    return f"""version: 1
name: {name}
action: {action}
option: requeue
accounts:
  - name: bench
    endpoint: {endpoint}
    auth: {{type: shared-key, account: {ACCOUNT}, key_env: {KEY_ENV}}}
    pools: [{{match: "*"}}]
rollout:
  waves: {waves}
  max_unavailable: {max_unavailable}
  health: {health}
  failure_budget: {failure_budget}
execution:
  concurrency: {concurrency}
  per_account_concurrency: {per_account or concurrency}
  request_timeout: {request_timeout}
  retry: {retry}
"""


# --- the emulator in its own process ------------------------------------------------------


class EmulatorProcess:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def stats(self, nodes: bool = True) -> dict[str, Any]:
        query = "" if nodes else "?nodes=false"
        with urllib.request.urlopen(f"{self.url}/_emulator/stats{query}", timeout=60) as answer:
            data: dict[str, Any] = json.load(answer)
        return data

    def reimage_counts(self) -> dict[tuple[str, str], int]:
        return {(n["pool"], n["id"]): n["reimages"] for n in self.stats()["nodes"]}


@contextmanager
def emulator(folder: Path, text: str, *, pin: bool = True) -> Iterator[EmulatorProcess]:
    """``python -m fleet_reimage.emulator`` on a free port, stopped (SIGTERM, then KILL) after."""
    folder.mkdir(parents=True, exist_ok=True)
    fleet = folder / "fleet.yaml"
    fleet.write_text(text, encoding="utf-8")
    port_file = folder / "emulator.port"
    port_file.unlink(missing_ok=True)
    log = (folder / "emulator.log").open("wb")
    command = [PYTHON, "-m", "fleet_reimage.emulator", "--fleet", str(fleet), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=child_env(),
    )
    if pin and client_cpus() is not None:
        os.sched_setaffinity(process.pid, {EMULATOR_CPU})
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the emulator did not start: {(folder / 'emulator.log').read_text()}"
                )
            time.sleep(0.02)
        port = int(port_file.read_text().strip())
        yield EmulatorProcess(process, f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


# --- timed child processes ----------------------------------------------------------------


@dataclass
class Child:
    """A finished child process: its exit code, wall time and its own resource usage."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class Running:
    """A started child, reaped by a thread with ``wait4`` (exact time, CPU and peak RSS)."""

    def __init__(
        self, argv: Sequence[str], folder: Path, env: dict[str, str], pin: bool, tag: str
    ) -> None:
        cpus = client_cpus() if pin else None
        self.out_path = folder / f"{tag}.stdout"
        self.err_path = folder / f"{tag}.stderr"
        out = self.out_path.open("wb")
        err = self.err_path.open("wb")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(list(argv), cwd=folder, env=env, stdout=out, stderr=err)
        out.close()
        err.close()
        self.pid = self.process.pid
        if cpus:
            os.sched_setaffinity(self.pid, cpus)
        self._done = threading.Event()
        self._result: tuple[int, float, Any] | None = None
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        _, status, usage = os.wait4(self.pid, 0)
        ended = time.perf_counter()
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._result = (self.process.returncode, ended, usage)
        self._done.set()

    def running(self) -> bool:
        return not self._done.is_set()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.running():
            with suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> Child:
        if not self._done.wait(timeout):
            self.kill()
            self._done.wait(30)
            raise TimeoutError(f"child {self.pid} ran over {timeout:g}s and was killed")
        assert self._result is not None
        code, ended, usage = self._result
        return Child(
            code,
            ended - self.started,
            usage.ru_utime,
            usage.ru_stime,
            usage.ru_maxrss / 1024.0,  # KiB on Linux
            self.out_path.read_text(errors="replace"),
            self.err_path.read_text(errors="replace"),
        )


def start(
    argv: Sequence[str], folder: Path, *, pin: bool = True, tag: str = "child", **env: str
) -> Running:
    return Running(argv, folder, child_env(**env), pin, tag)


def run(
    argv: Sequence[str],
    folder: Path,
    *,
    timeout: float = 600,
    pin: bool = True,
    tag: str = "child",
    **env: str,
) -> Child:
    return start(argv, folder, pin=pin, tag=tag, **env).wait(timeout)


def fleet_reimage(*args: str) -> list[str]:
    return [PYTHON, "-m", "fleet_reimage", *args]


def run_command(plan: Path, journal: Path | str, log: Path, *extra: str) -> list[str]:
    """``fleet-reimage run PLAN --yes --journal J --log-file L ...``, as an operator runs it."""
    return fleet_reimage(
        "run", str(plan), "--yes", "--journal", str(journal), "--log-file", str(log), *extra
    )


def check(child: Child, what: str, codes: Sequence[int] = (0,)) -> Child:
    if child.returncode not in codes:
        raise RuntimeError(
            f"{what} exited {child.returncode}:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
        )
    return child


# --- figures ------------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one figure."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    def spread(self) -> float:
        """(max - min) / median, as a fraction."""
        return (self.high - self.low) / self.median if self.values and self.median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "values": [round(v, 4) for v in self.values],
            "median": round(self.median, 4),
            "min": round(self.low, 4),
            "max": round(self.high, 4),
            "spread": round(self.spread(), 4),
        }

    def show(self, digits: int = 0) -> str:
        if not self.values:
            return "-"
        return f"{self.median:,.{digits}f} [{self.low:,.{digits}f}..{self.high:,.{digits}f}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "os": os_name,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "pinned": client_cpus() is not None,
    }


def code_version() -> dict[str, Any]:
    """Which code was measured: the commit, and a digest of the package's sources as they are
    (the working tree may differ from the commit)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "fleet_reimage").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "fleet_reimage"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        commit, dirty = "", ""
    return {
        "commit": commit or None,
        "package_changed_since_commit": bool(dirty),
        "package_sources_sha256": digest.hexdigest()[:16],
    }


def save(name: str, result: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "code": code_version(),
        **result,
    }
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch folder on the same disk as the project (fsync is real there), removed after."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=OUT) as folder:
        yield Path(folder)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line cut by SIGKILL
    return events


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def duplicates(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    """Nodes reimaged other than exactly once."""
    return {f"{p}/{n}": c for (p, n), c in counts.items() if c != 1}


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def journal_phase(journal: Path) -> dict[str, float]:
    """From the journal: attempts, first send, last answer, and the span between them."""
    import sqlite3

    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        count, first, last, last_sent = conn.execute(
            "SELECT count(*), min(sent_at), max(finished_at), max(sent_at) FROM attempts"
        ).fetchone()
    finally:
        conn.close()
    return {
        "attempts": count,
        "first_sent": first,
        "last_finished": last,
        "last_sent": last_sent,
        "dispatch_s": (last - first) if first and last else float("nan"),
    }


def journal_throttle_changes(journal: Path) -> list[dict[str, Any]]:
    """The adaptive throttle's moves recorded in the journal (``throttle_changed`` events)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT at, data FROM events WHERE kind = 'throttle_changed' ORDER BY at"
        ).fetchall()
    finally:
        conn.close()
    return [{"at": at, **json.loads(data)} for at, data in rows]


# --- another checkout, measured side by side ------------------------------------------------


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout whose package runs as the contender 'baseline'",
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the baseline's runs (repeatable)",
    )


def baseline_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment that runs the ``--baseline`` checkout's package (its bytecode compiled
    first, as for this one), or {} without one."""
    if args.baseline is None:
        return {}
    root = args.baseline.resolve()
    compileall.compile_dir(str(root / "fleet_reimage"), quiet=1)
    env = dict(item.split("=", 1) for item in args.baseline_env)
    env["PYTHONPATH"] = str(root)
    return env
