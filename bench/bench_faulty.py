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

The faulty run is bounded: ``fleet-reimage run --deadline`` (``--faulty-deadline``, default
5 minutes; 0 = none) stops it dispatching. When the deadline stops it, the time for all
nodes is projected from its rate (nodes done / dispatch time), and the check becomes: no
node was reimaged twice, every node the journal calls done was reimaged exactly once, and
every node the emulator reimaged is in the journal as done or in doubt (never pending).
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
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


def journal_states(journal: Path) -> dict[tuple[str, str], str]:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT pool, node_id, state FROM targets").fetchall()
    finally:
        conn.close()
    return {(pool, node): state for pool, node, state in rows}


def check_partial(
    counts: dict[tuple[str, str], int], states: dict[tuple[str, str], str]
) -> list[str]:
    """What is wrong with a run stopped early, as far as duplicates and the journal go."""
    problems = []
    for key, count in counts.items():
        state = states.get(key, "not selected")
        if count > 1:
            problems.append(f"{key[0]}/{key[1]}: reimaged {count} times")
        elif state in ("done_unverified", "accepted", "healthy") and count != 1:
            problems.append(f"{key[0]}/{key[1]}: journal says {state}, emulator {count}")
        elif count == 1 and state not in ("done_unverified", "accepted", "healthy", "in_flight"):
            problems.append(f"{key[0]}/{key[1]}: reimaged but the journal says {state}")
    return problems


def one_run(
    faulty: bool, nodes: int, pools: int, concurrency: int, deadline: float
) -> dict[str, Any]:
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
        bounded = ["--deadline", f"{deadline:g}s"] if faulty and deadline > 0 else []
        child = common.check(
            common.run(
                common.run_command(
                    plan, journal, folder / "log.jsonl", "--events", str(events), *bounded
                ),
                folder,
                tag="run",
                timeout=(deadline + 600) if bounded else 7200,
            ),
            "faulty run" if faulty else "fault-free run",
            codes=(0, 3) if bounded else (0,),
        )
        stats = emu.stats()
        throttled = sum(1 for e in common.read_events(events) if e["event"] == "throttled")
        phase = common.journal_phase(journal)
        states = journal_states(journal)
        changes = common.journal_throttle_changes(journal)
    counts = {(n["pool"], n["id"]): n["reimages"] for n in stats["nodes"]}
    stopped = child.returncode == 3
    done = sum(1 for s in states.values() if s in ("done_unverified", "accepted", "healthy"))
    wrong = (
        dict.fromkeys(check_partial(counts, states), 0) if stopped else common.duplicates(counts)
    )
    rate = done / phase["dispatch_s"] if phase["dispatch_s"] else float("nan")
    return {
        "stopped_at_deadline": stopped,
        "done": done,
        "rate": rate,
        "projected_s": child.wall_s
        if not stopped
        else child.wall_s - phase["dispatch_s"] + nodes / rate,
        "throttle_changes": changes,
        "exit_code": child.returncode,
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
    parser.add_argument(
        "--faulty-deadline",
        type=float,
        default=120.0,
        help="seconds after which the faulty run starts nothing new (0: no deadline)",
    )
    args = parser.parse_args(argv)
    print(
        f"faulty: {args.nodes:,} nodes, concurrency {args.concurrency}; reimage faults: 5% 429 "
        "(Retry-After 1 s), 2% 503, 1% reset after applying; vs fault-free, "
        f"{args.rounds} interleaved round(s)"
    )
    clean_wall, faulty_wall, projected = Series(), Series(), Series()
    last: dict[str, Any] = {}
    ok = True
    for round_no in range(args.rounds):
        order = (False, True) if round_no % 2 == 0 else (True, False)
        for faulty in order:
            figures = one_run(
                faulty, args.nodes, args.pools, args.concurrency, args.faulty_deadline
            )
            name = "faulty" if faulty else "fault-free"
            (faulty_wall if faulty else clean_wall).add(figures["wall_s"])
            if faulty:
                projected.add(figures["projected_s"])
            exact = not figures["not_once"] and figures["nodes_seen"] == args.nodes
            ok = ok and exact
            last[name] = figures
            requests = figures["requests"]
            print(
                f"  round {round_no + 1} {name:<10} {figures['wall_s']:6.1f} s, "
                f"{figures['attempts']:,} attempts, {requests['total']:,} requests "
                f"(by status {requests['by_status']}, faults {requests['faults']}, "
                f"get_node {requests['by_operation'].get('get_node', 0)}), "
                f"{figures['throttled_events']} throttled events, "
                f"{len(figures['throttle_changes'])} throttle changes; "
                + (
                    f"STOPPED at the deadline with {figures['done']:,} of {args.nodes:,} done "
                    f"({figures['rate']:.1f}/s; all {args.nodes:,} projected at "
                    f"{figures['projected_s']:,.0f} s); "
                    if figures["stopped_at_deadline"]
                    else ""
                )
                + (
                    "no duplicate, journal and emulator agree"
                    if exact
                    else "PROBLEMS: " + str(list(figures["not_once"])[:10])
                ),
                flush=True,
            )
            if faulty and figures["throttle_changes"]:
                shown = figures["throttle_changes"]
                print(
                    "    adaptive throttle (concurrency, rate/s) over the run: "
                    + ", ".join(f"{c['concurrency']}/{c['rate']}" for c in shown[:6] + shown[-4:])
                )
    ratio = projected.median / clean_wall.median
    stopped = last["faulty"]["stopped_at_deadline"]
    print()
    print(
        common.table(
            ("run", "wall s (median [min..max])", "nodes done", "reimages/s"),
            [
                (
                    "fault-free",
                    clean_wall.show(1),
                    f"{args.nodes:,}",
                    f"{args.nodes / clean_wall.median:,.0f}",
                ),
                (
                    "faulty" + (" (stopped at its deadline)" if stopped else ""),
                    faulty_wall.show(1),
                    f"{last['faulty']['done']:,}",
                    f"{last['faulty']['rate']:,.1f}",
                ),
            ],
        )
    )
    print(
        f"\nfaulty / fault-free time = {ratio:.2f}x"
        + (" (faulty time projected for all nodes from its rate)" if stopped else "")
    )
    print(f"duplicate or missed reimages: {'none' if ok else 'FOUND (see above)'}")
    if not ok:
        raise RuntimeError("a node was reimaged other than exactly once")
    return {
        "parameters": vars(args),
        "faults": FAULTS,
        "fault_free_wall_s": clean_wall.as_dict(),
        "faulty_wall_s": faulty_wall.as_dict(),
        "faulty_projected_s": projected.as_dict(),
        "time_ratio": ratio,
        "every_node_exactly_once": ok,
        "last_round": last,
    }
