"""Helpers for end-to-end run tests: an emulator fleet, a plan pointing at it, a run."""

from __future__ import annotations

import base64
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fleet_reimage import api
from fleet_reimage.emulator.fleet import parse_fleet
from fleet_reimage.emulator.server import RunningEmulator, running_emulator
from fleet_reimage.engine.executor import RunResult, RunSettings
from fleet_reimage.journal import RunEvent, TargetRecord, open_journal
from fleet_reimage.journal.model import Journal

KEY = base64.b64encode(bytes(range(64))).decode()
KEY_ENV = "FR_TEST_BATCH_KEY"
T = TypeVar("T")


def named_nodes(prefix: str, count: int) -> list[str]:
    """Node ids for a fleet file's pool, listed by the test: an oracle of which nodes exist
    that does not come from the emulator or the client."""
    return [f"{prefix}-node-{index:04d}" for index in range(count)]


def fleet_text(pools: list[dict[str, Any]], **sections: Any) -> str:
    doc: dict[str, Any] = {
        "account": {"name": "emu", "key": KEY},
        "seed": 3,
        "pools": pools,
        "timings": {
            "reimaging": "50ms",
            "rebooting": "50ms",
            "starting": "50ms",
            "waitingforstarttask": "0s",
        },
    }
    doc.update(sections)
    return yaml.safe_dump(doc, sort_keys=False)


@asynccontextmanager
async def emulator(pools: list[dict[str, Any]], **sections: Any) -> AsyncIterator[RunningEmulator]:
    spec = parse_fleet(fleet_text(pools, **sections), "test-fleet.yaml")
    async with running_emulator(spec) as emu:
        yield emu


def write_plan(
    folder: Path,
    endpoint: str,
    *,
    pools: str = '[{match: "*"}]',
    rollout: str = "",
    execution: str = "",
    action: str = "reimage",
    option: str | None = None,
    name: str = "t",
) -> Path:
    rollout = (
        rollout
        or """
        waves: ["100%"]
        max_unavailable: "100%"
        health: {wait: true, poll_interval: 100ms, timeout: 20s}
        failure_budget: "100%"
    """
    )
    execution = (
        execution
        or """
        concurrency: 16
        per_account_concurrency: 16
        request_timeout: 1s
        retry: {max_attempts: 8, initial_backoff: 10ms, max_backoff: 100ms, busy_timeout: 5s}
    """
    )
    lines = [
        "version: 1",
        f"name: {name}",
        f"action: {action}",
        *([f"option: {option}"] if option is not None else []),
        "accounts:",
        "  - name: emu",
        f"    endpoint: {endpoint}",
        f"    auth: {{type: shared-key, account: emu, key_env: {KEY_ENV}}}",
        f"    pools: {pools}",
        "rollout:",
        textwrap.indent(textwrap.dedent(rollout).strip(), "  "),
        "execution:",
        textwrap.indent(textwrap.dedent(execution).strip(), "  "),
    ]
    text = "\n".join(lines) + "\n"
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def run(plan_path: Path, journal: Path, **settings: Any) -> RunResult:
    plan = api.load_plan(plan_path)
    return await api.run_plan(
        plan,
        journal=journal,
        settings=RunSettings(**settings),
        hooks=api.RunHooks(handle_signals=False),
    )


async def resume(journal: Path, **kwargs: Any) -> Any:
    return await api.resume_run(journal=journal, hooks=api.RunHooks(handle_signals=False), **kwargs)


async def first_run(journal: Path, read: Callable[[Journal, str], Awaitable[T]]) -> T:
    """What ``read(store, run_id)`` finds of the journal's first run (opened read-only)."""
    store = await open_journal(journal, readonly=True)
    try:
        return await read(store, (await store.runs())[0].run_id)
    finally:
        await store.close()


async def journal_targets(journal: Path) -> list[TargetRecord]:
    return await first_run(journal, lambda store, run_id: store.targets(run_id))


async def journal_events(journal: Path) -> list[RunEvent]:
    return await first_run(journal, lambda store, run_id: store.events(run_id))


async def journal_kinds(journal: Path) -> list[str]:
    """The kinds of the events the journal kept for its first run, in order."""
    return [event.kind for event in await journal_events(journal)]


def reimages(emu: RunningEmulator) -> dict[str, int]:
    return {n["id"]: n["reimages"] for n in emu.stats()["nodes"]}


class Recorder:
    """An observer that keeps every event, and can run a callback on one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.callbacks: dict[str, Any] = {}

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        self.events.append((kind, fields))
        callback = self.callbacks.get(kind)
        if callback is not None:
            callback(fields)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self.events if k == kind]


async def run_with(
    plan_path: Path, journal: Path, hooks: api.RunHooks, **settings: Any
) -> RunResult:
    plan = api.load_plan(plan_path)
    hooks.handle_signals = False
    return await api.run_plan(plan, journal=journal, settings=RunSettings(**settings), hooks=hooks)
