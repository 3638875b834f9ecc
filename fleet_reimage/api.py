"""The Python API that the command line is a thin layer over.

    from fleet_reimage import api

    plan = api.load_plan("plans/demo.yaml")            # validate (raises InputError)
    resolution = await api.resolve_plan(plan)          # what would happen (read-only)
    result = await api.run_plan(plan, journal="fleet-reimage.db")
    result = await api.resume_run(journal="fleet-reimage.db")   # latest unfinished run

Every function is async (anyio) except ``load_plan``. Results are plain dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from fleet_reimage.engine.connect import Connections, connect
from fleet_reimage.engine.events import NullObserver, Observers, RunObserver
from fleet_reimage.engine.executor import Executor, RunResult, RunSettings
from fleet_reimage.engine.notify import Notifier, Webhook, urls_from_environment, webhooks
from fleet_reimage.engine.resumeopts import (
    OVERRIDES,
    OverrideRefused,
    ResumeOptions,
    accept_changed_plan,
    plan_with_overrides,
)
from fleet_reimage.engine.runner import create_run, execute, owner_label
from fleet_reimage.engine.sharedrun import DEFAULT_LEASE, SharedSettings, new_runner
from fleet_reimage.errors import FleetReimageError, InputError, Problem, RefusedError

from .batch.transport import Transport
from .journal import (
    Journal,
    JournalError,
    RunRecord,
    RunStatus,
    TargetState,
    UnfinishedRun,
    is_postgres_url,
    open_journal,
)
from .plan.changes import PlanChange, PlanChangeRefused
from .plan.environment import environment_problems
from .plan.load import load_plan as _load_plan
from .plan.load import parse_plan
from .plan.model import Plan
from .plan.narrow import Narrowing, describe
from .plan.resolve import Resolution, resolve
from .units import Amount
from .views.hints import Hint, continue_hint, run_hint

DEFAULT_JOURNAL = "fleet-reimage.db"


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; raises ``InputError`` with every problem found."""
    return _load_plan(Path(path))


async def resolve_plan(
    plan: Plan, *, transport: Transport | None = None, narrowing: Narrowing | None = None
) -> Resolution:
    """List what the plan selects (read-only; starts in-process emulators as needed).

    ``narrowing`` (``--pool``, ``--nodes-from``) keeps part of the plan's selection."""
    async with connect(plan, transport=transport) as connections:
        return await resolve(plan, connections.clients, narrowing=narrowing)


@dataclass(slots=True)
class RunHooks:
    """Ways for a caller (the CLI, a notebook) to watch and steer a run."""

    observer: RunObserver | None = None
    confirm_start: Callable[[Resolution], Awaitable[bool]] | None = None
    on_executor: Callable[[Executor], None] | None = None  # e.g. to show live progress
    # told what a changed plan changes in a resumed run (``resume --force-plan``)
    on_plan_changes: Callable[[Sequence[PlanChange]], None] | None = None
    handle_signals: bool = True  # SIGINT/SIGTERM: stop gracefully, a second time at once
    # webhook URLs (--notify), besides the plan's ``notify``; secrets: never journaled
    notify: Sequence[str] = ()


@asynccontextmanager
async def _writable_journal(location: str | Path, owner: str) -> AsyncIterator[Journal]:
    journal = await open_journal(location)
    try:
        await journal.lock_for_writing(owner)
        yield journal
    finally:
        await journal.close()


def _shared(location: str | Path, *, join: bool, lease: float) -> SharedSettings | None:
    """PostgreSQL journals run in shared mode (claims with leases); SQLite ones alone."""
    if not is_postgres_url(location):
        if join:
            raise RefusedError(
                "--join needs a journal shared between machines: pass "
                "--journal postgresql://... (a SQLite file has one writer)"
            )
        return None
    return SharedSettings(runner=new_runner(), exclusive=not join, lease=lease)


async def run_plan(
    plan: Plan,
    *,
    journal: str | Path = DEFAULT_JOURNAL,
    settings: RunSettings | None = None,
    hooks: RunHooks | None = None,
    options: dict[str, Any] | None = None,
    transport: Transport | None = None,
    join: bool = False,
    lease: float = DEFAULT_LEASE,
    narrowing: Narrowing | None = None,
) -> RunResult:
    """Resolve the plan, record the run in the journal, and run it to its end or a stop.

    With ``join`` (PostgreSQL journals), take a share of the unfinished run of this plan if
    there is one (started elsewhere), instead of refusing. ``narrowing`` (``--pool``,
    ``--nodes-from``) keeps part of the plan's selection; the run records it.
    """
    if narrowing and join:
        raise RefusedError(
            "--pool and --nodes-from narrow a new run; --join takes a share of a run as it "
            "was created"
        )
    hooks = hooks or RunHooks()
    settings = settings or RunSettings()
    shared = _shared(journal, join=join, lease=lease)
    hooked = _webhooks(plan, hooks)  # a wrong webhook is refused before anything is written
    async with _writable_journal(journal, owner_label(None)) as store:
        # Early, so that an operator is not asked to confirm what will be refused; the
        # atomic check is create_run's (another operator may be confirming right now).
        existing = await _unfinished_run_of(store, plan)
        if existing is not None and not join:
            raise await _refuse_second_run(existing, store, shared)
        async with connect(plan, transport=transport) as connections:
            if existing is not None:
                return await _execute(
                    existing, plan, store, connections, settings, hooks, hooked, shared=shared
                )
            resolution = await resolve(plan, connections.clients, narrowing=narrowing)
            if resolution.total_selected == 0:
                narrowed = describe(narrowing.as_options()) if narrowing else None
                raise RefusedError(
                    "the plan selects no node"
                    + (f" once narrowed by {narrowed}" if narrowed else "")
                    + "; nothing to do"
                )
            if hooks.confirm_start is not None and not await hooks.confirm_start(resolution):
                raise RefusedError("not confirmed; nothing was sent")
            options = {**(options or {}), "deadline": settings.deadline}
            if narrowing:
                options["narrowing"] = narrowing.as_options()
            try:
                run, records = await create_run(
                    plan, resolution, store, options=options, unless_unfinished=True
                )
            except UnfinishedRun as exc:  # created meanwhile by another runner
                existing = await store.get_run(exc.run_id)
                if existing is None:  # pragma: no cover - a run is never deleted
                    raise RefusedError(str(exc)) from exc
                if not join:
                    raise await _refuse_second_run(existing, store, shared) from exc
                return await _execute(
                    existing, plan, store, connections, settings, hooks, hooked, shared=shared
                )
            return await _execute(
                run,
                plan,
                store,
                connections,
                settings,
                hooks,
                hooked,
                shared=shared,
                records=records,
            )


async def _refuse_second_run(
    existing: RunRecord, store: Journal, shared: SharedSettings | None
) -> RefusedError:
    hint = await _hint(store, existing)  # a command that works, not one refused again
    return RefusedError(
        f"run {existing.run_id} of this plan is unfinished ({existing.status.value}, "
        f"last run by {existing.host} pid {existing.pid}): resume it with "
        f"`{hint.command}`"
        + (" or take a share of it with --join" if shared is not None else "")
        + "".join(f"\n  ({line})" for line in hint.why)
    )


async def resume_run(
    run_id: str | None = None,
    *,
    journal: str | Path = DEFAULT_JOURNAL,
    force_plan: bool = False,
    accept_failures: bool = False,
    failure_budget: int | None = None,
    retry_skipped: bool = False,
    max_unavailable: Amount | None = None,
    concurrency: int | None = None,
    per_account_concurrency: int | None = None,
    settings: RunSettings | None = None,
    hooks: RunHooks | None = None,
    transport: Transport | None = None,
    join: bool = False,
    lease: float = DEFAULT_LEASE,
) -> RunResult | RunRecord:
    """Continue a run (the latest unfinished one by default).

    Returns the finished ``RunRecord`` unchanged when there is nothing left to do (unless
    ``retry_skipped`` finds skipped nodes to try again). With a PostgreSQL journal, ``join``
    takes a share of a run other runners are still driving. ``settings.deadline``,
    ``failure_budget``, ``max_unavailable``, ``concurrency`` and ``per_account_concurrency``
    override the run's (kept for later resumes, journaled as ``override`` events); with
    ``force_plan``, a changed plan's settings take effect or are listed with why not
    (``hooks.on_plan_changes``). See ``engine/resumeopts.py``.
    """
    hooks = hooks or RunHooks()
    settings = settings or RunSettings()
    shared = _shared(journal, join=join, lease=lease)
    async with _writable_journal(journal, owner_label(run_id, "resuming a run")) as store:
        run = await _find_run(store, run_id)
        if run.status is RunStatus.FINISHED and not (
            retry_skipped and await _has_skipped(store, run)
        ):
            return run
        resume = ResumeOptions(
            accept_failures=accept_failures,
            failure_budget=failure_budget,
            retry_skipped=retry_skipped,
            max_unavailable=max_unavailable,
            concurrency=concurrency,
            per_account_concurrency=per_account_concurrency,
            deadline=settings.deadline,
        )
        plan, resume = await _plan_for_resume(store, run, force_plan, resume)
        if hooks.on_plan_changes is not None and resume.plan_changes:
            hooks.on_plan_changes(resume.plan_changes)
        if settings.deadline is None:
            settings.deadline = _deadline_of(run, resume)
        _check_overrides(plan, run, resume)
        hooked = _webhooks(plan, hooks)
        async with connect(plan, transport=transport) as connections:
            return await _execute(
                run,
                plan,
                store,
                connections,
                settings,
                hooks,
                hooked,
                resuming=True,
                resume=resume,
                shared=shared,
            )


def _check_overrides(plan: Plan, run: RunRecord, resume: ResumeOptions) -> None:
    """Refuse overrides that do not fit together, before anything is sent."""
    overrides = {**(run.options.get(OVERRIDES) or {}), **resume.given()}
    try:
        plan_with_overrides(plan, {**run.options, OVERRIDES: overrides})
    except OverrideRefused as exc:
        raise RefusedError(str(exc)) from None


def _deadline_of(run: RunRecord, resume: ResumeOptions) -> float | None:
    """The resumed run's deadline when --deadline is not given: a changed plan's (when that
    change takes effect), else the run's own."""
    if resume.plan_changed("rollout.deadline"):
        return resume.plan_deadline
    recorded = run.options.get("deadline")
    return float(recorded) if recorded else None


async def _has_skipped(store: Journal, run: RunRecord) -> bool:
    return any(t.state is TargetState.SKIPPED for t in await store.targets(run.run_id))


async def _execute(
    run: RunRecord,
    plan: Plan,
    store: Journal,
    connections: Connections,
    settings: RunSettings,
    hooks: RunHooks,
    hooked: Sequence[Webhook],
    **kwargs: Any,
) -> RunResult:
    """Run ``run`` to its end; ``hooked``: its webhooks (``_webhooks``, which the caller
    asked before connecting, so that a wrong one is refused before anything is sent)."""
    executors: list[Executor] = []
    await store.lock_for_writing(owner_label(run.run_id))  # a contender is told which run
    notifier = Notifier(hooked, plan=plan.name) if hooked else None
    observer = hooks.observer or NullObserver()
    if notifier is not None:
        observer = Observers([observer, notifier])
    sender = anyio.CancelScope()

    def ready(executor: Executor) -> None:
        executors.append(executor)
        if hooks.on_executor is not None:
            hooks.on_executor(executor)

    async with anyio.create_task_group() as group:
        if hooks.handle_signals:
            group.start_soon(_stop_on_signals, executors)
        if notifier is not None:
            group.start_soon(_send_notifications, notifier, sender)
        result = await execute(
            run,
            plan,
            store,
            connections.clients,
            settings=settings,
            observer=observer,
            executor_ready=ready,
            **kwargs,
        )
        if notifier is not None:  # a bounded wait: notifications never hold the run
            await notifier.close(sender)
            result = dataclasses.replace(result, notifications=notifier.summary())
        group.cancel_scope.cancel()
    return result


def _webhooks(plan: Plan, hooks: RunHooks) -> list[Webhook]:
    """The run's webhooks: --notify's, then the plan's (their URLs from the environment)."""
    if plan.notify:  # an unset variable is a plan problem, said with its line
        missing = environment_problems(plan.source.text, plan.source.path, os.environ)
        missing = [p for p in missing if p.path.startswith("notify")]
        if missing:
            raise InputError(missing)
    from_plan = urls_from_environment([n.url_env for n in plan.notify], os.environ)
    return webhooks([*hooks.notify, *from_plan])


async def _send_notifications(notifier: Notifier, scope: anyio.CancelScope) -> None:
    with scope:
        await notifier.run()


async def _stop_on_signals(executors: list[Executor]) -> None:
    """First SIGINT/SIGTERM: stop dispatching, let requests finish. Second: stop at once."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            for executor in executors:
                if count == 1:
                    executor.request_stop(
                        "interrupted",
                        f"{signal.Signals(signum).name} "
                        "received: stopping after requests in flight",
                    )
                else:
                    executor.abort()


async def _find_run(store: Journal, run_id: str | None) -> RunRecord:
    if run_id is not None:
        run = await store.get_run(run_id)
        if run is None:
            raise RefusedError(f"no run {run_id!r} in {store.location}")
        return run
    runs = await store.runs()
    unfinished = [run for run in runs if run.status is not RunStatus.FINISHED]
    if not unfinished:
        if runs:
            return runs[0]
        raise RefusedError(f"no run in {store.location}: nothing to resume")
    return unfinished[0]


async def _plan_for_resume(
    store: Journal, run: RunRecord, force_plan: bool, resume: ResumeOptions
) -> tuple[Plan, ResumeOptions]:
    """The plan file as it is now, and what its changes do to the run (``plan/changes.py``);
    refused if it changed, unless ``force_plan``."""
    path = Path(run.plan_path)
    try:
        text = await anyio.Path(path).read_text(encoding="utf-8")
    except OSError:
        return parse_plan(run.plan_text, path), resume  # the file is gone: the journal has it
    if text == run.plan_text:
        return parse_plan(text, path), resume
    if not force_plan:
        hint = await _hint(store, run, force_plan=True)
        diff = "".join(
            difflib.unified_diff(
                run.plan_text.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{path} (when run {run.run_id} started)",
                tofile=f"{path} (now)",
            )
        )
        raise InputError(
            [
                Problem(
                    str(path),
                    None,
                    None,
                    "",
                    "the plan changed since the run started; to accept the change, resume "
                    f"with --force-plan: {hint.command}\n" + diff,
                )
            ]
        )
    try:
        plan, resume = accept_changed_plan(run, text, path, resume)
    except PlanChangeRefused as exc:
        raise RefusedError(f"{path}: cannot continue run {run.run_id}: {exc}") from None
    await store.replace_plan(run.run_id, text, plan.source.sha256)
    return plan, resume


async def _hint(store: Journal, run: RunRecord, *, force_plan: bool = False) -> Hint:
    """The command that continues ``run`` (not one that would be refused again)."""
    hint = run_hint(run, store.location, await store.events(run.run_id), time.time())
    hint = hint or continue_hint(run.run_id, store.location)
    if force_plan:
        hint = Hint(hint.command.replace(" --journal ", " --force-plan --journal ", 1), hint.why)
    return hint


async def _unfinished_run_of(store: Journal, plan: Plan) -> RunRecord | None:
    """The newest unfinished run of exactly this plan text, if any."""
    for run in await store.runs():
        if run.status is not RunStatus.FINISHED and run.plan_sha256 == plan.source.sha256:
            return run
    return None


__all__ = [
    "DEFAULT_JOURNAL",
    "FleetReimageError",
    "InputError",
    "JournalError",
    "RefusedError",
    "RunHooks",
    "RunResult",
    "RunSettings",
    "load_plan",
    "resolve_plan",
    "resume_run",
    "run_plan",
]
