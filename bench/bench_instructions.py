"""instructions: the throughput scenario's contenders counted in instructions, not seconds.

On a machine shared with other work, wall and CPU seconds move by tens of percent from one
run to the next; the number of instructions a command executes does not. Each contender of
``throughput`` (same fleet, plan and command lines) runs once under valgrind's callgrind
(``--cache-sim=no``: instruction counts only; every thread of the command counted, the
emulator not), against a fresh emulator, and the table shows instructions per node, end to
end (start-up, listing and the journal included). Under valgrind a command runs some 40
times slower, so a 20,000-node fleet-reimage run takes about 6 minutes.

Instructions are not time: they weigh a system call like an addition and ignore waiting
(fsync, the network). They are a steady way to compare the CPU work of two programs doing
the same thing, which is what the throughput goals measure on a CPU-bound client.

``--baseline DIR`` and ``--baseline-env`` work as in ``throughput``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import bench_throughput
import common

CONTENDERS = ("fleet-reimage", "aiohttp", "sdk", "baseline")


def instructions(out: Path) -> int:
    """The ``summary:`` (or ``totals:``) of every callgrind file ``out.<pid>`` written."""
    total = 0
    for path in out.parent.glob(f"{out.name}.*"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def measure(name: str, folder: Path, nodes: int, env: dict[str, str]) -> int:
    fleet = common.fleet_text(common.pools_of(nodes, 4))
    with common.emulator(folder / "emu", fleet) as emu:
        if name in ("fleet-reimage", "baseline"):
            plan = folder / "plan.yaml"
            plan.write_text(common.plan_text(emu.url, concurrency=64, per_account=64))
            command = common.run_command(plan, folder / "journal.db", folder / "log.jsonl")
        else:
            command = [*bench_throughput.contender(name, emu.url), "--concurrency", "64"]
        out = folder / "callgrind.out"
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=no",
            f"--callgrind-out-file={out}.%p",
            *command,
        ]
        child = common.run(valgrind, folder, tag=name, timeout=7200, **env)
        common.check(child, name)
        counts = emu.reimage_counts()
    if len(counts) != nodes or common.duplicates(counts):
        raise RuntimeError(f"{name}: not every node reimaged exactly once")
    return instructions(out)


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py instructions")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument(
        "--contenders",
        default="fleet-reimage,aiohttp",
        help=f"comma-separated, of {', '.join(CONTENDERS)} (sdk takes about 25 minutes)",
    )
    common.add_baseline_arguments(parser)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: valgrind is not installed")
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    if "baseline" in names and args.baseline is None:
        raise SystemExit("instructions: the contender 'baseline' needs --baseline DIR")
    baseline_env = common.baseline_env(args)
    print(f"instructions: {args.nodes:,} nodes, under callgrind: {', '.join(names)}")
    per_node: dict[str, float] = {}
    for name in names:
        with common.workdir(f"instructions-{name}") as folder:
            env = baseline_env if name == "baseline" else {}
            per_node[name] = measure(name, folder, args.nodes, env) / args.nodes
        print(f"  {name:<13} {per_node[name] / 1e3:8,.0f}k instructions per node", flush=True)
    if "fleet-reimage" in per_node:
        mine = per_node["fleet-reimage"]
        print()
        for name, value in per_node.items():
            if name != "fleet-reimage":
                print(f"  {name} / fleet-reimage = {value / mine:.2f} (instructions per node)")
    return {"parameters": {**vars(args), "baseline": str(args.baseline or "")}, **per_node}
