"""The client speaks the api-version it is given, each query parameter spelt as that version
spells it, and says who it is (User-Agent) on every request; a plan's
``execution.api_version`` reaches the wire."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from clienthelpers import emulated, node_ids
from runhelpers import KEY, KEY_ENV, emulator, journal_targets, run, write_plan

from fleet_reimage import api
from fleet_reimage.batch.client import USER_AGENT
from fleet_reimage.batch.versions import API_VERSIONS

pytestmark = pytest.mark.anyio
AGENT = re.compile(r"fleet-reimage/\d+\.\d+\.\d+ python/3\.\d+ \(.+\)")


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


@pytest.mark.parametrize(
    ("version", "timeout_name"), [("2024-07-01.20.0", "timeout"), ("2025-06-01", "timeOut")]
)
async def test_each_version_spells_the_server_timeout_its_own_way(
    version: str, timeout_name: str
) -> None:
    assert API_VERSIONS[version].timeout_parameter == timeout_name
    async with emulated(api_version=version, request_timeout=12.0) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        accepted = await env.client.reimage_node(
            "cs", node_id, option=None, client_request_id=str(uuid.uuid4())
        )
        [page async for page in env.client.list_node_pages("cs", max_results=10)]
        versions = env.emu.stats(include_nodes=False)["requests"]["by_api_version"]
    assert accepted.status == 202
    assert query_of(env.sent[0].url) == {"api-version": version, timeout_name: "12"}
    assert all(query_of(request.url)["api-version"] == version for request in env.sent)
    assert versions == {version: len(env.sent)}


async def test_every_request_says_who_sends_it() -> None:
    assert AGENT.fullmatch(USER_AGENT), USER_AGENT
    async with emulated() as env:
        [pool async for pool in env.client.list_pools()]
        [node async for node in env.client.list_nodes("cs", max_results=7)]  # next links too
        node_id = node_ids(env.emu, "cs", "idle")[0]
        await env.client.get_node("cs", node_id)
        await env.client.reboot_node("cs", node_id, option="requeue", client_request_id="x")
    assert len(env.sent) == 1 + 5 + 1 + 1
    assert {request.headers.get("User-Agent") for request in env.sent} == {USER_AGENT}


async def test_a_plan_picks_the_api_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with emulator([{"id": "p", "nodes": 6}]) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            execution="""
            api_version: 2025-06-01
            request_timeout: 5s
            retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 100ms, busy_timeout: 1s}
            """,
        )
        result = await run(plan, tmp_path / "j.db")
        versions = emu.stats(include_nodes=False)["requests"]["by_api_version"]
    assert result.exit_code == 0
    assert set(versions) == {"2025-06-01"} and sum(versions.values()) >= 6 + 2
    assert {target.state.value for target in await journal_targets(tmp_path / "j.db")} == {
        "healthy"
    }


async def test_no_pool_type_is_assumed_at_resolve_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pool is a virtual-machine pool: none is warned about in advance; a pool that
    refuses reimage is found out by its first answer (and stopped then)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    async with emulator(
        [{"id": "ok", "nodes": 4}, {"id": "no", "nodes": 4, "reimage": "refused"}]
    ) as emu:
        rollout = """
            waves: [1, "100%"]
            max_unavailable: "100%"
            health: {wait: true, poll_interval: 100ms, timeout: 20s}
            failure_budget: "100%"
        """
        plan = api.load_plan(write_plan(tmp_path, emu.url, rollout=rollout))
        resolution = await api.resolve_plan(plan)
        result = await run(plan.source.path, tmp_path / "j.db")
        requests = emu.stats(include_nodes=False)["requests"]["by_status"]
    assert [(pool.pool_id, pool.warnings) for pool in resolution.pools] == [("no", []), ("ok", [])]
    assert [pool.configuration for pool in resolution.pools] == ["virtualMachineConfiguration"] * 2
    assert result.exit_code == 3 and list(result.stopped_pools) == ["emu/no"]
    assert requests.get("409") == 1  # one canary answer, then the pool stopped
