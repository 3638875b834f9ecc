"""rolling: a canary ladder with health gates: API calls per node, availability, time vs ideal.

4 pools x 500 idle nodes; waves ``[1, 10, "25%", "100%"]``, ``max_unavailable: "10%"`` (50
per pool), health waiting on with ``poll_interval: 1s``; the emulator's nodes take 2 s to
reimage and 1 s to start (recovery R = 3 s after the request is accepted).

Reported:

- API calls per reimaged node: every request the emulator received (reimages, list and get
  calls for plan resolution and health polling), divided by the nodes reimaged (goal < 1.5);
- the emulator's ``peak_unavailable`` per pool against the plan's limit (it counts nodes
  reimaging or starting, whoever caused it: it must never exceed the limit);
- with ``--soak S``: each wave but the last is soaked S seconds (the health polls go on
  meanwhile), which the ideal adds;
- the run's time against the ladder's ideal. Pools go in parallel; within a pool each wave
  starts when the previous one is healthy, and at most ``m = max_unavailable`` nodes are
  down at once, each for R, so a wave of ``w`` nodes takes at least ``ceil(w / m) x R``:
  ideal = sum over waves of ``ceil(w / m) x R`` (request latency and polling not counted).
  Both the whole command and the rollout phase (first request sent to the last node
  healthy, from the journal) are compared with it.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
from common import Series


def amount(spec: str, n: int) -> int:
    """The plan format's count-or-percent rule (README.md, "Plan format")."""
    if spec.endswith("%"):
        p = float(spec[:-1])
        return 0 if p == 0 or n == 0 else max(1, math.floor(n * p / 100))
    return min(int(spec), n)


def rollout_phase(journal: Path) -> tuple[float, float]:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        (first,) = conn.execute("SELECT min(sent_at) FROM attempts").fetchone()
        (last,) = conn.execute("SELECT max(finished_at) FROM targets").fetchone()
    finally:
        conn.close()
    return float(first), float(last)


def add_options(parser: argparse.ArgumentParser, *, nodes_per_pool: int) -> None:
    """The rolling scenario's options (``drain`` adds its own)."""
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--nodes-per-pool", type=int, default=nodes_per_pool)
    parser.add_argument("--max-unavailable", default="10%")
    parser.add_argument("--reimaging", type=float, default=2.0, help="seconds")
    parser.add_argument("--starting", type=float, default=1.0, help="seconds")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--rounds", type=int, default=2)


def timings(args: argparse.Namespace) -> dict[str, str]:
    return {
        "reimaging": f"{args.reimaging:g}s",
        "rebooting": "1s",
        "starting": f"{args.starting:g}s",
        "waitingforstarttask": "0s",
    }


def plan_text(url: str, args: argparse.Namespace, name: str, rollout: Sequence[str] = ()) -> str:
    """The canary ladder with the health gate, as both scenarios run it; ``rollout``: more
    lines of its rollout section (``soak: 5s``, a drain)."""
    return common.plan_text(
        url,
        name=name,
        waves='[1, 10, "25%", "100%"]',
        max_unavailable=f'"{args.max_unavailable}"',
        health=f"{{wait: true, poll_interval: {args.poll_interval:g}s, timeout: 5m}}"
        + "".join(f"\n  {line}" for line in rollout),
        failure_budget='"5%"',
        concurrency=64,
        per_account=32,
    )


def plan_json(plan: Path, folder: Path) -> dict[str, Any]:
    """``plan --output json``: a read-only command, made before the counted run."""
    shown = common.check(
        common.run(common.fleet_reimage("plan", str(plan), "--output", "json"), folder, tag="plan"),
        "plan",
    )
    schedule: dict[str, Any] = json.loads(shown.stdout)
    return schedule


def measured_run(
    plan: Path, folder: Path, emu: Any, ops_total: dict[str, int]
) -> tuple[Any, dict[str, Any], int, tuple[float, float]]:
    """The run, and what the emulator saw of it: its stats, the requests it made (added to
    ``ops_total`` by operation) and the rollout phase from the journal."""
    before = emu.stats(nodes=False)["requests"]
    journal = folder / "journal.db"
    child = common.check(
        common.run(
            common.run_command(plan, journal, folder / "log.jsonl"), folder, tag="run", timeout=900
        ),
        "run",
    )
    stats = emu.stats()
    after = stats["requests"]
    for op, n in after["by_operation"].items():
        ops_total[op] = ops_total.get(op, 0) + n - before["by_operation"].get(op, 0)
    return child, stats, after["total"] - before["total"], rollout_phase(journal)


def check_once(stats: dict[str, Any], nodes: int) -> None:
    counts = {(n["pool"], n["id"]): n["reimages"] for n in stats["nodes"]}
    wrong = common.duplicates(counts)
    if len(counts) != nodes or wrong:
        raise RuntimeError(f"{len(wrong)} nodes not reimaged exactly once")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py rolling")
    add_options(parser, nodes_per_pool=500)
    parser.add_argument("--soak", type=float, default=0.0, help="rollout.soak, seconds")
    args = parser.parse_args(argv)
    nodes = args.pools * args.nodes_per_pool
    recovery = args.reimaging + args.starting
    soak = [f"soak: {args.soak:g}s"] if args.soak else []
    limit = amount(args.max_unavailable, args.nodes_per_pool)
    print(
        f"rolling: {args.pools} pools x {args.nodes_per_pool} nodes, waves "
        f'[1, 10, "25%", "100%"], max_unavailable {args.max_unavailable} ({limit} per pool), '
        f"recovery {recovery:g} s, poll every {args.poll_interval:g} s; {args.rounds} rounds"
    )
    fleet = common.fleet_text(
        [{**p, "nodes": args.nodes_per_pool} for p in common.pools_of(nodes, args.pools)],
        timings=timings(args),
    )
    calls, wall, phase, peak_seen = Series(), Series(), Series(), Series()
    ideal = None
    ops_total: dict[str, int] = {}
    peaks: dict[str, list[int]] = {}
    for round_no in range(args.rounds):
        with common.workdir("rolling") as folder, common.emulator(folder / "emu", fleet) as emu:
            plan = folder / "plan.yaml"
            plan.write_text(plan_text(emu.url, args, "rolling", soak), encoding="utf-8")
            if ideal is None:
                # The wave sizes, as fleet-reimage computes them (a read-only command: its
                # requests are not counted, the counter is read before and after the run).
                schedule = plan_json(plan, folder)
                waves = schedule["pools"][0]["wave_sizes"]
                ideal = sum(math.ceil(w / limit) for w in waves) * recovery
                ideal += args.soak * (len([w for w in waves if w]) - 1)  # every wave but the last
                print(f"  waves per pool {waves}: ideal {ideal:.1f} s")
            child, stats, total, (first, last) = measured_run(plan, folder, emu, ops_total)
        check_once(stats, nodes)
        calls.add(total / nodes)
        wall.add(child.wall_s)
        phase.add(last - first)
        round_peaks = {p: s["peak_unavailable"] for p, s in stats["pools"].items()}
        for p, v in round_peaks.items():
            peaks.setdefault(p, []).append(v)
        peak_seen.add(max(round_peaks.values()))
        print(
            f"  round {round_no + 1}: {child.wall_s:.1f} s command, {last - first:.1f} s "
            f"rollout, {total / nodes:.3f} API calls per node, peak unavailable "
            f"{max(round_peaks.values())} (limit {limit})",
            flush=True,
        )
    assert ideal is not None
    per_op = {op: round(n / args.rounds / nodes, 4) for op, n in sorted(ops_total.items())}
    print()
    print(
        common.table(
            ("figure", "measured (median [min..max])", "goal / reference"),
            [
                ("API calls per reimaged node", calls.show(3), "< 1.5"),
                ("  of which, per node", ", ".join(f"{k} {v}" for k, v in per_op.items()), ""),
                ("peak unavailable, worst pool", peak_seen.show(), f"<= {limit}"),
                ("command wall time s", wall.show(1), f"ideal {ideal:.1f}"),
                ("rollout phase s", phase.show(1), f"ideal {ideal:.1f}"),
                ("ideal / command", f"{ideal / wall.median:.3f}", "1.0 = ideal"),
                ("ideal / rollout phase", f"{ideal / phase.median:.3f}", "1.0 = ideal"),
            ],
        )
    )
    print("\npeak_unavailable per pool (each round): " + json.dumps(peaks))
    return {
        "parameters": vars(args),
        "limit_per_pool": limit,
        "recovery_s": recovery,
        "ideal_s": ideal,
        "calls_per_node": calls.as_dict(),
        "calls_per_node_by_operation": per_op,
        "peak_unavailable": peaks,
        "command_wall_s": wall.as_dict(),
        "rollout_phase_s": phase.as_dict(),
    }
