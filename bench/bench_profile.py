"""profile: where ``fleet-reimage run`` spends its CPU in the throughput scenario.

The throughput scenario (20,000 idle nodes in 4 pools, no latency, concurrency 64, durable
journal, ``health.wait: false``) run once under ``py-spy record --gil --threads -f raw``
(only samples that hold the GIL: Python CPU time, not waiting). The raw (collapsed) stacks are
kept in ``bench/out/profile-stacks.txt`` (open them with speedscope or flamegraph.pl), and
summarised here: the functions with the most *self* time, the most *inclusive* time, and
the time per area of the code (package module, aiohttp, asyncio, anyio, structlog, ...).

``--tool pyinstrument`` runs pyinstrument instead (wall-clock sampling of the main thread,
text report in ``bench/out/profile-pyinstrument.txt``).
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import common

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse_frame(frame: str) -> tuple[str, str]:
    """``func (path/file.py:12)`` -> (``func``, ``path/file.py``)."""
    found = _FRAME.match(frame.strip())
    if not found:
        return frame.strip(), ""
    return found["func"], found["file"]


def area(path: str) -> str:
    """Which part of the code a file belongs to, for the per-area totals."""
    if path.startswith("fleet_reimage/"):
        return path.removesuffix(".py")
    for name in (
        "aiohttp",
        "yarl",
        "multidict",
        "anyio",
        "structlog",
        "asyncio",
        "sqlite3",
        "json",
        "uuid",
        "logging",
        "selectors",
        "ssl",
        "email",
        "urllib",
        "hmac",
        "base64",
        "threading",
        "queue",
    ):
        if path.startswith(f"{name}/") or path == f"{name}.py" or f"/{name}/" in path:
            return name
    return path or "other"


_PLUMBING = (
    "<frozen runpy>",
    "fleet_reimage/__main__.py",
    "fleet_reimage/cli/main.py",
    "anyio/_core/_eventloop.py",
    "anyio/_backends/_asyncio.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "anyio/_core/_tasks.py",
)


def summarise(stacks: Path, top: int = 25) -> dict[str, Any]:
    """Shares of the GIL-holding samples: by thread, area, function (self and inclusive)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    areas_inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text(encoding="utf-8", errors="replace").splitlines():
        text, _, count_text = line.rpartition(" ")
        if not text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = text.split(";")
        if frames[0].startswith("thread "):
            thread = frames[0].partition(": ")[2] or "MainThread (not yet named)"
            frames = frames[1:]
        else:
            thread = "?"
        threads[thread] += count
        total += count
        if not frames:
            continue
        func, path = parse_frame(frames[-1])
        self_time[f"{func} ({path})"] += count
        areas[area(path)] += count
        seen: set[str] = set()
        seen_areas: set[str] = set()
        for frame in frames:
            name, file = parse_frame(frame)
            key = f"{name} ({file})"
            if key not in seen and not file.startswith(_PLUMBING):
                seen.add(key)
                inclusive[key] += count
            where = area(file)
            if where not in seen_areas and not file.startswith(_PLUMBING):
                seen_areas.add(where)
                areas_inclusive[where] += count

    def share(counter: Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in counter.most_common(n)] if total else []

    return {
        "samples": total,
        "threads": share(threads),
        "areas_self": share(areas),
        "areas_inclusive": share(areas_inclusive),
        "self": share(self_time),
        "inclusive": share(inclusive),
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{summary['samples']:,} samples holding the GIL")
    for title, key in (
        ("by thread", "threads"),
        ("by area, self (innermost frame)", "areas_self"),
        ("by area, inclusive (any frame of it on the stack; plumbing left out)", "areas_inclusive"),
        ("functions, self time (innermost frame)", "self"),
        ("functions, inclusive time (event-loop plumbing left out)", "inclusive"),
    ):
        print(f"\n{title}:")
        for name, fraction in summary[key]:
            print(f"  {fraction:6.1%}  {name}")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py profile")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="emulator latency per reimage (the latency benchmark's scenario: 100, with "
        "--concurrency 256)",
    )
    parser.add_argument("--tool", choices=("py-spy", "pyinstrument"), default="py-spy")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    bindir = Path(common.PYTHON).parent
    common.OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"profile: fleet-reimage run, {args.nodes:,} nodes in {args.pools} pools, "
        f"concurrency {args.concurrency}, under {args.tool}"
    )
    with common.workdir("profile") as folder:
        faults = {"reimage": {"latency": f"{args.latency_ms:g}ms"}} if args.latency_ms else None
        fleet = common.fleet_text(common.pools_of(args.nodes, args.pools), faults=faults)
        with common.emulator(folder / "emu", fleet) as emu:
            plan = folder / "plan.yaml"
            plan.write_text(
                common.plan_text(
                    emu.url, concurrency=args.concurrency, per_account=args.concurrency
                ),
                encoding="utf-8",
            )
            command = common.run_command(plan, folder / "journal.db", folder / "log.jsonl")
            if args.tool == "py-spy":
                stacks = common.OUT / "profile-stacks.txt"
                spy = shutil.which("py-spy", path=str(bindir)) or "py-spy"
                profiled = [
                    spy,
                    "record",
                    "--gil",
                    "--threads",
                    "--nonblocking",
                    "-r",
                    str(args.rate),
                    "-f",
                    "raw",
                    "-o",
                    str(stacks),
                    "--",
                    *command,
                ]
                child = common.check(common.run(profiled, folder, tag="py-spy"), "py-spy")
                summary = summarise(stacks, args.top)
                print(f"run under py-spy took {child.wall_s:.1f} s")
                print_summary(summary)
                print(f"\nraw stacks: {stacks.relative_to(common.ROOT)}")
                return {"parameters": vars(args), "wall_s": child.wall_s, "summary": summary}
            report = common.OUT / "profile-pyinstrument.txt"
            profiled = [
                common.PYTHON,
                "-m",
                "pyinstrument",
                "--show-all",
                "-o",
                str(report),
                "-m",
                "fleet_reimage",
                *command[3:],
            ]
            child = common.check(common.run(profiled, folder, tag="pyinstrument"), "pyinstrument")
            print(report.read_text(encoding="utf-8")[:6000])
            return {"parameters": vars(args), "wall_s": child.wall_s, "report": str(report)}
