"""shared: one runner with a PostgreSQL journal against SQLite, and two or three runners
sharing one run through PostgreSQL.

20,000 idle nodes in 4 pools, no latency, no faults, concurrency 64 per runner,
``health.wait: false`` (a fresh emulator and, for PostgreSQL, a fresh database per
measurement). The first runner is started with ``run``; the others with ``run --join`` once the
run exists in the journal. The time is from the first runner's start to the last
runner's exit; the emulator must show every node reimaged exactly once.

On this 2-core machine the emulator takes one core and every runner competes for the
other, so more runners cannot be faster here: the figures show the cost of sharing (claims,
leases, fencing) and that it stays correct; on separate machines the runners' CPU adds up.
The PostgreSQL server is the one the tests use (``$FLEET_REIMAGE_TEST_PG`` or
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import common
import psycopg
from common import Series
from psycopg import sql

CONTENDERS = ("sqlite x1", "postgresql x1", "postgresql x2", "postgresql x3")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    name = f"fr_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        parts = urllib.parse.urlsplit(server)
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def run_created(url: str, timeout: float = 120.0) -> None:
    """Return once the first runner has recorded its run (a runner started with ``--join``
    before that would find no run to join, and start one of its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url, autocommit=True) as conn:
            found = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'fleet_reimage'"
                " AND tablename = 'runs')"
            ).fetchone()
            if found and found[0]:
                row = conn.execute("SELECT count(*) FROM fleet_reimage.runs").fetchone()
                if row and row[0]:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"the first runner recorded no run within {timeout:.0f} s")


def run_runners(journal: str, plan: Path, folder: Path, runners: int) -> dict[str, Any]:
    first = common.start(
        common.run_command(plan, journal, folder / "log0.jsonl"),
        folder,
        tag="runner0",
    )
    started = first.started
    others = []
    if runners > 1:
        run_created(journal)  # the first runner creates the run; the others join it
        for index in range(1, runners):
            others.append(
                common.start(
                    common.run_command(plan, journal, folder / f"log{index}.jsonl", "--join"),
                    folder,
                    tag=f"runner{index}",
                )
            )
    children = [first.wait(600)] + [other.wait(600) for other in others]
    for index, child in enumerate(children):
        common.check(child, f"runner {index}")
    ended = max(
        other.started + child.wall_s
        for other, child in zip([first, *others], children, strict=True)
    )
    return {"wall_s": ended - started, "cpu_s": sum(child.cpu_s for child in children)}


def measure(
    name: str, folder: Path, server: str, nodes: int, pools: int, concurrency: int
) -> dict[str, Any]:
    backend, count = name.split(" x")
    fleet = common.fleet_text(common.pools_of(nodes, pools))
    with common.emulator(folder / "emu", fleet) as emu:
        plan = folder / "plan.yaml"
        plan.write_text(
            common.plan_text(emu.url, concurrency=concurrency, per_account=concurrency),
            encoding="utf-8",
        )
        if backend == "sqlite":
            figures = run_runners(str(folder / "journal.db"), plan, folder, 1)
        else:
            with fresh_database(server) as url:
                figures = run_runners(url, plan, folder, int(count))
        counts = emu.reimage_counts()
    wrong = common.duplicates(counts)
    if len(counts) != nodes or wrong:
        raise RuntimeError(f"{name}: {len(wrong)} nodes not reimaged exactly once: {wrong}")
    return {**figures, "rate": nodes / figures["wall_s"]}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py shared")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    server = os.environ.get("FLEET_REIMAGE_TEST_PG") or DEFAULT_PG
    print(
        f"shared: {args.nodes:,} nodes in {args.pools} pools, concurrency {args.concurrency} "
        f"per runner, {args.rounds} interleaved rounds; PostgreSQL at "
        f"{urllib.parse.urlsplit(server).hostname}"
    )
    series = {
        name: {"rate": Series(), "wall_s": Series(), "cpu_s": Series()} for name in CONTENDERS
    }
    for round_no in range(args.rounds):
        shift = round_no % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            with common.workdir(f"shared-{name.replace(' ', '')}") as folder:
                figures = measure(name, folder, server, args.nodes, args.pools, args.concurrency)
            for key, values in series[name].items():
                values.add(figures[key])
            print(
                f"  round {round_no + 1} {name:<14} {figures['wall_s']:6.2f} s "
                f"{figures['rate']:7,.0f}/s, runners' CPU {figures['cpu_s']:5.1f} s",
                flush=True,
            )
    print()
    print(
        common.table(
            ("journal x runners", "reimages/s", "wall s", "runners' CPU s"),
            [
                (name, s["rate"].show(), s["wall_s"].show(2), s["cpu_s"].show(1))
                for name, s in series.items()
            ],
        )
    )
    sqlite_rate = series["sqlite x1"]["rate"].median
    ratios = {name: series[name]["rate"].median / sqlite_rate for name in CONTENDERS}
    print()
    for name, ratio in ratios.items():
        print(f"  {name:<14} {ratio:.2f}x the SQLite runner")
    return {
        "parameters": vars(args),
        "series": {name: {k: v.as_dict() for k, v in s.items()} for name, s in series.items()},
        "ratios_vs_sqlite": ratios,
        "machine": common.machine(),
        "code": common.code_version(),
    }
