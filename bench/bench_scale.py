"""scale: 100,000 nodes over 50 pools: plan resolution, peak memory, journal size, resume.

One emulator process (50 pools x 2,000 idle nodes, nodes idle again at once) and:

1. ``fleet-reimage plan PLAN --output json``, three times: wall time of the whole command
   (interpreter start-up included), its CPU and peak RSS.
2. ``fleet-reimage run`` of all 100,000 nodes with health waiting on (``poll_interval: 1s``),
   as in production: wall time, the runner's peak RSS (``ru_maxrss`` from ``wait4``, the
   kernel's high-water mark of the process; goal < 250 MB), and the journal's size on disk
   (database + WAL after the run). Every node must be reimaged exactly once.
3. Against a fresh emulator: a second run, SIGKILLed as soon as its first node is accepted
   (so ~all 100,000 are pending), then ``resume`` timed from its start to the first request
   the emulator receives (its request counter, polled every 5 ms) and to the first attempt
   written to the journal (``sent_at``); goal < 3 s. The resume is itself SIGKILLed right
   after its first request, and resumed again, ``--resumes`` times; the last resume runs to
   the end, and again every node must be reimaged exactly once.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import Series

HEALTH = "{wait: true, poll_interval: 1s, timeout: 10m}"


class RequestWatch:
    """Polls the emulator's request counter; notes when it first moves after ``arm``."""

    def __init__(self, emu: common.EmulatorProcess) -> None:
        self.emu = emu
        self.base = 0
        self.first: float | None = None
        self.first_ops: dict[str, int] = {}
        self._base_ops: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def requests(self) -> dict[str, Any]:
        # The stats request itself is not a Batch request: it is not counted in "total".
        answer: dict[str, Any] = self.emu.stats(nodes=False)["requests"]
        return answer

    def arm(self) -> None:
        now = self.requests()
        self.base = int(now["total"])
        self._base_ops = dict(now["by_operation"])
        self.first = None
        self.first_ops = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = self.requests()
            if int(now["total"]) > self.base:
                self.first = time.perf_counter()
                self.first_ops = {
                    op: n - self._base_ops.get(op, 0)
                    for op, n in now["by_operation"].items()
                    if n != self._base_ops.get(op, 0)
                }
                return
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def first_attempt_after(journal: Path, wall_start: float) -> float | None:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        (first,) = conn.execute(
            "SELECT min(sent_at) FROM attempts WHERE sent_at >= ?", (wall_start,)
        ).fetchone()
    finally:
        conn.close()
    return float(first) if first is not None else None


def file_mb(path: Path) -> float:
    size = 0
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            size += part.stat().st_size
    return size / 1e6


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py scale")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--pools", type=int, default=50)
    parser.add_argument("--plans", type=int, default=3, help="plan resolutions to time")
    parser.add_argument("--resumes", type=int, default=3, help="resume start-ups to time")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"scale: {args.nodes:,} nodes over {args.pools} pools")
    fleet = common.fleet_text(common.pools_of(args.nodes, args.pools))
    result: dict[str, Any] = {"parameters": vars(args)}
    with common.workdir("scale") as folder:
        # --- 1 and 2: plan resolution, a whole run ---
        with common.emulator(folder / "emu1", fleet) as emu:
            plan = folder / "plan.yaml"
            plan.write_text(
                common.plan_text(
                    emu.url, health=HEALTH, concurrency=args.concurrency, name="scale"
                ),
                encoding="utf-8",
            )
            plan_wall, plan_cpu, plan_rss = Series(), Series(), Series()
            for _ in range(args.plans):
                child = common.check(
                    common.run(
                        common.fleet_reimage("plan", str(plan), "--output", "json"),
                        folder,
                        tag="plan",
                    ),
                    "plan",
                )
                plan_wall.add(child.wall_s)
                plan_cpu.add(child.cpu_s)
                plan_rss.add(child.maxrss_mb)
            print(
                f"  plan --output json: {plan_wall.show(2)} s, CPU {plan_cpu.show(2)} s, "
                f"peak RSS {plan_rss.show()} MB",
                flush=True,
            )
            journal = folder / "run.db"
            run = common.check(
                common.run(
                    common.run_command(plan, journal, folder / "run.log"),
                    folder,
                    tag="run",
                    timeout=1200,
                ),
                "run",
            )
            counts = emu.reimage_counts()
        wrong = common.duplicates(counts)
        if len(counts) != args.nodes or wrong:
            raise RuntimeError(f"run: {len(wrong)} nodes not reimaged exactly once")
        journal_mb = file_mb(journal)
        print(
            f"  run (health wait on): {run.wall_s:.1f} s ({args.nodes / run.wall_s:,.0f} nodes/s),"
            f" client CPU {run.cpu_s:.1f} s, peak RSS {run.maxrss_mb:.0f} MB "
            f"(goal < 250: {'met' if run.maxrss_mb < 250 else 'NOT met'}), "
            f"journal {journal_mb:.1f} MB, every node exactly once",
            flush=True,
        )
        result.update(
            plan_wall_s=plan_wall.as_dict(),
            plan_cpu_s=plan_cpu.as_dict(),
            plan_maxrss_mb=plan_rss.as_dict(),
            run_wall_s=run.wall_s,
            run_cpu_s=run.cpu_s,
            run_maxrss_mb=run.maxrss_mb,
            journal_mb=journal_mb,
        )
        # --- 3: resume start-up on a journal of ~100,000 pending nodes ---
        with common.emulator(folder / "emu2", fleet) as emu:
            plan2 = folder / "plan2.yaml"
            plan2.write_text(
                common.plan_text(
                    emu.url, health=HEALTH, concurrency=args.concurrency, name="scale2"
                ),
                encoding="utf-8",
            )
            journal2 = folder / "resume.db"
            events = folder / "events.jsonl"
            first_run = common.start(
                common.run_command(plan2, journal2, folder / "run2.log", "--events", str(events)),
                folder,
                tag="run2",
            )
            common.wait_for(
                lambda: (
                    any(e["event"] == "node_accepted" for e in common.read_events(events))
                    or not first_run.running()
                ),
                120,
                0.002,
            )
            first_run.kill(signal.SIGKILL)
            first_run.wait(30)
            pending_at_kill = args.nodes - emu.stats(nodes=False)["requests"]["mutating"]
            print(f"  run SIGKILLed after its first acceptance: {pending_at_kill:,} never sent")
            watch = RequestWatch(emu)
            to_request, to_attempt = Series(), Series()
            final = None
            for number in range(1, args.resumes + 1):
                last = number == args.resumes
                watch.arm()
                wall_start = time.time()
                resumer = common.start(
                    common.fleet_reimage(
                        "resume",
                        "--journal",
                        str(journal2),
                        "--log-file",
                        str(folder / f"resume{number}.log"),
                    ),
                    folder,
                    tag=f"resume{number}",
                )
                common.wait_for(lambda r=resumer: watch.first is not None or not r.running(), 120)
                watch.stop()
                if watch.first is None:
                    raise RuntimeError("resume sent no request")
                startup = watch.first - resumer.started
                if not last:
                    # Crash again once it is reimaging: its first attempts are in the journal.
                    common.wait_for(
                        lambda r=resumer, w=wall_start: (
                            first_attempt_after(journal2, w) is not None or not r.running()
                        ),
                        120,
                        0.02,
                    )
                    time.sleep(0.1)
                    resumer.kill(signal.SIGKILL)
                    resumer.wait(30)
                else:
                    final = common.check(resumer.wait(1200), "last resume")
                attempt = first_attempt_after(journal2, wall_start)
                to_request.add(startup)
                if attempt is not None:
                    to_attempt.add(attempt - wall_start)
                print(
                    f"  resume {number}: first request after {startup:.2f} s, first attempt "
                    f"in the journal after "
                    f"{'-' if attempt is None else f'{attempt - wall_start:.2f}'} s; the first "
                    f"requests seen: {watch.first_ops}"
                    + (" (then SIGKILLed)" if not last else " (ran to the end)"),
                    flush=True,
                )
            counts = emu.reimage_counts()
        wrong = common.duplicates(counts)
        if len(counts) != args.nodes or wrong:
            raise RuntimeError(f"resume: {len(wrong)} nodes not reimaged other than once")
        assert final is not None
        print(
            f"  last resume: {final.wall_s:.1f} s, peak RSS {final.maxrss_mb:.0f} MB; "
            "every node exactly once"
        )
    rows = [
        ("plan resolution (plan --output json)", f"{plan_wall.show(2)} s", "-"),
        ("plan peak RSS", f"{plan_rss.show()} MB", "-"),
        ("run: wall time, 100k nodes, health on", f"{run.wall_s:.1f} s", "-"),
        ("run: peak RSS", f"{run.maxrss_mb:.0f} MB", "< 250 MB"),
        ("journal on disk after the run", f"{journal_mb:.1f} MB", "-"),
        ("resume: start to first request", f"{to_request.show(2)} s", "< 3 s"),
        ("resume: start to first attempt written", f"{to_attempt.show(2)} s", "-"),
        ("last resume: peak RSS", f"{final.maxrss_mb:.0f} MB", "< 250 MB"),
    ]
    print()
    print(common.table(("figure", "measured (median [min..max])", "goal"), rows))
    result.update(
        pending_at_kill=pending_at_kill,
        resume_to_first_request_s=to_request.as_dict(),
        resume_to_first_attempt_s=to_attempt.as_dict(),
        last_resume_wall_s=final.wall_s,
        last_resume_maxrss_mb=final.maxrss_mb,
    )
    return result
