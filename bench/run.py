"""Run the benchmarks: ``python bench/run.py NAME [options]`` (or ``python3 dev.py bench NAME``).

Names: throughput, latency, scale, rolling, drain, faulty, ratelimit, crash, bigrun, shared,
profile, logging, instructions, replace, or ``all`` (every one but shared (it needs
PostgreSQL), profile and instructions (valgrind, slow), with default options). Each prints a
table and writes ``bench/out/NAME.json``. ``python bench/run.py NAME --help`` lists a
benchmark's options. See bench/README.md for what each measures and how long it takes.
"""

from __future__ import annotations

import compileall
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

BENCHMARKS = (
    "throughput", "latency", "scale", "rolling", "drain", "faulty", "ratelimit", "crash", "bigrun",
    "shared", "profile", "logging", "instructions", "replace",
)  # fmt: skip
ALL = tuple(name for name in BENCHMARKS if name not in ("shared", "profile", "instructions"))


def run_one(name: str, argv: list[str]) -> None:
    module = importlib.import_module(f"bench_{name}")
    started = time.perf_counter()
    result = module.main(argv)
    result["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    common.save(name, result)
    print(f"{name}: took {result['benchmark_wall_s']:.0f} s\n", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*BENCHMARKS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.prefix == sys.base_prefix:
        print("bench/run.py: run it with the project's venv (python3 dev.py bench ...)")
        return 2
    name, rest = argv[0], argv[1:]
    # Children run with PYTHONDONTWRITEBYTECODE (nothing is left behind in the tree they
    # measure), so compile once here: an installed package has its bytecode, and a module
    # compiled from source on every start would be measured as start-up time.
    compileall.compile_dir(str(common.ROOT / "fleet_reimage"), quiet=1)
    if name == "all":
        for each in ALL:
            print(f"=== {each} ===", flush=True)
            run_one(each, [])
    else:
        run_one(name, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
