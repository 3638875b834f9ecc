"""crash: SIGKILL the runner at random moments, many times; every node reimaged exactly once.

5,000 idle nodes in 5 pools (emulator in its own process, which outlives every runner),
waves ``[5, "100%"]``, ``max_unavailable: "5%"``, health waiting on (nodes take 1 s to
reimage and 0.5 s to start, polled every 250 ms), 5 ms +- 5 ms of latency on reimage, 1% of
reimages reset after being applied. The runner (``run``, then ``resume``) is SIGKILLed at a
random moment 0.05..3 s after it starts, ``--kills`` times: some kills land while it starts
up (journal open, plan resolution, reconciling what was in flight), some while requests are
in flight. Then a last ``resume`` runs to the end. Checked: it exits 0, and the emulator
counted exactly one reimage for every one of the 5,000 nodes (none missed, none twice).
"""

from __future__ import annotations

import argparse
import random
import signal
import time
from typing import Any

import common


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py crash")
    parser.add_argument("--nodes", type=int, default=5_000)
    parser.add_argument("--pools", type=int, default=5)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--max-delay", type=float, default=3.0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    print(
        f"crash: {args.nodes:,} nodes in {args.pools} pools, {args.kills} SIGKILLs at random "
        f"moments (seed {args.seed}), then a last resume"
    )
    fleet = common.fleet_text(
        common.pools_of(args.nodes, args.pools),
        timings={
            "reimaging": "1s",
            "rebooting": "1s",
            "starting": "500ms",
            "waitingforstarttask": "0s",
        },
        faults={"seed": 5, "reimage": {"latency": "5ms", "jitter": "5ms", "reset_after": 0.01}},
    )
    started = time.perf_counter()
    kills: list[dict[str, Any]] = []
    with common.workdir("crash") as folder, common.emulator(folder / "emu", fleet) as emu:
        plan = folder / "plan.yaml"
        plan.write_text(
            common.plan_text(
                emu.url,
                name="crash",
                waves='[5, "100%"]',
                max_unavailable='"5%"',
                health="{wait: true, poll_interval: 250ms, timeout: 2m}",
                failure_budget='"1%"',
                concurrency=64,
                per_account=64,
                request_timeout="5s",
                retry="{max_attempts: 8, initial_backoff: 50ms, max_backoff: 1s}",
            ),
            encoding="utf-8",
        )
        journal = folder / "journal.db"
        command = ["run", str(plan), "--yes"]
        finished_early = None
        number = 0
        while len(kills) < args.kills:
            number += 1
            before = emu.stats(nodes=False)["requests"]
            runner = common.start(
                common.fleet_reimage(
                    *command, "--journal", str(journal), "--log-file", str(folder / "log.jsonl")
                ),
                folder,
                tag=f"runner{number}",
            )
            delay = rng.uniform(0.05, args.max_delay)
            common.wait_for(lambda r=runner: not r.running(), delay, 0.005)
            if not runner.running():
                child = runner.wait(10)
                if child.returncode == 2 and "no run" in child.stderr:
                    command = ["run", str(plan), "--yes"]  # killed before the run was recorded
                    continue
                finished_early = child  # done before the kill: nothing left to interrupt
                break
            runner.kill(signal.SIGKILL)
            runner.wait(30)
            after = emu.stats(nodes=False)["requests"]
            kills.append(
                {
                    "command": command[0],
                    "after_s": round(delay, 3),
                    "requests_sent": after["total"] - before["total"],
                    "reimages_sent": after["mutating"] - before["mutating"],
                }
            )
            print(
                f"  kill {len(kills):2d}: {command[0]:<6} SIGKILLed after {delay:4.2f} s, "
                f"{after['mutating'] - before['mutating']:5d} reimages sent by it "
                f"({after['mutating']:5d} in all)",
                flush=True,
            )
            command = ["resume"]
        final = finished_early or common.run(
            common.fleet_reimage(
                *command, "--journal", str(journal), "--log-file", str(folder / "log.jsonl")
            ),
            folder,
            tag="final",
            timeout=900,
        )
        counts = emu.reimage_counts()
    total = time.perf_counter() - started
    wrong = common.duplicates(counts)
    exact = len(counts) == args.nodes and not wrong
    missed = sum(1 for c in counts.values() if c == 0)
    twice = sum(1 for c in counts.values() if c > 1)
    during_startup = sum(1 for k in kills if k["reimages_sent"] == 0)
    print()
    print(
        common.table(
            ("figure", "value"),
            [
                ("SIGKILLs", len(kills)),
                ("  of which before the process sent a reimage", during_startup),
                ("  of which kills of resume", sum(1 for k in kills if k["command"] == "resume")),
                ("last resume exit code", final.returncode),
                ("total time s", f"{total:.1f}"),
                ("nodes reimaged exactly once", f"{sum(1 for c in counts.values() if c == 1):,}"),
                ("nodes missed (0 reimages)", missed),
                ("nodes reimaged twice or more", twice),
            ],
        )
    )
    print(f"\ncheck: every node reimaged exactly once: {'yes' if exact else 'NO'}")
    if not exact or final.returncode != 0:
        raise RuntimeError(
            f"crash check failed: exit {final.returncode}, missed {missed}, twice {twice}: "
            f"{list(wrong.items())[:20]}\n{final.stdout[-2000:]}\n{final.stderr[-2000:]}"
        )
    return {
        "parameters": vars(args),
        "kills": kills,
        "total_s": total,
        "final_exit_code": final.returncode,
        "every_node_exactly_once": exact,
    }
