"""ratelimit: an account the service rate-limits: how near its limit the adaptive throttle runs.

The emulator answers 429 (with its Retry-After) past ``--limit`` requests per second per
account (burst 10); fleet-reimage reimages ``--nodes`` idle nodes with concurrency 32,
``health.wait: false``. Reported, from the emulator's own counters over the dispatch phase
(first request sent to the last answer, from the journal):

- the rate of requests the service admitted (202s per second) against the limit (goal >= 0.6
  of the limit: the throttle must find the limit, not crawl far below it), and the rate of
  all reimage requests sent (admitted or not);
- the share of 429s among all requests (goal <= 10%: once the quota speaks, the account
  pauses and paces instead of hammering it);
- every node reimaged exactly once.

These were assertions of a test, which failed on a loaded machine: a speed is a figure.
"""

from __future__ import annotations

import argparse
from typing import Any

import common
from common import Series


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py ratelimit")
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--limit", type=float, default=100.0, help="requests per second")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        f"ratelimit: {args.nodes} nodes, an account limited to {args.limit:g} requests/s "
        f"(burst 10), concurrency 32; {args.rounds} rounds"
    )
    fleet = common.fleet_text(common.pools_of(args.nodes, 1)) + (
        f"rate_limit: {{requests_per_second: {args.limit:g}, burst: 10}}\n"
    )
    ratio, share = Series(), Series()
    for round_no in range(args.rounds):
        with common.workdir("ratelimit") as folder, common.emulator(folder / "emu", fleet) as emu:
            plan = folder / "plan.yaml"
            plan.write_text(
                common.plan_text(
                    emu.url,
                    concurrency=32,
                    request_timeout="2s",
                    retry="{max_attempts: 8, initial_backoff: 50ms, max_backoff: 1s}",
                ),
                encoding="utf-8",
            )
            journal = folder / "journal.db"
            common.check(
                common.run(common.run_command(plan, journal, folder / "log.jsonl"), folder),
                "run",
            )
            stats = emu.stats()
            phase = common.journal_phase(journal)
        counts = {(n["pool"], n["id"]): n["reimages"] for n in stats["nodes"]}
        if len(counts) != args.nodes or common.duplicates(counts):
            raise RuntimeError("nodes not reimaged exactly once")
        requests = stats["requests"]
        throttled = requests["by_status"].get("429", 0)
        sent = requests["by_operation"].get("reimage", 0) / phase["dispatch_s"]
        admitted = requests["by_status"].get("202", 0) / phase["dispatch_s"]
        ratio.add(admitted / args.limit)
        share.add(throttled / requests["total"])
        print(
            f"  round {round_no + 1}: {admitted:.0f} admitted/s ({sent:.0f} reimage requests/s "
            f"sent) against {args.limit:g}, {throttled} x 429 in {requests['total']} requests",
            flush=True,
        )
    print()
    print(
        common.table(
            ("figure", "measured (median [min..max])", "goal"),
            [
                ("admitted / limit", ratio.show(2), ">= 0.60: " + met(ratio.median >= 0.6)),
                ("share of 429s", share.show(3), "<= 0.100: " + met(share.median <= 0.1)),
            ],
        )
    )
    return {"parameters": vars(args), "admitted_over_limit": ratio.as_dict(),
            "share_429": share.as_dict()}  # fmt: skip


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"
