"""drain: the rolling scenario with drains: API calls per node, and time against the ideal.

4 pools x 200 nodes, a share of them (``--busy``, 10%) running 2 tasks that last an hour;
``rollout.drain: {timeout: T, then: requeue}`` (``--drain-timeout``, 2 s), waves
``[1, 10, "25%", "100%"]``, ``max_unavailable: "10%"``, health polls every second; the
emulator's nodes take 2 s to reimage and 1 s to start (recovery R = 3 s after the request).
Every busy node's drain times out (its tasks outlast T), so it holds its slot for T + R and
its tasks are requeued; idle nodes skip the drain.

Reported:

- API calls per node (every request the emulator received, resolution included, divided by
  the nodes), with the health gate on and the drains' own calls (a busy node costs a
  ``disablescheduling``, its reimage and an ``enablescheduling``, since the emulator keeps a
  node's scheduling state across a reimage) broken out per operation. Goal: <= 1.2;
- the time against the ideal: pools go in parallel; within a pool a wave starts when the
  previous one is done, at most m = max_unavailable nodes hold a slot at once, each idle node
  for R and each busy one for T + R, so a wave takes at least max(its longest node, the sum
  of its nodes' times / m) (request latency and polling not counted). The busy nodes per
  wave come from ``plan --output json`` (its ``running_nodes``);
- peak unavailability against the limit, and tasks requeued against the busy nodes' tasks.
"""

from __future__ import annotations

import argparse
from typing import Any

import bench_rolling as rolling
import common
from bench_rolling import amount
from common import Series

TASKS = 2


def ideal_of(schedule: dict[str, Any], limit: int, recovery: float, drain: float) -> float:
    """The slowest pool's sum over waves of max(longest node, total node time / m)."""
    slowest = 0.0
    for pool in schedule["pools"]:
        total = 0.0
        for wave in pool["waves"]:
            busy, nodes = wave["running_nodes"], wave["nodes"]
            work = nodes * recovery + busy * drain
            longest = recovery + (drain if busy else 0.0)
            total += max(longest, work / limit)
        slowest = max(slowest, total)
    return slowest


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py drain")
    rolling.add_options(parser, nodes_per_pool=200)
    parser.add_argument("--busy", type=float, default=0.1, help="share of nodes running tasks")
    parser.add_argument("--drain-timeout", type=float, default=2.0, help="seconds")
    args = parser.parse_args(argv)
    nodes = args.pools * args.nodes_per_pool
    recovery = args.reimaging + args.starting
    limit = amount(args.max_unavailable, args.nodes_per_pool)
    print(
        f"drain: {args.pools} pools x {args.nodes_per_pool} nodes, {args.busy:.0%} running "
        f"{TASKS} tasks of 1 h, drain timeout {args.drain_timeout:g} s then requeue, waves "
        f'[1, 10, "25%", "100%"], max_unavailable {args.max_unavailable} ({limit} per pool), '
        f"recovery {recovery:g} s, poll every {args.poll_interval:g} s; {args.rounds} rounds"
    )
    pools = [
        {**p, "nodes": args.nodes_per_pool, "running_tasks": TASKS, "task_duration": "1h",
         "states": {"idle": 1.0 - args.busy, "running": args.busy}}
        for p in common.pools_of(nodes, args.pools)
    ]  # fmt: skip
    fleet = common.fleet_text(pools, timings=rolling.timings(args))
    calls, wall, phase, peak_seen = Series(), Series(), Series(), Series()
    ideal: float | None = None
    ops_total: dict[str, int] = {}
    busy_nodes = requeued = 0
    for round_no in range(args.rounds):
        with common.workdir("drain") as folder, common.emulator(folder / "emu", fleet) as emu:
            plan = folder / "plan.yaml"
            drain = f"drain: {{timeout: {args.drain_timeout:g}s, then: requeue}}"
            plan.write_text(rolling.plan_text(emu.url, args, "drain", [drain]), encoding="utf-8")
            if ideal is None:
                schedule = rolling.plan_json(plan, folder)
                ideal = ideal_of(schedule, limit, recovery, args.drain_timeout)
                busy_nodes = sum(p["running_nodes"] for p in schedule["pools"])
                print(f"  {busy_nodes} busy nodes; ideal {ideal:.1f} s")
            child, stats, total, (first, last) = rolling.measured_run(plan, folder, emu, ops_total)
        _check(stats, nodes)
        requeued = sum(p["tasks"]["requeued"] for p in stats["pools"].values())
        calls.add(total / nodes)
        wall.add(child.wall_s)
        phase.add(last - first)
        peak = max(s["peak_unavailable"] for s in stats["pools"].values())
        peak_seen.add(peak)
        print(
            f"  round {round_no + 1}: {child.wall_s:.1f} s command, {last - first:.1f} s "
            f"rollout, {total / nodes:.3f} API calls per node, peak unavailable {peak} "
            f"(limit {limit}), {requeued} tasks requeued",
            flush=True,
        )
    assert ideal is not None
    per_op = {op: round(n / args.rounds / nodes, 4) for op, n in sorted(ops_total.items())}
    drain_ops = per_op.get("disable_scheduling", 0.0) + per_op.get("enable_scheduling", 0.0)
    print()
    print(
        common.table(
            ("figure", "measured (median [min..max])", "goal / reference"),
            [
                ("API calls per node", calls.show(3), "<= 1.2"),
                ("  of which, per node", ", ".join(f"{k} {v}" for k, v in per_op.items()), ""),
                ("  without the drains' own calls", f"{calls.median - drain_ops:.3f}", ""),
                ("peak unavailable, worst pool", peak_seen.show(), f"<= {limit}"),
                ("tasks requeued", str(requeued), f"{busy_nodes * TASKS} (busy x tasks)"),
                ("command wall time s", wall.show(1), f"ideal {ideal:.1f}"),
                ("rollout phase s", phase.show(1), f"ideal {ideal:.1f}"),
                ("ideal / command", f"{ideal / wall.median:.3f}", "1.0 = ideal"),
                ("ideal / rollout phase", f"{ideal / phase.median:.3f}", "1.0 = ideal"),
            ],
        )
    )
    return {
        "parameters": vars(args),
        "limit_per_pool": limit,
        "recovery_s": recovery,
        "busy_nodes": busy_nodes,
        "ideal_s": ideal,
        "calls_per_node": calls.as_dict(),
        "calls_per_node_by_operation": per_op,
        "tasks_requeued": requeued,
        "peak_unavailable": peak_seen.as_dict(),
        "command_wall_s": wall.as_dict(),
        "rollout_phase_s": phase.as_dict(),
    }


def _check(stats: dict[str, Any], nodes: int) -> None:
    """Every node reimaged exactly once, and no node left with scheduling disabled."""
    rolling.check_once(stats, nodes)
    disabled = [n["id"] for n in stats["nodes"] if n["scheduling_state"] != "enabled"]
    if disabled:
        raise RuntimeError(f"{len(disabled)} nodes left with scheduling disabled")
