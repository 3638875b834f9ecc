"""replace: ``action: replace`` with and without surge: API calls per replaced node, time
against the ladder's ideal, and the lowest ready capacity against the limit.

2 pools x 100 idle nodes; waves ``["10%", "100%"]``, ``max_unavailable: "10%"`` (10 per
pool); one run with ``surge: 0`` and one with ``surge: 10`` (= max_unavailable). The
emulator's pool changes take 1 s each: allocating (a resize to its new nodes), creating,
starting, and leavingpool (a removed node to gone); health polled every 0.5 s.

Reported, per variant:

- API calls per replaced node: every request the emulator received during the run (plan
  resolution, pool and node reads, removals, resizes), divided by the nodes replaced;
- the fewest ready nodes each pool had at any instant (the emulator's ``min_ready``) against
  the limit: T − max_unavailable without surge, T with it;
- the rollout time (first pool call sent to the last target finished, from the journal)
  against the ladder's ideal: pools go in parallel; a step of up to ``b`` nodes
  (b = max_unavailable, or the surge) is two pool changes one after the other, the
  removal (leavingpool) and the resize (allocating + creating + starting), so
  ideal = sum over waves of ``ceil(w / b)`` x (leavingpool + allocating + creating +
  starting); polling and request latency are not counted.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
from pathlib import Path
from typing import Any

import common
from bench_rolling import amount
from common import Series

PHASES = ("leavingpool", "allocating", "creating", "starting")


def rollout_phase(journal: Path) -> float:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        (first,) = conn.execute(
            "SELECT min(sent_at) FROM pool_ops WHERE operation != 'start'"
        ).fetchone()
        (last,) = conn.execute("SELECT max(finished_at) FROM targets").fetchone()
    finally:
        conn.close()
    return float(last) - float(first)


def plan_for(url: str, args: argparse.Namespace, surge: str) -> str:
    text = common.plan_text(
        url,
        name=f"replace-{surge}",
        action="replace",
        waves='["10%", "100%"]',
        max_unavailable=f'"{args.max_unavailable}"',
        health=f"{{wait: true, poll_interval: {args.poll_interval:g}s, timeout: 5m}}",
        failure_budget='"5%"',
    )
    return text.replace("rollout:\n", f"rollout:\n  surge: {surge}\n")


def one_variant(args: argparse.Namespace, surge: str, fleet: str) -> dict[str, Any]:
    nodes = args.pools * args.nodes_per_pool
    limit = amount(args.max_unavailable, args.nodes_per_pool)
    step = amount(surge, args.nodes_per_pool) or limit
    waves = [amount("10%", args.nodes_per_pool)]
    waves.append(args.nodes_per_pool - waves[0])
    ideal = sum(math.ceil(w / step) for w in waves) * args.phase * len(PHASES)
    floor = args.nodes_per_pool - (0 if surge != "0" else limit)
    calls, phase, lowest = Series(), Series(), Series()
    for round_no in range(args.rounds):
        with common.workdir("replace") as folder, common.emulator(folder / "emu", fleet) as emu:
            plan = folder / "plan.yaml"
            plan.write_text(plan_for(emu.url, args, surge), encoding="utf-8")
            before = emu.stats(nodes=False)["requests"]["total"]
            journal = folder / "journal.db"
            child = common.run(
                common.run_command(plan, journal, folder / "log.jsonl"), folder, tag="run",
                timeout=900,
            )  # fmt: skip
            common.check(child, "run")
            stats = emu.stats()
            took = rollout_phase(journal)
        old = [n for n in stats["nodes"] if not n["added"]]
        if len(old) != nodes or any(n["removals"] != 1 for n in old):
            raise RuntimeError("not every old node was removed exactly once")
        total = stats["requests"]["total"] - before
        calls.add(total / nodes)
        phase.add(took)
        lowest.add(min(p["min_ready"] for p in stats["pools"].values()))
        print(
            f"  surge {surge}, round {round_no + 1}: {took:.1f} s rollout (ideal {ideal:.1f}), "
            f"{total / nodes:.3f} API calls per node, lowest ready {lowest.low:g} "
            f"(limit {floor})",
            flush=True,
        )
    return {"surge": surge, "ideal_s": ideal, "limit": floor, "calls_per_node": calls,
            "rollout_s": phase, "lowest_ready": lowest}  # fmt: skip


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py replace")
    parser.add_argument("--pools", type=int, default=2)
    parser.add_argument("--nodes-per-pool", type=int, default=100)
    parser.add_argument("--max-unavailable", default="10%")
    parser.add_argument("--surge", default="10")
    parser.add_argument("--phase", type=float, default=1.0, help="seconds per pool change")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"replace: {args.pools} pools x {args.nodes_per_pool} nodes, waves [10%, 100%], "
        f"max_unavailable {args.max_unavailable}, surge 0 and {args.surge}; "
        f"{args.phase:g} s per pool change; {args.rounds} rounds"
    )
    timing = f"{args.phase:g}s"
    fleet = common.fleet_text(
        [{**p, "nodes": args.nodes_per_pool, "running_tasks": 0}
         for p in common.pools_of(args.pools * args.nodes_per_pool, args.pools)],
        timings={**dict.fromkeys(PHASES, timing), "waitingforstarttask": "0s",
                 "reimaging": "1s", "rebooting": "1s"},
    )  # fmt: skip
    variants = [one_variant(args, surge, fleet) for surge in ("0", args.surge)]
    rows = []
    for v in variants:
        rows += [
            (f"surge {v['surge']}: API calls per replaced node", v["calls_per_node"].show(3), ""),
            (f"surge {v['surge']}: rollout s", v["rollout_s"].show(1), f"ideal {v['ideal_s']:.1f}"),
            (f"surge {v['surge']}: ideal / rollout",
             f"{v['ideal_s'] / v['rollout_s'].median:.3f}", "1.0 = ideal"),
            (f"surge {v['surge']}: lowest ready, worst pool", v["lowest_ready"].show(),
             f">= {v['limit']}"),
        ]  # fmt: skip
    print()
    print(common.table(("figure", "measured (median [min..max])", "goal / reference"), rows))
    return {
        "parameters": vars(args),
        "variants": [
            {**v, **{k: v[k].as_dict() for k in ("calls_per_node", "rollout_s", "lowest_ready")}}
            for v in variants
        ],
    }
