"""bigrun: what grows with the size of a run, before its first request and after its end.

Measured in this process (library calls, no emulator), ``--rounds`` times each:

- **journal**: ``create_run`` of 100,000 targets in 20 pools, then ``targets()`` reading them
  back, on a SQLite journal (under bench/out, so its fsyncs are real) and on a PostgreSQL
  journal (a fresh schema on the tests' server: ``$FLEET_REIMAGE_TEST_PG`` or
  ``postgresql://postgres@127.0.0.1:5432/test``; skipped when none answers). Goals: SQLite
  create < 2 s and load < 1 s; PostgreSQL create < 5 s and load < 2 s.
- **report**: rendering a finished 30,000-node run in every format (csv, json, table,
  markdown), from records in memory. Goal: all four < 15 s (the work is linear; quadratic
  work would take minutes).
- **plan**: refusing the "billion laughs" plan (``tests/plans/billion-laughs.yaml``, aliases
  that would expand to about 10^9 values). Goal < 2 s: the values are counted, not built.

These were assertions of tests, which can fail on a loaded machine: a speed is a figure.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import common
import psycopg
from common import Series
from psycopg import sql

from fleet_reimage.errors import InputError
from fleet_reimage.journal import NewRun, NewTarget, TargetRecord, TargetState
from fleet_reimage.journal.model import AttemptOutcome, AttemptRecord, RunRecord, RunStatus
from fleet_reimage.journal.postgres import PostgresJournal
from fleet_reimage.journal.sqlite import SqliteJournal
from fleet_reimage.plan.load import load_plan
from fleet_reimage.views.report import write_report
from fleet_reimage.views.runview import RunData

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_795_730_000.0
RUN = "bigrun"


def new_run() -> NewRun:
    return NewRun(RUN, "bigrun", "reimage", "/plans/p.yaml", "pools: [a]\n", "ab" * 32, {},
                  T0, "bench", 1)  # fmt: skip


def targets(count: int) -> list[NewTarget]:
    return [NewTarget("acct", f"pool{i % 20}", f"tvm-{i:06d}", i // 1000, i) for i in range(count)]


async def journal_once(open_journal: Callable[[], Any], count: int) -> tuple[float, float]:
    wanted = targets(count)
    async with await open_journal() as journal:
        began = time.perf_counter()
        await journal.create_run(new_run(), wanted, [])
        created = time.perf_counter() - began
        began = time.perf_counter()
        loaded = await journal.targets(RUN)
        load = time.perf_counter() - began
    if [t.node_id for t in loaded] != [t.node_id for t in wanted]:
        raise RuntimeError("the journal did not give back the targets it was given, in order")
    return created, load


def postgres_schema(server: str) -> tuple[str, Callable[[], None]] | None:
    """A fresh schema on ``server`` and a function dropping it; None when it does not answer."""
    name = f"fr_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return None

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

    return name, drop


def finished_run(nodes: int) -> RunData:
    """A finished run of ``nodes`` healthy nodes, one accepted attempt each."""
    run = RunRecord(
        RUN, "bigrun", "reimage", "/plans/p.yaml", "", "ab" * 32, {}, T0, T0 + 600, T0 + 600,
        RunStatus.FINISHED, None, "bench", 1,
    )  # fmt: skip
    records = [healthy(i, T0 + i) for i in range(nodes)]
    attempts = [accepted(i, T0 + i) for i in range(nodes)]
    return RunData(run, records, attempts, [], [], "big.db")


def healthy(i: int, at: float) -> TargetRecord:
    return TargetRecord(
        i, RUN, "prod", f"pool-{i % 20}", f"tvm-{i:06d}", i % 4, i, TargetState.HEALTHY,
        "back idle with a new boot", at, at, at, at + 1, at + 60, 1, "202",
    )  # fmt: skip


def accepted(i: int, at: float) -> AttemptRecord:
    return AttemptRecord(
        RUN, i, 1, "reimage", f"{i:08d}-crid", at, at + 0.1, AttemptOutcome.ACCEPTED, 202,
        f"{i:08d}-rid", None, None, 20.0,
    )  # fmt: skip


def render_all(data: RunData) -> float:
    began = time.perf_counter()
    for fmt in ("csv", "json", "table", "markdown"):
        write_report(data, fmt, io.StringIO())
    return time.perf_counter() - began


def refuse_laughs() -> float:
    began = time.perf_counter()
    try:
        load_plan(common.ROOT / "tests" / "plans" / "billion-laughs.yaml")
    except InputError:
        return time.perf_counter() - began
    raise RuntimeError("the billion-laughs plan was accepted")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench/run.py bigrun")
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--report-nodes", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    server = os.environ.get("FLEET_REIMAGE_TEST_PG") or DEFAULT_PG
    figures = {name: Series() for name in ("sqlite_create", "sqlite_load", "pg_create",
                                           "pg_load", "report", "laughs")}  # fmt: skip
    data = finished_run(args.report_nodes)
    for _ in range(args.rounds):
        with common.workdir("bigrun") as folder:
            path = folder / "j.db"
            created, load = anyio.run(journal_once, functools.partial(SqliteJournal.open, path),
                                      args.targets)  # fmt: skip
        figures["sqlite_create"].add(created)
        figures["sqlite_load"].add(load)
        schema = postgres_schema(server)
        if schema is not None:
            name, drop = schema
            opener = functools.partial(PostgresJournal.open, server, schema=name)
            try:
                created, load = anyio.run(journal_once, opener, args.targets)
            finally:
                drop()
            figures["pg_create"].add(created)
            figures["pg_load"].add(load)
        figures["report"].add(render_all(data))
        figures["laughs"].add(refuse_laughs())
    goals = {"sqlite_create": 2.0, "sqlite_load": 1.0, "pg_create": 5.0, "pg_load": 2.0,
             "report": 15.0, "laughs": 2.0}  # fmt: skip
    labels = {
        "sqlite_create": f"SQLite create_run, {args.targets:,} targets s",
        "sqlite_load": "SQLite targets() s",
        "pg_create": f"PostgreSQL create_run, {args.targets:,} targets s",
        "pg_load": "PostgreSQL targets() s",
        "report": f"report of {args.report_nodes:,} nodes, 4 formats s",
        "laughs": "billion laughs refused s",
    }
    rows = []
    for key, series in figures.items():
        goal = goals[key]
        verdict = "-" if not series.values else ("met" if series.median < goal else "NOT met")
        rows.append((labels[key], series.show(3), f"< {goal:g}: {verdict}"))
    print(common.table(("figure", "measured (median [min..max])", "goal"), rows))
    return {"parameters": vars(args), **{k: v.as_dict() for k, v in figures.items()}}
