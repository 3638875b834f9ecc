"""Stopping and resuming through the Python API: graceful stop, abort, auth, plan changes."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from runhelpers import (
    KEY,
    KEY_ENV,
    Recorder,
    emulator,
    journal_targets,
    reimages,
    resume,
    run,
    run_with,
    write_plan,
)

from fleet_reimage import api
from fleet_reimage.batch.http11 import Http11Transport
from fleet_reimage.batch.transport import HttpRequest, HttpResponse
from fleet_reimage.engine.executor import Executor
from fleet_reimage.errors import InputError
from fleet_reimage.journal import RunRecord, RunStatus, TargetState

pytestmark = pytest.mark.anyio
POOLS = [
    {"id": "a", "nodes": 40},
    {"id": "b", "nodes": 20},
]
SLOW = {"reimaging": "300ms", "starting": "100ms"}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def stop_after(recorder: Recorder, executors: list[Executor], count: int, how: str) -> None:
    accepted = 0

    def on_accept(_: dict[str, object]) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == count:
            if how == "graceful":
                executors[0].request_stop("interrupted", "test stop")
            else:
                executors[0].abort()

    recorder.callbacks["node_accepted"] = on_accept


@pytest.mark.parametrize("how", ["graceful", "abort"])
async def test_interrupted_run_resumes_exactly_once(tmp_path: Path, how: str) -> None:
    async with emulator(POOLS, timings=SLOW) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [2, "100%"]
            max_unavailable: 5
            health: {wait: true, poll_interval: 100ms, timeout: 20s}
        """,
        )
        journal = tmp_path / "j.db"
        recorder, executors = Recorder(), []
        stop_after(recorder, executors, 6, how)
        hooks = api.RunHooks(observer=recorder, on_executor=executors.append)
        with anyio.fail_after(30):
            first = await run_with(plan, journal, hooks)
        assert first.status is RunStatus.INTERRUPTED and first.exit_code == 130
        partial = reimages(emu)
        assert 0 < sum(partial.values()) < 60
        targets = await journal_targets(journal)
        assert any(t.state is TargetState.PENDING for t in targets)
        with anyio.fail_after(60):
            final = await resume(journal)
        assert isinstance(final, api.RunResult) and final.exit_code == 0
        assert set(reimages(emu).values()) == {1}
        with anyio.fail_after(10):
            again = await resume(journal)
        assert isinstance(again, RunRecord) and again.status is RunStatus.FINISHED


class ForgetfulTransport(Http11Transport):
    """Loses the credential after a number of reimage requests (a revoked key)."""

    def __init__(self, good_requests: int) -> None:
        super().__init__(pool_size=16)
        self.left = good_requests

    async def send(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            self.left -= 1
            if self.left < 0:
                request.headers["Authorization"] = "SharedKey emu:bm90IHRoZSBzaWduYXR1cmU="
        return await super().send(request)


async def test_auth_failure_stops_the_whole_run_and_resume_finishes(tmp_path: Path) -> None:
    async with emulator(POOLS) as emu:
        plan_path = write_plan(tmp_path, emu.url)
        journal = tmp_path / "j.db"
        transport = ForgetfulTransport(good_requests=10)
        plan = api.load_plan(plan_path)
        try:
            with anyio.fail_after(30):
                first = await api.run_plan(
                    plan,
                    journal=journal,
                    transport=transport,
                    hooks=api.RunHooks(handle_signals=False),
                )
        finally:
            await transport.close()
        assert first.exit_code == 3 and first.status is RunStatus.STOPPED
        assert "authentication failed" in (first.reason or "")
        done = sum(reimages(emu).values())
        assert 10 <= done < 60
        targets = await journal_targets(journal)
        assert not any(t.state is TargetState.FAILED for t in targets)  # auth is not per-node
        with anyio.fail_after(60):
            final = await resume(journal)
        assert isinstance(final, api.RunResult) and final.exit_code == 0
        assert set(reimages(emu).values()) == {1}


async def test_resume_refuses_a_changed_plan_unless_forced(tmp_path: Path) -> None:
    async with emulator(POOLS, timings=SLOW) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [1, "100%"]
            max_unavailable: 5
            health: {wait: true, poll_interval: 100ms, timeout: 20s}
            confirm_after_wave: 1
        """,
        )
        journal = tmp_path / "j.db"
        with anyio.fail_after(30):
            first = await run(plan, journal)
        assert first.exit_code == 3  # stopped at the checkpoint
        plan.write_text(plan.read_text().replace("max_unavailable: 5", "max_unavailable: 6"))
        with pytest.raises(InputError) as caught:
            await resume(journal)
        message = caught.value.render()
        assert "--force-plan" in message and "-  max_unavailable: 5" in message
        assert "+  max_unavailable: 6" in message
        with anyio.fail_after(60):
            final = await resume(journal, force_plan=True)
        assert isinstance(final, api.RunResult) and final.exit_code == 0
        assert set(reimages(emu).values()) == {1}


async def test_a_second_run_of_an_unfinished_plan_is_refused(tmp_path: Path) -> None:
    async with emulator(POOLS) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [1, "100%"]
            max_unavailable: 5
            health: {wait: true, poll_interval: 100ms, timeout: 20s}
            confirm_after_wave: 1
        """,
        )
        journal = tmp_path / "j.db"
        with anyio.fail_after(30):
            first = await run(plan, journal)
        with pytest.raises(api.RefusedError, match=f"resume {first.run_id}"):
            await run(plan, journal)
