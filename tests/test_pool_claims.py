"""Two journals, same nodes (issue 13, item 2): ``rollout.claim_pools`` keeps two runs off one
pool, whatever journal or machine each uses; and ``plan``/``run`` warn about nodes booted
within the last hour, which ``nodes.skip_booted_within`` leaves out.

The emulator is the oracle: its pool metadata (what another run would read), its request
counts by operation and status, and each node's reimage count.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from clihelpers import emulator_process, fleet_reimage
from runhelpers import (
    KEY,
    KEY_ENV,
    Recorder,
    emulator,
    journal_targets,
    reimages,
    run_with,
    write_plan,
)

from fleet_reimage import api
from fleet_reimage.batch.aiohttp_transport import AiohttpTransport
from fleet_reimage.batch.transport import HttpRequest, HttpResponse, Transport
from fleet_reimage.emulator.server import RunningEmulator
from fleet_reimage.engine import poolclaim
from fleet_reimage.engine.executor import RunSettings
from fleet_reimage.journal import RunStatus, TargetState
from fleet_reimage.rollout.poolclaim import CLAIM_KEY

pytestmark = pytest.mark.anyio

SLOW = {"reimaging": "200ms", "starting": "100ms"}
TEAM = ("team", "render")


def rollout(extra: str = "") -> str:
    return f"""
        waves: [1, "100%"]
        max_unavailable: 2
        health: {{wait: true, poll_interval: 100ms, timeout: 20s}}
        failure_budget: "100%"
        claim_pools: true
        {extra}
    """


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def metadata(emu: RunningEmulator, pool: str = "p") -> list[tuple[str, str]]:
    return list(emu.state.pool(pool).metadata)


async def test_a_run_with_another_journal_is_refused_naming_the_run_that_holds_the_pool(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 6, "metadata": dict([TEAM])}]
    async with emulator(pools, timings=SLOW) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout("confirm_after_wave: 1"))
        first = Recorder()
        at_checkpoint, second_done = anyio.Event(), anyio.Event()
        held: list[list[tuple[str, str]]] = []

        async def confirm(_: str) -> bool:  # the first run waits here, holding its claim
            held.append(metadata(emu))
            at_checkpoint.set()
            await second_done.wait()
            return True

        results: dict[str, Any] = {}

        async def first_run() -> None:
            hooks = api.RunHooks(observer=first)
            results["first"] = await run_with(plan, tmp_path / "a.db", hooks, confirm=confirm)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(first_run)
                await at_checkpoint.wait()
                second = await run_with(plan, tmp_path / "b.db", api.RunHooks())
                second_done.set()
        stats = emu.stats()
        run_a = first.kinds("run_started")[0]["run_id"]
        assert set(reimages(emu).values()) == {1}  # every node once, by the first run
        assert stats["requests"]["by_operation"]["reimage"] == 6  # the second sent none
        assert metadata(emu) == [TEAM]  # the claim removed at the end, the rest kept
    host = socket.gethostname()
    assert held[0][0] == TEAM and held[0][1][0] == CLAIM_KEY
    assert held[0][1][1].startswith(f"run={run_a} host={host} expires=")
    assert results["first"].status is RunStatus.FINISHED
    assert (second.status, second.exit_code) == (RunStatus.STOPPED, 3)
    reason = second.stopped_pools["emu/p"]
    assert reason.startswith(f"claimed by run {run_a} on host {host} (until ")
    assert reason.endswith(
        "): another run is working on this pool; its nodes stay pending (resume once that run "
        "is done)"
    )
    assert {t.state for t in await journal_targets(tmp_path / "b.db")} == {TargetState.PENDING}
    assert [e["pool"] for e in first.kinds("pool_released")] == ["p"]


async def test_an_expired_claim_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    stale = "run=r20200101-000000-dead00 host=gone-host expires=2020-01-01T00:00:00Z"
    pools = [{"id": "p", "nodes": 3, "metadata": {CLAIM_KEY: stale, "team": "render"}}]
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout())
        recorder = Recorder()
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", api.RunHooks(observer=recorder))
        assert set(reimages(emu).values()) == {1}
        assert metadata(emu) == [TEAM]
    assert result.status is RunStatus.FINISHED
    taken = recorder.kinds("pool_claim_taken_over")
    assert [t["from"] for t in taken] == [
        "run r20200101-000000-dead00 on host gone-host (until 2020-01-01T00:00:00Z)"
    ]


class ChangesThePoolFirst:
    """A transport that lets someone else change pool ``p``'s metadata just before our first
    PATCH of it arrives: the PATCH's If-Match then names an ETag that is no longer current."""

    def __init__(self, inner: Transport, emu: RunningEmulator) -> None:
        self.inner = inner
        self.emu = emu
        self.raced = False

    async def send(self, request: HttpRequest) -> HttpResponse:
        if request.method == "PATCH" and not self.raced:
            self.raced = True
            ops = self.emu.state.pool_ops
            ops.patch_metadata("p", [*metadata(self.emu), ("late", "x")])
        return await self.inner.send(request)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_412_race_reads_again_and_keeps_what_the_other_writer_wrote(
    tmp_path: Path,
) -> None:
    pools = [{"id": "p", "nodes": 3, "metadata": dict([TEAM])}]
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout())
        transport = ChangesThePoolFirst(AiohttpTransport(pool_size=8), emu)
        with anyio.fail_after(60):
            result = await api.run_plan(
                api.load_plan(plan),
                journal=tmp_path / "j.db",
                settings=RunSettings(),
                hooks=api.RunHooks(handle_signals=False),
                transport=transport,
            )
        stats = emu.stats()
        assert stats["requests"]["by_status"].get("412") == 1
        assert set(reimages(emu).values()) == {1}
        assert metadata(emu) == [TEAM, ("late", "x")]  # theirs kept, ours removed at the end
    assert transport.raced and result.status is RunStatus.FINISHED


def test_plan_and_run_warn_about_nodes_booted_within_the_hour_and_the_plan_can_skip_them(
    tmp_path: Path,
) -> None:
    pools = [
        {"id": "p", "nodes": 10, "recently_booted": 0.5},  # 5 booted 30 s..55 min ago
        {"id": "q", "nodes": 4, "recently_booted": 0.5},
        {"id": "r", "nodes": 3},
    ]
    warning = (
        "warning: 7 selected nodes booted within the last hour (emu/p 5, emu/q 2): another "
        "run (with another journal, or on another machine) may have just reimaged them; "
        "`nodes.skip_booted_within: 1h` leaves such nodes out, and `rollout.claim_pools: true` "
        "keeps two runs off one pool"
    )
    with emulator_process(tmp_path, pools) as emu:
        plan = write_plan(tmp_path, emu.url)
        shown = fleet_reimage("plan", str(plan), cwd=tmp_path)
        assert shown.returncode == 0 and warning in shown.stdout, shown.stdout
        skipping = write_plan(
            tmp_path, emu.url, name="skip",
            pools='[{match: "*", nodes: {skip_booted_within: 2h}}]',
        )  # fmt: skip
        listed = fleet_reimage("plan", str(skipping), "--output", "json", cwd=tmp_path)
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", "j.db", cwd=tmp_path)
        assert ran.returncode == 0 and warning in ran.stderr, ran.stderr
    schedule = json.loads(listed.stdout)
    counts = {p["pool"]: (p["selected"], p["excluded_counts"]) for p in schedule["pools"]}
    group = "booted within skip_booted_within"
    assert counts == {"p": (5, {group: 5}), "q": (2, {group: 2}), "r": (3, {})}
    assert [p["booted_within_the_hour"] for p in schedule["pools"]] == [0, 0, 0]
    assert not [w for w in schedule["warnings"] if "booted within the last hour" in w]
    reason = schedule["pools"][0]["excluded"][0]["reason"]
    assert reason.startswith("booted within the last 2h (") and reason.endswith(
        " ago; nodes.skip_booted_within): another run may have just reimaged it"
    )


async def test_claims_are_renewed_and_a_claim_lost_to_another_run_stops_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poolclaim, "CLAIM_TTL", 0.6)  # renewed every 0.2 s
    pools = [{"id": "p", "nodes": 4, "metadata": dict([TEAM])}, {"id": "q", "nodes": 4}]
    async with emulator(pools) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=rollout("confirm_after_wave: 1"))
        recorder = Recorder()
        renewals: list[str] = []  # pool p's claim values, as each renewal wrote them
        renewed, stopped = anyio.Event(), anyio.Event()

        def on_renewal(fields: dict[str, Any]) -> None:
            if fields["pool"] == "p":
                renewals.append(fields["claim"])
                if len({value.rsplit("expires=", 1)[1] for value in renewals}) >= 2:
                    renewed.set()  # expiries are to the second: renewed until one moved on

        recorder.callbacks["pool_claim_renewed"] = on_renewal
        recorder.callbacks["pool_stopped"] = lambda _: stopped.set()
        other = "run=r20991231-000000-other1 host=ops-9 expires=2099-12-31T00:00:00Z"

        async def confirm(_: str) -> bool:  # held at the checkpoint while the claims renew
            await renewed.wait()
            emu.state.pool_ops.patch_metadata("p", [TEAM, (CLAIM_KEY, other)])  # taken over
            await stopped.wait()  # the next renewal finds it
            return True

        with anyio.fail_after(60):
            result = await run_with(
                plan, tmp_path / "j.db", api.RunHooks(observer=recorder), confirm=confirm
            )
        assert metadata(emu) == [TEAM, (CLAIM_KEY, other)]  # theirs, left alone
        assert metadata(emu, "q") == []  # ours, released at the end
    expiries = [value.rsplit("expires=", 1)[1] for value in renewals]
    assert expiries == sorted(expiries) and expiries[0] < expiries[-1]  # moved on
    assert (result.status, result.exit_code) == (RunStatus.STOPPED, 3)
    assert result.stopped_pools["emu/p"].startswith(
        "claimed by run r20991231-000000-other1 on host ops-9 (until 2099-12-31T00:00:00Z)"
    )
    states = {(t.pool, t.state) for t in await journal_targets(tmp_path / "j.db")}
    assert ("p", TargetState.PENDING) in states and ("q", TargetState.HEALTHY) in states


@pytest.mark.postgres
async def test_in_a_shared_run_the_claim_is_the_runs_not_a_runners(
    tmp_path: Path, pg_url: str
) -> None:
    pools = [{"id": "p", "nodes": 8, "metadata": dict([TEAM])}]
    async with emulator(pools, timings=SLOW) as emu:
        # A pause after the canary: the run is far from done when the second runner joins.
        text = rollout("pause_between_waves: 2s")
        plan = api.load_plan(write_plan(tmp_path, emu.url, rollout=text))
        first, second = Recorder(), Recorder()
        claimed = anyio.Event()
        first.callbacks["pool_claimed"] = lambda _: claimed.set()
        results: dict[str, Any] = {}

        async def runner(name: str, recorder: Recorder, join: bool) -> None:
            hooks = api.RunHooks(observer=recorder, handle_signals=False)
            results[name] = await api.run_plan(plan, journal=pg_url, hooks=hooks, join=join)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as group:
                group.start_soon(runner, "first", first, False)
                await claimed.wait()
                group.start_soon(runner, "second", second, True)
        assert set(reimages(emu).values()) == {1}
        assert metadata(emu) == [TEAM]  # released once the pool finished
    run_id = first.kinds("run_started")[0]["run_id"]
    joined = second.kinds("pool_claimed")  # the joiner took the run's claim as its own
    assert [c["claim"].split(" host=")[0] for c in joined] == [f"run={run_id}"]
    assert not second.kinds("pool_stopped")
    assert {r.status for r in results.values()} == {RunStatus.FINISHED}
