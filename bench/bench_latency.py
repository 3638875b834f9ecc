"""latency: does fleet-reimage keep 256 requests in flight against a 100 ms service?

20,000 idle nodes in 4 pools; the emulator answers every reimage after 100 ms (``faults:
reimage: {latency: 100ms}``), concurrency 256 (``execution.concurrency: 256,
per_account_concurrency: 256``). The ideal is N x latency / concurrency = 7.8 s. Reported
as ideal / actual (1.0 = perfect; goal >= 0.9) for:

- the whole command (``fleet-reimage run``, from start to exit: interpreter start-up, plan
  resolution and the journal included);
- the dispatch phase (the journal's first attempt ``sent_at`` to its last ``finished_at``).

The plain aiohttp loop at the same concurrency runs interleaved, as a reference for what
any Python client gets on this machine (its dispatch phase is its own measurement). Goal:
the whole fleet-reimage command no slower than the loop's whole script.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import common
from common import Series


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py latency")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    ideal = args.nodes * args.latency_ms / 1000.0 / args.concurrency
    print(
        f"latency: {args.nodes:,} nodes, {args.latency_ms:g} ms per reimage, concurrency "
        f"{args.concurrency}: ideal {ideal:.2f} s; {args.rounds} interleaved rounds"
    )
    fleet = common.fleet_text(
        common.pools_of(args.nodes, args.pools),
        faults={"reimage": {"latency": f"{args.latency_ms:g}ms"}},
    )
    series = {
        name: {k: Series() for k in ("wall_s", "dispatch_s", "cpu_s")}
        for name in ("fleet-reimage", "aiohttp")
    }
    for round_no in range(args.rounds):
        order = ("fleet-reimage", "aiohttp") if round_no % 2 == 0 else ("aiohttp", "fleet-reimage")
        for name in order:
            with (
                common.workdir(f"latency-{name}") as folder,
                common.emulator(folder / "emu", fleet) as emu,
            ):
                if name == "fleet-reimage":
                    plan = folder / "plan.yaml"
                    plan.write_text(
                        common.plan_text(
                            emu.url,
                            concurrency=args.concurrency,
                            per_account=args.concurrency,
                        ),
                        encoding="utf-8",
                    )
                    journal = folder / "journal.db"
                    child = common.check(
                        common.run(
                            common.run_command(plan, journal, folder / "log.jsonl"),
                            folder,
                            tag=name,
                        ),
                        name,
                    )
                    dispatch = common.journal_phase(journal)["dispatch_s"]
                else:
                    child = common.check(
                        common.run(
                            [
                                common.PYTHON,
                                str(common.BENCH / "contenders.py"),
                                "aiohttp",
                                emu.url,
                                "--concurrency",
                                str(args.concurrency),
                            ],
                            folder,
                            tag=name,
                        ),
                        name,
                    )
                    dispatch = json.loads(child.stdout.strip().splitlines()[-1])["dispatch_s"]
                counts = emu.reimage_counts()
            wrong = common.duplicates(counts)
            if len(counts) != args.nodes or wrong:
                raise RuntimeError(f"{name}: {len(wrong)} nodes not reimaged exactly once")
            series[name]["wall_s"].add(child.wall_s)
            series[name]["dispatch_s"].add(dispatch)
            series[name]["cpu_s"].add(child.cpu_s)
            print(
                f"  round {round_no + 1} {name:<13} command {child.wall_s:6.2f} s "
                f"(ideal/actual {ideal / child.wall_s:.3f}), dispatch {dispatch:6.2f} s "
                f"(ideal/actual {ideal / dispatch:.3f}), client CPU {child.cpu_s:.1f} s",
                flush=True,
            )
    rows = []
    for name, s in series.items():
        rows.append(
            (
                name,
                s["wall_s"].show(2),
                f"{ideal / s['wall_s'].median:.3f}",
                s["dispatch_s"].show(2),
                f"{ideal / s['dispatch_s'].median:.3f}",
                f"{ideal / s['dispatch_s'].low:.3f}",
                s["cpu_s"].show(1),
            )
        )
    print()
    print(
        common.table(
            (
                "contender",
                "command s",
                "ideal/command",
                "dispatch s",
                "ideal/dispatch",
                "best ideal/dispatch",
                "client CPU s",
            ),
            rows,
        )
    )
    fr = series["fleet-reimage"]
    whole = ideal / fr["wall_s"].median
    phase = ideal / fr["dispatch_s"].median
    versus_loop = series["aiohttp"]["wall_s"].median / fr["wall_s"].median
    print(
        f"\nfleet-reimage: ideal {ideal:.2f} s; whole command {whole:.3f} of ideal, dispatch "
        f"phase {phase:.3f} of ideal; goal >= 0.9: "
        f"command {'met' if whole >= 0.9 else 'NOT met'}, "
        f"dispatch {'met' if phase >= 0.9 else 'NOT met'}"
    )
    print(
        f"fleet-reimage command / aiohttp loop command = {1 / versus_loop:.3f} (wall time, "
        f"medians); goal <= 1 (no slower): {'met' if versus_loop >= 1 else 'NOT met'}"
    )
    return {
        "parameters": vars(args),
        "ideal_s": ideal,
        "contenders": {n: {k: v.as_dict() for k, v in s.items()} for n, s in series.items()},
        "fleet_reimage_ideal_over_command": whole,
        "fleet_reimage_ideal_over_dispatch": phase,
        "aiohttp_command_over_fleet_reimage_command": versus_loop,
    }
