"""faulty: the throughput run with a misbehaving service: time, and no duplicate reimage.

20,000 idle nodes in 4 pools, concurrency 64, ``health.wait: false``, as in ``throughput``,
twice in the same command, interleaved: against a healthy emulator, and against one whose
reimage answers are, per request (seeded draws):

- 5% ``429 TooManyRequests`` with ``Retry-After: 1``,
- 2% ``503 ServerBusy`` (also with ``Retry-After: 1``),
- 1% ``reset_after``: the reimage is applied, then the connection is reset before any answer
  (the client cannot know it took effect: it must read the node before sending again).

Printed: the time of each run and their ratio, the requests the emulator saw by status and
fault, and the check that matters: every node's reimage count is exactly 1 (none missed,
none done twice). The run's exit code must be 0 (every node done).
"""

from __future__ import annotations

import argparse
from typing import Any

import common
from common import Series

FAULTS = {
    "seed": 11,
    "reimage": {
        "throttle": 0.05,
        "server_busy": 0.02,
        "reset_after": 0.01,
        "retry_after": "1s",
    },
}


def one_run(faulty: bool, nodes: int, pools: int, concurrency: int) -> dict[str, Any]:
    fleet = common.fleet_text(common.pools_of(nodes, pools), faults=FAULTS if faulty else None)
    with common.workdir("faulty") as folder, common.emulator(folder / "emu", fleet) as emu:
        plan = folder / "plan.yaml"
        plan.write_text(
            common.plan_text(
                emu.url,
                concurrency=concurrency,
                per_account=concurrency,
                retry="{max_attempts: 10, initial_backoff: 200ms, max_backoff: 5s}",
            ),
            encoding="utf-8",
        )
        journal = folder / "journal.db"
        events = folder / "events.jsonl"
        child = common.check(
            common.run(
                common.fleet_reimage(
                    "run", str(plan), "--yes", "--journal", str(journal), "--events",
                    str(events), "--log-file", str(folder / "log.jsonl"),
                ),
                folder,
                tag="run",
                timeout=1800,
            ),
            "faulty run" if faulty else "fault-free run",
        )
        stats = emu.stats()
        throttled = sum(1 for e in common.read_events(events) if e["event"] == "throttled")
        phase = common.journal_phase(journal)
    counts = {(n["pool"], n["id"]): n["reimages"] for n in stats["nodes"]}
    wrong = common.duplicates(counts)
    return {
        "wall_s": child.wall_s,
        "cpu_s": child.cpu_s,
        "attempts": phase["attempts"],
        "requests": stats["requests"],
        "not_once": wrong,
        "nodes_seen": len(counts),
        "throttled_events": throttled,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py faulty")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        f"faulty: {args.nodes:,} nodes, concurrency {args.concurrency}; reimage faults: 5% 429 "
        "(Retry-After 1 s), 2% 503, 1% reset after applying; vs fault-free, "
        f"{args.rounds} interleaved round(s)"
    )
    clean_wall, faulty_wall = Series(), Series()
    last: dict[str, Any] = {}
    ok = True
    for round_no in range(args.rounds):
        order = (False, True) if round_no % 2 == 0 else (True, False)
        for faulty in order:
            figures = one_run(faulty, args.nodes, args.pools, args.concurrency)
            name = "faulty" if faulty else "fault-free"
            (faulty_wall if faulty else clean_wall).add(figures["wall_s"])
            exact = not figures["not_once"] and figures["nodes_seen"] == args.nodes
            ok = ok and exact
            last[name] = figures
            requests = figures["requests"]
            print(
                f"  round {round_no + 1} {name:<10} {figures['wall_s']:6.1f} s, "
                f"{figures['attempts']:,} attempts, {requests['total']:,} requests "
                f"(by status {requests['by_status']}, faults {requests['faults']}, "
                f"get_node {requests['by_operation'].get('get_node', 0)}), "
                f"{figures['throttled_events']} throttled events; every node exactly once: "
                f"{'yes' if exact else 'NO: ' + str(list(figures['not_once'].items())[:10])}",
                flush=True,
            )
    ratio = faulty_wall.median / clean_wall.median
    print()
    print(
        common.table(
            ("run", "wall s (median [min..max])", "reimages/s"),
            [
                ("fault-free", clean_wall.show(1), f"{args.nodes / clean_wall.median:,.0f}"),
                ("faulty", faulty_wall.show(1), f"{args.nodes / faulty_wall.median:,.0f}"),
            ],
        )
    )
    print(f"\nfaulty / fault-free time = {ratio:.2f}x")
    print(f"duplicate or missed reimages: {'none' if ok else 'FOUND (see above)'}")
    if not ok:
        raise RuntimeError("a node was reimaged other than exactly once")
    return {
        "parameters": vars(args),
        "faults": FAULTS,
        "fault_free_wall_s": clean_wall.as_dict(),
        "faulty_wall_s": faulty_wall.as_dict(),
        "time_ratio": ratio,
        "every_node_exactly_once": ok,
        "last_round": last,
    }
