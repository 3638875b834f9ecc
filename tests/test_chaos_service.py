"""Chaos: a Batch service that misbehaves, per node, against the real command line.

A small aiohttp fake of our own (127.0.0.1, port 0; it does not check signatures) lists
pools and nodes correctly, then answers each node's reimage in its own broken way. The run
must go on past every one of them, record a clear per-node outcome in the journal, never
crash, and exit 1 (some nodes failed). A list whose ``odata.nextLink`` points at another
host must stop the plan before anything is sent, and nothing may reach that other host.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from chaoshelpers import TRACEBACK, VM_CONFIGURATION, report_nodes
from clihelpers import cli_env
from runhelpers import write_plan

from fleet_reimage.batch.transport import MAX_RESPONSE_BYTES

pytestmark = pytest.mark.anyio
OLD_BOOT = "2025-01-01T00:00:00.0000000Z"
HTML_502 = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    "<h1>Bad Gateway</h1><p>The proxy could not reach the upstream server.</p></body></html>"
)
# Node id -> how its reimage is answered.
BEHAVIOURS = {
    "n-ok-1": "ok",
    "n-ok-2": "ok",
    "n-bad-json": "bad-json",  # 400 whose JSON body is cut off
    "n-html-502": "html-502",  # a proxy's HTML error page, every time
    "n-200": "ok-200",  # 200 instead of 202 (and it did take effect)
    "n-bare-202": "bare-202",  # 202 with no request-id, no client-request-id, nothing
    "n-huge": "huge",  # 400 with a body over the client's cap
    "n-huge-202": "huge-202",  # 202 (applied) with a body over the cap
    "n-ok-3": "ok",
}


class FakeBatch:
    """Pools and nodes answered correctly; reimages answered per ``behaviours``."""

    def __init__(self, behaviours: dict[str, str], far_link: str | None = None) -> None:
        self.behaviours = behaviours
        self.far_link = far_link  # when set, pool "far" lists a page linking there
        self.states = dict.fromkeys(behaviours, "idle")
        self.posts: Counter[str] = Counter()
        self.app = web.Application()
        self.app.router.add_get("/pools", self.list_pools)
        self.app.router.add_get("/pools/{pool}/nodes", self.list_nodes)
        self.app.router.add_get("/pools/{pool}/nodes/{node}", self.get_node)
        self.app.router.add_post("/pools/{pool}/nodes/{node}/reimage", self.reimage)

    def node_json(self, node: str) -> dict[str, Any]:
        return {
            "id": node,
            "state": self.states[node],
            "lastBootTime": OLD_BOOT,
            "runningTasksCount": 0,
        }

    @staticmethod
    def headers() -> dict[str, str]:
        return {"request-id": "11111111-2222-3333-4444-555555555555"}

    async def list_pools(self, request: web.Request) -> web.Response:
        pools = [{"id": "p", "state": "active", "allocationState": "steady"}]
        if self.far_link:
            pools.append({"id": "far", "state": "active", "allocationState": "steady"})
        for pool in pools:
            pool.update(
                {"virtualMachineConfiguration": VM_CONFIGURATION, "vmSize": "standard_d2_v3"}
            )
            pool["currentDedicatedNodes"] = len(self.behaviours)
        return web.json_response({"value": pools}, headers=self.headers())

    async def list_nodes(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"value": [self.node_json(n) for n in self.behaviours]}
        if request.match_info["pool"] == "far":
            body = {"value": body["value"][:2], "odata.nextLink": self.far_link}
        return web.json_response(body, headers=self.headers())

    async def get_node(self, request: web.Request) -> web.Response:
        node = request.match_info["node"]
        if node not in self.states:
            return web.json_response({"code": "NodeNotFound"}, status=404)
        return web.json_response(self.node_json(node), headers=self.headers())

    async def reimage(self, request: web.Request) -> web.StreamResponse:
        node = request.match_info["node"]
        self.posts[node] += 1
        await request.read()
        behaviour = self.behaviours[node]
        if behaviour in ("ok", "ok-200", "bare-202", "huge-202"):
            self.states[node] = "reimaging"  # it took effect, whatever the answer says
        if behaviour == "ok":
            return web.Response(status=202, headers=self.headers())
        if behaviour == "ok-200":
            return web.Response(status=200, headers=self.headers())
        if behaviour == "bare-202":
            return web.Response(status=202)
        if behaviour == "bad-json":
            return web.Response(
                status=400,
                body=b'{"odata.metadata": "x", "code": "InvalidReq',
                content_type="application/json",
            )
        if behaviour == "html-502":
            return web.Response(status=502, text=HTML_502, content_type="text/html")
        status = 202 if behaviour == "huge-202" else 400
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"x" * (1024 * 1024)
        for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
            await response.write(chunk)
        await response.write_eof()
        return response


class Recorder:
    """Another host: records anything that reaches it (nothing should)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.any)

    async def any(self, request: web.Request) -> web.Response:
        self.seen.append((request.path_qs, request.headers.get("Authorization")))
        return web.json_response({"value": []})


@asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def cli(*args: str, cwd: Path, timeout: float = 60) -> tuple[int, str, str]:
    with anyio.fail_after(timeout):
        done = await anyio.run_process(
            [sys.executable, "-m", "fleet_reimage", *args], cwd=cwd, env=cli_env(), check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


ROLLOUT = """
    waves: ["100%"]
    max_unavailable: "100%"
    health: {wait: false}
    failure_budget: "100%"
"""
EXECUTION = """
    concurrency: 4
    per_account_concurrency: 4
    request_timeout: 5s
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms, busy_timeout: 1s}
"""


async def test_every_broken_answer_is_a_clear_node_outcome_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    fake = FakeBatch(BEHAVIOURS)
    async with serving(fake.app) as url:
        plan = write_plan(tmp_path, url, rollout=ROLLOUT, execution=EXECUTION)
        journal = tmp_path / "j.db"
        code, out, err = await cli(
            "run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path
        )
    assert TRACEBACK not in err, err[-3000:]
    assert code == 1, out + err[-3000:]  # finished; some nodes failed
    nodes = await anyio.to_thread.run_sync(report_nodes, journal, tmp_path)
    outcome = {node: row["outcome"] for node, row in nodes.items()}
    assert outcome == {
        "n-ok-1": "done_unverified",
        "n-ok-2": "done_unverified",
        "n-ok-3": "done_unverified",
        "n-bad-json": "failed",
        "n-html-502": "failed",
        "n-200": "done_unverified",  # in doubt, read back: it took effect
        "n-bare-202": "done_unverified",
        "n-huge": "failed",
        "n-huge-202": "done_unverified",  # in doubt, read back: it took effect
    }, outcome
    # Clear reasons where it failed: the status, and what the body said or why it was refused.
    assert nodes["n-bad-json"]["attempt_log"][-1]["status"] == 400
    assert "Bad Gateway" in (nodes["n-html-502"]["last_error_message"] or "")
    assert nodes["n-html-502"]["attempts"] == 3  # a 502 is retried, up to max_attempts
    assert "MiB" in (nodes["n-huge"]["last_error_message"] or ""), nodes["n-huge"]
    for node in ("n-200", "n-huge-202"):
        log = nodes[node]["attempt_log"]
        assert [a["outcome"] for a in log][-1] == "reconciled_applied", log
    # Nothing applied was sent twice; nothing refused for good was sent again.
    assert fake.posts["n-200"] == 1 and fake.posts["n-huge-202"] == 1
    assert fake.posts["n-bad-json"] == 1 and fake.posts["n-huge"] == 1
    assert fake.posts["n-html-502"] == 3
    assert all(fake.posts[n] == 1 for n in ("n-ok-1", "n-ok-2", "n-ok-3", "n-bare-202"))
    report = json.dumps(nodes)
    assert "x" * 1000 not in report  # the huge body was not copied into the journal


async def test_a_next_link_to_another_host_stops_the_plan_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    elsewhere = Recorder()
    async with serving(elsewhere.app, "127.0.0.2") as far:
        fake = FakeBatch(BEHAVIOURS, far_link=f"{far}/pools/far/nodes?$skiptoken=2")
        async with serving(fake.app) as url:
            plan = write_plan(tmp_path, url, rollout=ROLLOUT, execution=EXECUTION)
            journal = tmp_path / "j.db"
            planned = await cli("plan", str(plan), cwd=tmp_path)
            ran = await cli("run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path)
    for code, out, err in (planned, ran):
        assert TRACEBACK not in err, err[-3000:]
        assert code == 3, out + err
        assert "nextLink" in err and "another origin" in err, err
    assert not fake.posts, fake.posts  # nothing was reimaged
    assert elsewhere.seen == []  # and the signed request never left for the other host
