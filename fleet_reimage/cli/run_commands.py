"""The commands that plan and run: validate, plan, run, resume (argument groups + handlers)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from fleet_reimage import api, logs
from fleet_reimage.cli.collector import tune_for_run
from fleet_reimage.cli.options import command_parser, journal_option, parse_deadline
from fleet_reimage.engine.events import EventsFile, Observers, RunObserver
from fleet_reimage.engine.executor import Executor, RunResult, RunSettings
from fleet_reimage.engine.resumeopts import parse_max_unavailable
from fleet_reimage.engine.sharedrun import DEFAULT_LEASE
from fleet_reimage.journal import RunRecord, shown_location
from fleet_reimage.plan.changes import PlanChange
from fleet_reimage.plan.environment import as_warnings, environment_problems
from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.narrow import Narrowing, PoolGlob, read_node_list
from fleet_reimage.plan.resolve import Resolution
from fleet_reimage.plan.sections import MAX_CONCURRENCY
from fleet_reimage.units import Amount, UnitError, count, parse_duration
from fleet_reimage.views.drains import extra_lines
from fleet_reimage.views.dryrun import assumption, render_simulation, simulate
from fleet_reimage.views.eta import RecoveryMeter
from fleet_reimage.views.hints import continue_hint
from fleet_reimage.views.progress import start_progress, suspended
from fleet_reimage.views.schedule import render_schedule, resolution_json, waits_lines


def add_run_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    p = command_parser(
        commands,
        "validate",
        common,
        cmd_validate,
        "check a plan offline",
        "Check a plan file offline: every problem with its line, exit 2 if any.",
        "  fleet-reimage validate plans/patch-night.yaml\n",
    )
    p.add_argument("plan", type=Path, help="the plan file (YAML)")

    p = command_parser(
        commands,
        "plan",
        common,
        cmd_plan,
        "show what a plan would do (read-only)",
        "Resolve a plan against the service (read-only: nothing is changed) and show "
        "the schedule: selected nodes, exclusions by reason, waves, availability.",
        "  fleet-reimage plan plans/demo.yaml\n"
        "  fleet-reimage plan plans/demo.yaml --output json > schedule.json\n",
    )
    p.add_argument("plan", type=Path, help="the plan file (YAML)")
    p.add_argument("--output", choices=("text", "json"), default="text")
    _narrowing_options(p)

    p = command_parser(
        commands,
        "run",
        common,
        cmd_run,
        "run a plan (asks first on a terminal)",
        "Reimage (or reboot) what the plan selects, in waves, recording every request "
        "in the journal so that `resume` can finish an interrupted run. On a terminal it "
        "shows the schedule and asks before sending anything, then shows live progress per "
        "pool; otherwise it needs --yes and logs a progress line every few seconds. Ctrl-C "
        "stops after the requests in flight (a second Ctrl-C at once); `resume` continues.",
        "  fleet-reimage run plans/demo.yaml --dry-run\n"
        "  fleet-reimage run plans/demo.yaml\n"
        "  fleet-reimage run plans/patch-night.yaml --journal patch.db --yes "
        "--events events.jsonl\n"
        "  fleet-reimage run plans/patch-night.yaml --deadline 2026-11-26T06:00:00Z\n"
        "\n"
        "while it runs, from another terminal:\n"
        "  fleet-reimage status --latest --journal patch.db\n",
    )
    p.add_argument("plan", type=Path, help="the plan file (YAML)")
    journal_option(p)
    _execution_options(p, parse_deadline)
    _narrowing_options(p)
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for confirmation (required without a terminal)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list what the plan selects and simulate the waves (expected timeline and "
        "duration per pool); nothing that changes is sent, no journal is written",
    )
    p.add_argument(
        "--assume-recovery",
        type=_duration,
        metavar="DURATION",
        help="with --dry-run: how long a node takes to come back after its request "
        "(default: half the plan's health timeout)",
    )

    p = command_parser(
        commands,
        "resume",
        common,
        cmd_resume,
        "finish an interrupted or stopped run",
        "Continue a run from its journal: skips what is done, reconciles requests that "
        "were in flight when it stopped, and continues the wave ladder. A run stopped by its "
        "failure budget needs --accept-failures or --failure-budget N to go on.",
        "  fleet-reimage resume --journal patch.db\n"
        "  fleet-reimage resume r20261125-224233-ab12cd --journal patch.db\n"
        "  fleet-reimage resume r20261125-224233-ab12cd --accept-failures\n"
        "\n"
        "which runs can be resumed: fleet-reimage status --journal patch.db\n",
    )
    p.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        help="the run to resume (default: the latest unfinished run)",
    )
    journal_option(p)
    _execution_options(p, parse_deadline)
    p.add_argument(
        "--force-plan",
        action="store_true",
        help="accept a plan file that changed since the run started",
    )
    p.add_argument(
        "--accept-failures",
        action="store_true",
        help="forgive the failures so far; the budget applies to new ones",
    )
    p.add_argument(
        "--failure-budget",
        type=int,
        metavar="N",
        help="replace the failure budget with N failed nodes",
    )
    _override_options(p)


def _override_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "overrides (kept by the run for later resumes, and shown in status and report)"
    )
    group.add_argument(
        "--max-unavailable",
        type=_max_unavailable,
        metavar="N|P%",
        help="replace each pool's max_unavailable: a count, or a percent of the pool's nodes "
        "in the run",
    )
    group.add_argument(
        "--concurrency", type=_concurrency, metavar="N", help="requests in flight at once, run"
    )
    group.add_argument(
        "--per-account-concurrency",
        type=_concurrency,
        metavar="N",
        help="requests in flight at once per account (at most --concurrency)",
    )
    group.add_argument(
        "--retry-skipped",
        action="store_true",
        help="try the run's skipped nodes again (they become pending)",
    )


def _max_unavailable(text: str) -> Amount:
    try:
        return parse_max_unavailable(text)
    except (UnitError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _concurrency(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_CONCURRENCY}")
    return int(text)


def _narrowing_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "narrowing (only ever less than the plan selects; recorded in the run)"
    )
    group.add_argument(
        "--pool",
        dest="pools",
        action="append",
        type=_pool_glob,
        default=[],
        metavar="GLOB",
        help="keep only the plan's pools whose id matches GLOB (or ACCOUNT/GLOB); repeatable",
    )
    group.add_argument(
        "--nodes-from",
        type=Path,
        metavar="FILE",
        help="keep only the selected nodes listed in FILE (one node id a line, # comments); "
        "a listed node the plan does not select is reported, not added",
    )


def _pool_glob(text: str) -> PoolGlob:
    try:
        return PoolGlob.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _narrowing(args: argparse.Namespace) -> Narrowing | None:
    """The --pool and --nodes-from options (the file is read off the event loop)."""
    nodes = None
    if args.nodes_from is not None:
        nodes = await anyio.to_thread.run_sync(read_node_list, args.nodes_from)
    narrowing = Narrowing(tuple(args.pools), nodes)
    return narrowing or None


def _execution_options(parser: argparse.ArgumentParser, deadline: Any) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--deadline",
        type=deadline,
        metavar="WHEN",
        help="start nothing new after this (ISO time with zone, or 2h from now)",
    )
    group.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="append run events as JSON lines to FILE (kinds and fields: docs/events.md)",
    )
    group.add_argument(
        "--notify",
        action="append",
        default=[],
        metavar="URL",
        help="POST the run's milestones as JSON to this webhook (repeatable; Slack and Teams "
        "show its text line); the URL is a secret: never printed or journaled",
    )
    group.add_argument(
        "--join",
        action="store_true",
        help="with a postgresql:// journal: take a share of a run other runners are driving "
        "(work is claimed with leases; limits hold across all runners)",
    )
    group.add_argument(
        "--lease",
        type=_duration,
        default=DEFAULT_LEASE,
        metavar="DURATION",
        help="shared runs: how long this runner's claims survive without a heartbeat; "
        f"another runner takes its nodes over after that (default {DEFAULT_LEASE:g}s)",
    )


async def _load(path: Path) -> Plan:
    return await anyio.to_thread.run_sync(api.load_plan, path)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_warnings(plan: Plan) -> None:
    for warning in plan.warnings:
        print(warning.render(), file=sys.stderr)


async def cmd_validate(args: argparse.Namespace) -> int:
    plan = await _load(args.plan)
    _print_warnings(plan)
    # Offline, and perhaps not where the plan will run: an unset key variable is a warning.
    missing = environment_problems(plan.source.text, args.plan, os.environ)
    for problem in as_warnings(missing):
        print(
            f"{problem.render()} (validate only warns: the variable must be set where the "
            "plan runs)",
            file=sys.stderr,
        )
    print(
        f"{args.plan}: valid: plan {plan.name}, {plan.action.value}, "
        f"{count(len(plan.accounts), 'account')}"
    )
    return 0


async def cmd_plan(args: argparse.Namespace) -> int:
    plan = await _load(args.plan)
    resolution = await api.resolve_plan(plan, narrowing=await _narrowing(args))
    if args.output == "json":
        print(json.dumps(resolution_json(resolution), indent=2))
    else:
        print(render_schedule(resolution))
    return 0


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


async def _ask(question: str) -> bool:
    def ask() -> str:
        try:
            return input(f"{question} [yes/no] ")
        except EOFError:
            return ""

    async with suspended():  # a live progress display would draw over the question
        answer = await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)
    return answer.strip().lower() in ("y", "yes")


async def _confirm_start(resolution: Resolution) -> bool:
    print(render_schedule(resolution))
    plan = resolution.plan
    return await _ask(
        f"{plan.action.value.capitalize()} {count(resolution.total_selected, 'node')} "
        f"in {count(len(resolution.pools), 'pool')}?"
    )


async def _warn_and_go(resolution: Resolution) -> bool:
    """With --yes nothing is asked, but what the service showed is still said (stderr)."""
    for warning in resolution.warnings:
        if warning not in resolution.plan.warnings:  # those were printed on loading
            print(warning.render(), file=sys.stderr)
    for line in waits_lines(resolution.plan):  # never a gate the operator was not shown
        print(line[2:], file=sys.stderr)
    return True


def _settings(args: argparse.Namespace, plan: Plan) -> RunSettings:
    deadlines = [
        d for d in (args.deadline, plan.rollout.deadline and plan.rollout.deadline.timestamp()) if d
    ]
    return RunSettings(
        deadline=min(deadlines) if deadlines else None,
        confirm=_ask if _interactive() else None,
        stop_grace=plan.execution.request_timeout + 5.0,
    )


async def _run_with_views(
    args: argparse.Namespace, start: Callable[[api.RunHooks], Awaitable[RunResult | RunRecord]]
) -> RunResult | RunRecord:
    """Run ``start`` with the events file and live progress attached."""
    recoveries = RecoveryMeter()  # how long nodes take: the live ETA follows it
    observers: list[RunObserver] = [recoveries]
    events = await _open_events(args.events) if args.events else None
    if events:
        observers.append(events)
    executors: list[Executor] = []

    def ready(executor: Executor) -> None:
        executors.append(executor)
        tune_for_run()  # the run's state is built (see cli/collector.py)

    hooks = api.RunHooks(observer=Observers(observers), on_executor=ready, notify=args.notify)
    async with anyio.create_task_group() as group:
        if events:
            group.start_soon(events.run)
        # Without the live table, progress lines reach standard error even when the log
        # goes to a file (cli/logsetup.py).
        setup = getattr(args, "log_setup", None)
        echo = sys.stderr if setup is not None and setup.file else None
        progress = start_progress(group, executors, recoveries=recoveries, echo=echo)
        try:
            result = await start(hooks)
        finally:
            progress.close()
            group.cancel_scope.cancel()
    return result


async def _open_events(path: Path) -> EventsFile:
    try:
        return await EventsFile.open(path)  # UnsafeFile (a link, a FIFO, ...) is exit 2 too
    except OSError as exc:
        raise api.RefusedError(f"cannot open the events file {path}: {exc.strerror}") from exc


async def cmd_run(args: argparse.Namespace) -> int:
    plan = await _load(args.plan)
    _print_warnings(plan)
    if args.assume_recovery is not None and not args.dry_run:
        raise api.RefusedError("--assume-recovery only applies to a --dry-run")
    narrowing = await _narrowing(args)
    if args.dry_run:
        deadline = _settings(args, plan).deadline
        return await dry_run(
            plan, assume_recovery=args.assume_recovery, deadline=deadline, narrowing=narrowing
        )
    if not args.yes and not _interactive():
        raise api.RefusedError(
            "not on a terminal: pass --yes to run without confirmation "
            "(see `fleet-reimage plan` for what would happen)"
        )
    settings = _settings(args, plan)

    async def start(hooks: api.RunHooks) -> RunResult:
        hooks.confirm_start = _warn_and_go if args.yes else _confirm_start
        return await api.run_plan(
            plan,
            journal=args.journal,
            settings=settings,
            hooks=hooks,
            join=args.join,
            lease=args.lease,
            narrowing=narrowing,
        )

    result = await _run_with_views(args, start)
    assert isinstance(result, RunResult)
    return _print_result(result, args.journal)


async def cmd_resume(args: argparse.Namespace) -> int:
    async def start(hooks: api.RunHooks) -> RunResult | RunRecord:
        settings = RunSettings(deadline=args.deadline, confirm=_ask if _interactive() else None)
        hooks.on_plan_changes = _print_plan_changes
        return await api.resume_run(
            args.run_id,
            journal=args.journal,
            force_plan=args.force_plan,
            accept_failures=args.accept_failures,
            failure_budget=args.failure_budget,
            retry_skipped=args.retry_skipped,
            max_unavailable=args.max_unavailable,
            concurrency=args.concurrency,
            per_account_concurrency=args.per_account_concurrency,
            settings=settings,
            hooks=hooks,
            join=args.join,
            lease=args.lease,
        )

    result = await _run_with_views(args, start)
    if isinstance(result, RunRecord):
        print(
            f"run {result.run_id} is already finished; nothing to do "
            f"(see `fleet-reimage report {result.run_id} --journal "
            f"{shown_location(args.journal)}`)"
        )
        return 0
    return _print_result(result, args.journal)


def _print_plan_changes(changes: Sequence[PlanChange]) -> None:
    """What a changed plan (--force-plan) changes in the run, before anything is sent."""
    late = [c for c in changes if not c.applies]
    lines = [f"the plan changed since the run started ({count(len(changes), 'setting')}):"]
    lines += [f"  {change.line()}" for change in changes]
    if late:
        lines.append(f"  not taking effect in this run: {count(len(late), 'change')} (see above)")
    print("\n".join(lines), file=sys.stderr)


def _print_result(result: RunResult, location: str) -> int:
    logs.flush()  # every log line first, whole: none lands in the middle of the summary
    journal = shown_location(location)  # a PostgreSQL URL without its password
    counts = ", ".join(
        f"{number} {state.replace('_', ' ')}" for state, number in result.counts.items() if number
    )
    print(f"run {result.run_id}: {result.status.value} (exit {result.exit_code}): {counts}")
    for pool, reason in result.stopped_pools.items():
        print(f"  pool {pool} stopped: {reason}")
    if result.reason and (result.stop_kind or not result.stopped_pools):
        print(f"  reason: {result.reason}")
    for line in extra_lines(result):
        print(f"  {line}")
    if result.status.resumable:
        hint = continue_hint(
            result.run_id,
            journal,
            budget_spent=result.stop_kind == "budget",
            deadline_passed=result.stop_kind == "deadline",
        )
        print(f"  to continue: {hint.command}")
        for line in hint.why:
            print(f"    ({line})")
    print(f"  details: fleet-reimage report {result.run_id} --journal {journal}")
    return result.exit_code


async def dry_run(
    plan: Plan,
    *,
    assume_recovery: float | None = None,
    deadline: float | None = None,
    narrowing: Narrowing | None = None,
) -> int:
    resolution = await api.resolve_plan(plan, narrowing=narrowing)
    assumed = assumption(plan, assume_recovery)
    pools = simulate(resolution, assumed)
    if deadline is None and plan.rollout.deadline is not None:
        deadline = plan.rollout.deadline.timestamp()
    text = "\n".join(
        (
            render_schedule(resolution),
            render_simulation(resolution, pools, assumed, deadline),
            "dry run: no request that changes anything was sent, and no journal was written",
        )
    )
    await anyio.to_thread.run_sync(print, text)  # a terminal write may block: not on the loop
    return 0
