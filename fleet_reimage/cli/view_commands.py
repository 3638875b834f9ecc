"""Commands that read a journal: ``status`` and ``report``.

Both open the journal read-only: no lock is taken and nothing is written, so they work
beside a run that is going (SQLite's WAL lets a reader read while the writer commits). A
journal that does not exist is an error (exit 2), never a new empty journal. Rendering is
pure (``status``, ``report``); it and every write to the terminal or a file run on a worker
thread, since a big run's report is megabytes.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import anyio

from fleet_reimage import api
from fleet_reimage.cli.options import command_parser, journal_option, quiet_stdout
from fleet_reimage.journal import (
    DEFAULT_JOURNAL_FILE,
    JOURNAL_ENV,
    Journal,
    RunRecord,
    RunStatus,
    is_postgres_url,
    open_journal,
    shown_location,
)
from fleet_reimage.units import count
from fleet_reimage.views.report import FORMATS, write_report
from fleet_reimage.views.runview import RunData
from fleet_reimage.views.status import RunSummary, run_status_json, run_text, runs_json, runs_text

CLEAR_SCREEN = "\x1b[H\x1b[2J"
DEFAULT_LIMIT = 20


def add_view_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_status(commands, common)
    _add_report(commands, common)


def _add_status(commands: Any, common: argparse.ArgumentParser) -> None:
    p = command_parser(
        commands,
        "status",
        common,
        cmd_status,
        "list the runs, or show where one run is now (read-only)",
        "Without RUN_ID: the runs in the journal, newest first, with their outcomes. With "
        "RUN_ID (or --latest): that run's status and reason, nodes per pool and outcome, what "
        "is in flight now (longest waiting first), failures grouped by Batch error code, the "
        "waves so far, and the command that continues it. Safe while the run is going: the "
        "journal is opened read-only and never locked.",
        "  fleet-reimage status --journal patch.db\n"
        "  fleet-reimage status --latest --journal patch.db\n"
        "  fleet-reimage status r20261125-224233-ab12cd --journal patch.db --output json\n"
        "  fleet-reimage status --latest --follow --journal postgresql://ops@db/fleet\n",
    )
    _run_choice(p)
    journal_option(p)
    p.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts (default: text)",
    )
    p.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"list at most N runs (default: {DEFAULT_LIMIT})",
    )
    p.add_argument(
        "--follow",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="keep showing the run, refreshed every SECONDS (default 2), until it is no longer "
        "running: live progress of a run driven from elsewhere (e.g. a shared journal)",
    )


def _add_report(commands: Any, common: argparse.ArgumentParser) -> None:
    p = command_parser(
        commands,
        "report",
        common,
        cmd_report,
        "a run's nodes, totals and timeline: table, json, csv, markdown",
        "Everything the journal knows about a run: one row per node (wave, outcome, attempts "
        "with their client-request-id and Batch request-id, times, last error or reason), the "
        "totals per pool, failures grouped by cause, and the wave timeline. csv holds the node "
        "rows only; json holds everything, with every attempt; markdown is ready to paste into "
        "a change ticket (its node table lists at most 500 nodes, the exceptions first).",
        "  fleet-reimage report r20261125-224233-ab12cd --journal patch.db\n"
        "  fleet-reimage report --latest --journal patch.db --format markdown "
        "--output CHG0042.md\n"
        "  fleet-reimage report r20261125-224233-ab12cd --format csv --output nodes.csv\n",
    )
    _run_choice(p)
    journal_option(p)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (terminal), json, csv (node rows) or markdown (default: table)",
    )
    p.add_argument(
        "--output", type=Path, metavar="FILE", help="write to FILE instead of standard output"
    )


def _run_choice(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_id", nargs="?", metavar="RUN_ID", help="the run (see `fleet-reimage status`)"
    )
    parser.add_argument("--latest", action="store_true", help="the newest run in the journal")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


# --- handlers ---------------------------------------------------------------------------


async def cmd_status(args: argparse.Namespace) -> int:
    async with _reading(args.journal) as store:
        if args.run_id is None and not args.latest:
            await _print(await _runs_listing(store, args))
            return 0
        while True:
            data = await _run_data(store, args)
            now = time.time()
            if args.output == "json":
                text = json.dumps(run_status_json(data, now), indent=2)
            else:
                text = run_text(data, now, following=_interval(args.follow))
            following = args.follow is not None and data.run.status is RunStatus.RUNNING
            if args.follow is not None and sys.stdout.isatty():
                text = CLEAR_SCREEN + text  # redraw in place, like `watch`
            await _print(text)
            if not following:
                return 0
            args.run_id = data.run.run_id  # keep following this run, even if a newer starts
            await anyio.sleep(max(0.2, args.follow))


def _interval(follow: float | None) -> float | None:
    """How often ``status --follow`` shows the run again (None: not following)."""
    return None if follow is None else max(0.2, follow)


async def _runs_listing(store: Journal, args: argparse.Namespace) -> str:
    runs = await store.runs()
    shown = runs[: args.limit]
    summaries = [
        RunSummary(run, Counter(t.state for t in await store.targets(run.run_id))) for run in shown
    ]
    if args.output == "json":
        return json.dumps(runs_json(summaries, _shown(args)), indent=2)
    return runs_text(summaries, _shown(args), len(runs) - len(shown))


async def cmd_report(args: argparse.Namespace) -> int:
    if args.run_id is None and not args.latest:
        raise api.RefusedError(
            "name the run to report on (RUN_ID or --latest); "
            f"`fleet-reimage status --journal {shown_location(args.journal)}` lists the runs"
        )
    async with _reading(args.journal) as store:
        data = await _run_data(store, args)
    write = functools.partial(write_report, data, args.format, now=time.time())
    if args.output is None:
        await anyio.to_thread.run_sync(_to_stdout, write)
        return 0
    await anyio.to_thread.run_sync(_to_file, write, args.output)
    nodes = count(len(data.targets), "node")
    print(f"wrote {args.output} ({nodes}, {args.format})", file=sys.stderr)
    return 0


# --- reading ----------------------------------------------------------------------------


@asynccontextmanager
async def _reading(location: str) -> AsyncIterator[Journal]:
    """The journal opened read-only; a missing one is refused, never created."""
    if not is_postgres_url(location) and not await anyio.Path(location).exists():
        raise api.RefusedError(
            f"there is no journal at {location}. Pass the journal the run wrote with "
            f"--journal PATH (or set ${JOURNAL_ENV}); without either it is "
            f"./{DEFAULT_JOURNAL_FILE} in the current folder"
        )
    store = await open_journal(location, readonly=True)
    try:
        yield store
    finally:
        await store.close()


async def _pick_run(store: Journal, args: argparse.Namespace) -> RunRecord:
    if args.run_id is not None:
        run = await store.get_run(args.run_id)
        if run is None:
            where = _shown(args)
            raise api.RefusedError(
                f"no run {args.run_id!r} in {where}; "
                f"`fleet-reimage status --journal {where}` lists the runs"
            )
        return run
    runs = await store.runs()
    if not runs:
        raise api.RefusedError(f"no run in {_shown(args)} yet")
    return runs[0]


async def _run_data(store: Journal, args: argparse.Namespace) -> RunData:
    run = await _pick_run(store, args)
    # Separate reads: beside a live run they are a few milliseconds apart, which a view of
    # a run in motion can afford (no read ever blocks the writer).
    targets = await store.targets(run.run_id)
    attempts = await store.attempts(run.run_id)
    events = await store.events(run.run_id)
    exclusions = await store.exclusions(run.run_id)
    return RunData(run, targets, attempts, events, exclusions, _shown(args))


def _shown(args: argparse.Namespace) -> str:
    """The journal as the user named it, for commands to copy; a URL without its password."""
    return shown_location(args.journal)


# --- writing (worker thread) ------------------------------------------------------------


async def _print(text: str) -> None:
    await anyio.to_thread.run_sync(_to_stdout, lambda out: out.write(text + "\n"))


def _to_stdout(write: Callable[[TextIO], object]) -> None:
    try:
        write(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()  # `report ... | head`: the reader left


def _to_file(write: Callable[[TextIO], object], path: Path) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            write(out)
    except OSError as exc:
        raise api.RefusedError(f"cannot write {path}: {exc.strerror}") from exc
