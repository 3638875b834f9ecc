"""throughput: reimages per second, end to end, against the practical client limit and the SDK.

20,000 idle nodes in 4 pools, an emulator with no latency and no faults (a fresh emulator
process per measurement, pinned to its own core), concurrency 64. Three contenders, each a
whole command in its own process, timed from start to exit:

- ``fleet-reimage run PLAN --yes --journal J --log-file L`` (durable journal, as in
  production; plan resolution included; ``health.wait: false``: fire and forget);
- ``contenders.py aiohttp``: list with ``$select=id``, then signed POSTs, semaphore 64;
- ``contenders.py sdk``: the same with the official azure-batch async SDK.

Rounds are interleaved (the order rotates each round) and every figure is the median of the
rounds with its [min..max]. After each measurement the emulator's stats must show every node
reimaged exactly once, or the benchmark fails.

``--baseline DIR`` adds a contender ``baseline``: the same command run with the package of
another checkout (``PYTHONPATH=DIR``, its bytecode compiled first), with any
``--baseline-env NAME=VALUE``, so old and new code are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import common
from common import Series

CONTENDERS = ("fleet-reimage", "aiohttp", "sdk")
# --diagnose: fleet-reimage as in production but for one thing, to see what that thing costs.
DIAGNOSTICS = {
    "fr-quiet-log": "log level warning (no per-node info line in the log file)",
    "fr-tmpfs": "journal on /dev/shm (tmpfs: fsync costs nothing)",
}


def contender(name: str, url: str) -> list[str]:
    return [common.PYTHON, str(common.BENCH / "contenders.py"), name, url]


def measure(
    name: str,
    folder: Path,
    nodes: int,
    pools: int,
    concurrency: int,
    baseline_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    fleet = common.fleet_text(common.pools_of(nodes, pools))
    with common.emulator(folder / "emu", fleet) as emu:
        emu_cpu_before = common.proc_cpu_s(emu.process.pid)
        extra: dict[str, Any] = {}
        if name in ("fleet-reimage", "baseline") or name in DIAGNOSTICS:
            plan = folder / "plan.yaml"
            plan.write_text(
                common.plan_text(emu.url, concurrency=concurrency, per_account=concurrency),
                encoding="utf-8",
            )
            shm = Path(tempfile.mkdtemp(dir="/dev/shm")) if name == "fr-tmpfs" else None
            journal = (shm or folder) / "journal.db"
            quiet = ["--log-level", "warning"] if name == "fr-quiet-log" else []
            try:
                child = common.run(
                    common.run_command(plan, journal, folder / "log.jsonl", *quiet),
                    folder,
                    tag=name,
                    **(baseline_env if name == "baseline" and baseline_env else {}),
                )
                common.check(child, name)
                phase = common.journal_phase(journal)
                extra["dispatch_s"] = phase["dispatch_s"]
                extra["journal_mb"] = journal.stat().st_size / 1e6
            finally:
                if shm is not None:
                    shutil.rmtree(shm, ignore_errors=True)
        else:
            child = common.run(
                [*contender(name, emu.url), "--concurrency", str(concurrency)],
                folder,
                tag=name,
            )
            common.check(child, name)
            own = json.loads(child.stdout.strip().splitlines()[-1])
            extra["dispatch_s"] = own["dispatch_s"]
            extra["list_s"] = own["list_s"]
        emu_cpu = common.proc_cpu_s(emu.process.pid) - emu_cpu_before
        counts = emu.reimage_counts()
    wrong = common.duplicates(counts)
    if len(counts) != nodes or wrong:
        raise RuntimeError(f"{name}: {len(wrong)} nodes not reimaged exactly once: {wrong}")
    return {
        "wall_s": child.wall_s,
        "rate": nodes / child.wall_s,
        "dispatch_rate": nodes / extra["dispatch_s"],
        "cpu_s": child.cpu_s,
        "emulator_cpu_s": emu_cpu,
        "maxrss_mb": child.maxrss_mb,
        **extra,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py throughput")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also run fleet-reimage variants: " + "; ".join(DIAGNOSTICS.values()),
    )
    common.add_baseline_arguments(parser)
    args = parser.parse_args(argv)
    names = CONTENDERS + (tuple(DIAGNOSTICS) if args.diagnose else ())
    baseline_env = common.baseline_env(args)
    if args.baseline is not None:
        names += ("baseline",)
    print(
        f"throughput: {args.nodes:,} nodes in {args.pools} pools, concurrency "
        f"{args.concurrency}, {args.rounds} interleaved rounds (fresh emulator each time)"
    )
    series: dict[str, dict[str, Series]] = {
        name: {
            k: Series()
            for k in ("rate", "wall_s", "dispatch_rate", "cpu_s", "emulator_cpu_s", "maxrss_mb")
        }
        for name in names
    }
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            with common.workdir(f"throughput-{name}") as folder:
                figures = measure(
                    name, folder, args.nodes, args.pools, args.concurrency, baseline_env
                )
            for key, s in series[name].items():
                s.add(figures[key])
            print(
                f"  round {round_no + 1} {name:<13} {figures['wall_s']:6.2f} s "
                f"{figures['rate']:7,.0f}/s end to end, {figures['dispatch_rate']:7,.0f}/s "
                f"dispatch, client CPU {figures['cpu_s']:5.1f} s, emulator CPU "
                f"{figures['emulator_cpu_s']:5.1f} s",
                flush=True,
            )
    rows = [
        (
            name,
            s["rate"].show(),
            f"{s['rate'].spread():.0%}",
            s["wall_s"].show(2),
            s["dispatch_rate"].show(),
            s["cpu_s"].show(1),
            s["emulator_cpu_s"].show(1),
            s["maxrss_mb"].show(),
        )
        for name, s in series.items()
    ]
    print()
    print(
        common.table(
            (
                "contender",
                "reimages/s (end to end)",
                "spread",
                "wall s",
                "reimages/s (dispatch)",
                "client CPU s",
                "emulator CPU s",
                "client RSS MB",
            ),
            rows,
        )
    )
    fr = series["fleet-reimage"]["rate"].median
    plain = series["aiohttp"]["rate"].median
    sdk = series["sdk"]["rate"].median
    ratios = {"fleet_reimage_vs_sdk": fr / sdk, "fleet_reimage_vs_aiohttp": fr / plain}
    dispatch = {
        "fleet_reimage_vs_sdk": series["fleet-reimage"]["dispatch_rate"].median
        / series["sdk"]["dispatch_rate"].median,
        "fleet_reimage_vs_aiohttp": series["fleet-reimage"]["dispatch_rate"].median
        / series["aiohttp"]["dispatch_rate"].median,
    }
    print()
    print(
        f"fleet-reimage / SDK loop      = {ratios['fleet_reimage_vs_sdk']:.2f}x end to end "
        f"({dispatch['fleet_reimage_vs_sdk']:.2f}x dispatch only)   goal >= 3.5x: "
        f"{'met' if ratios['fleet_reimage_vs_sdk'] >= 3.5 else 'NOT met'}"
    )
    print(
        f"fleet-reimage / aiohttp loop  = {ratios['fleet_reimage_vs_aiohttp']:.2f} end to end "
        f"({dispatch['fleet_reimage_vs_aiohttp']:.2f} dispatch only)   goal >= 0.65: "
        f"{'met' if ratios['fleet_reimage_vs_aiohttp'] >= 0.65 else 'NOT met'}"
    )
    if args.diagnose:
        base = series["fleet-reimage"]
        print("\ndiagnostic variants of fleet-reimage (medians, against fleet-reimage as run):")
        for name, what in DIAGNOSTICS.items():
            d = series[name]
            print(
                f"  {name:<13} {what}: {d['rate'].median:,.0f}/s "
                f"({d['rate'].median / base['rate'].median:.2f}x), client CPU "
                f"{d['cpu_s'].median:.1f} s ({d['cpu_s'].median - base['cpu_s'].median:+.1f} s)"
            )
    if args.baseline is not None:
        b = series["baseline"]
        print(
            f"\nbaseline ({args.baseline}, {' '.join(args.baseline_env) or 'no extra env'}): "
            f"{b['rate'].median:,.0f}/s, client CPU {b['cpu_s'].median:.1f} s; fleet-reimage / "
            f"baseline = {fr / b['rate'].median:.2f}x"
        )
    return {
        "parameters": {**vars(args), "baseline": str(args.baseline or "")},
        "contenders": {
            name: {key: s.as_dict() for key, s in by.items()} for name, by in series.items()
        },
        "ratios_end_to_end": ratios,
        "ratios_dispatch": dispatch,
    }
