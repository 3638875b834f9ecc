"""logging: the CPU a run's logging costs per node, fleet-reimage's pipeline against structlog's
standard-library one.

Per node, a run binds the node's context (run, account, pool, node, client-request-id,
attempt), logs a debug line (filtered out at the default level) and one summary line at
info. That is done for ``--nodes`` nodes into a JSON log file, in a fresh process each time,
and the process's CPU time (all threads: the writer's too) is measured, with:

- ``fleet-reimage``: ``fleet_reimage.logs.configure`` (lines rendered by its own processors
  and written in batches by a background thread);
- ``structlog-stdlib``: structlog's standard-library pipeline as its documentation shows it
  (``ProcessorFormatter`` rendering with ``JSONRenderer`` and ``TimeStamper``), behind the
  standard library's ``QueueHandler``, written by a ``QueueListener``.

The two alternate (interleaved rounds); the table shows microseconds per node. The
pipeline is kept only while it is worth more than 5% of a whole run's CPU (issue 14):
compare the difference times 20,000 with the throughput benchmark's client CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

import common
from common import Series

WORK = """
import json, sys, time
import structlog
{setup}
log = structlog.get_logger("fleet_reimage.run")
started = time.process_time()
for i in range({nodes}):
    structlog.contextvars.bind_contextvars(
        run="r20261202-215804-d9bbf0", account="emu", pool="p", node=f"tvm-{{i}}",
        client_request_id="bf05e740-d49b-43c2-84e5-4097da0e7f28", attempt=1,
    )
    log.debug("attempt answered", answer="Accepted")
    log.info("node finished", attempts=1, duration_s=0.122, outcome="done_unverified",
             reason="202")
{finish}
print(json.dumps({{"cpu_s": time.process_time() - started}}))
"""

OURS = {
    "setup": "from fleet_reimage import logs\n"
    "logs.configure(log_format='json', level='info', log_file=sys.argv[1])",
    "finish": "logs.flush()",
}

STDLIB = {
    "setup": """
import logging, logging.handlers, queue
from fleet_reimage.logs import LEVELS, _redact
out = open(sys.argv[1], "a", encoding="utf-8")
formatter = structlog.stdlib.ProcessorFormatter(processors=[
    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    structlog.processors.JSONRenderer(),
])
records = queue.SimpleQueue()
to_queue = logging.handlers.QueueHandler(records)
to_queue.setFormatter(formatter)
writer = logging.StreamHandler(out)
writer.setFormatter(logging.Formatter("%(message)s"))
listener = logging.handlers.QueueListener(records, writer)
root = logging.getLogger("fleet_reimage")
root.handlers[:] = [to_queue]
root.setLevel(logging.INFO)
root.propagate = False
listener.start()
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    logger_factory=structlog.stdlib.LoggerFactory(),
    cache_logger_on_first_use=True,
)
""",
    "finish": "listener.stop()",
}

PIPELINES = {"fleet-reimage": OURS, "structlog-stdlib": STDLIB}


def measure(name: str, nodes: int) -> float:
    with common.workdir(f"logging-{name}") as folder:
        log = folder / "log.jsonl"
        code = WORK.format(nodes=nodes, **PIPELINES[name])
        done = subprocess.run(
            [common.PYTHON, "-c", code, str(log)],
            cwd=folder,
            env=common.child_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        lines = log.read_text(encoding="utf-8").splitlines()
        if len(lines) != nodes or json.loads(lines[-1])["event"] != "node finished":
            raise RuntimeError(f"{name}: {len(lines)} lines written for {nodes} nodes")
        return float(json.loads(done.stdout)["cpu_s"])


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py logging")
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"logging: {args.nodes:,} nodes, {args.rounds} interleaved rounds")
    series = {name: Series() for name in PIPELINES}
    for round_no in range(args.rounds):
        order = list(PIPELINES) if round_no % 2 == 0 else list(reversed(PIPELINES))
        for name in order:
            series[name].add(measure(name, args.nodes) / args.nodes * 1e6)
    rows = [(name, s.show(1), f"{s.spread():.0%}") for name, s in series.items()]
    print()
    print(common.table(("pipeline", "CPU us per node", "spread"), rows))
    ours, theirs = series["fleet-reimage"].median, series["structlog-stdlib"].median
    per_run = (theirs - ours) * args.nodes / 1e6
    print(
        f"\nstructlog's standard-library pipeline costs {theirs - ours:+.1f} us per node "
        f"({per_run:+.2f} s of CPU for {args.nodes:,} nodes)"
    )
    return {
        "parameters": vars(args),
        "us_per_node": {name: s.as_dict() for name, s in series.items()},
        "extra_cpu_s_per_run": per_run,
    }
