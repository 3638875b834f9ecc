"""Injected faults and the rate limit: what the client sees, and what the stats say happened."""

from __future__ import annotations

import random

import aiohttp
import anyio
import pytest
from emulator_helpers import SignedClient, emulator_client, node_ids, node_stats, with_faults

from fleet_reimage.emulator import FaultSpec, FaultsSpec
from fleet_reimage.emulator.faults import FaultInjector, rate_limit_headers, retry_headers

pytestmark = pytest.mark.anyio
RESET_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def test_retry_header_rule() -> None:
    assert retry_headers(1) == {"Retry-After": "1"}
    assert retry_headers(30.0) == {"Retry-After": "30"}
    assert retry_headers(0.25) == {"retry-after-ms": "250", "x-ms-retry-after-ms": "250"}
    assert retry_headers(1.5) == {"retry-after-ms": "1500", "x-ms-retry-after-ms": "1500"}
    assert rate_limit_headers(0.0101) == {"retry-after-ms": "11", "x-ms-retry-after-ms": "11"}
    assert rate_limit_headers(1.2) == {"Retry-After": "2"}


def test_draws_are_keyed_and_reproducible() -> None:
    spec = FaultsSpec(
        seed=7,
        operations={
            "reimage": FaultSpec(throttle=0.1, server_error=0.1),
            "list_nodes": FaultSpec(throttle=0.5),
        },
    )
    first, second = FaultInjector(spec), FaultInjector(spec)
    nodes = [f"n{i}" for i in range(5000)]
    kinds = {n: first.draw("reimage", "p", n) for n in nodes}
    shuffled = nodes[:]
    random.Random(3).shuffle(shuffled)
    assert {n: second.draw("reimage", "p", n) for n in shuffled} == kinds
    counts = [d.kind if d else None for d in kinds.values()]
    assert 400 <= counts.count("throttle") <= 600 and 400 <= counts.count("server_error") <= 600
    # The nth request for a node draws afresh; list operations draw from a sequence.
    again = [first.draw("reimage", "p", n) for n in nodes]
    assert [d.kind if d else None for d in again] != counts
    assert first.draw("get_node", "p", "n1") is None
    lists = [first.draw("list_nodes") for _ in range(100)]
    assert [d.kind if d else None for d in lists] == [
        d.kind if d else None for d in (second.draw("list_nodes") for _ in range(100))
    ]


async def _reimage(client: SignedClient, node_id: str, timeout: float = 10.0) -> int | str:
    try:
        return (await client.post(f"/pools/cs/nodes/{node_id}/reimage", timeout=timeout)).status
    except RESET_ERRORS:
        return "reset"
    except TimeoutError:
        return "timeout"


@pytest.mark.parametrize(
    ("retry_after", "headers"),
    [
        ("2s", {"Retry-After": "2"}),
        ("250ms", {"retry-after-ms": "250", "x-ms-retry-after-ms": "250"}),
    ],
)
async def test_throttle_answers_429_with_the_retry_delay(
    retry_after: str, headers: dict[str, str]
) -> None:
    spec = with_faults(f"faults: {{reimage: {{throttle: 1.0, retry_after: {retry_after}}}}}")
    async with emulator_client(spec) as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        reply = await client.post(f"/pools/cs/nodes/{node_id}/reimage")
        assert reply.status == 429 and reply.json()["code"] == "TooManyRequests"
        present = {
            k: v
            for k, v in reply.headers.items()
            if k.lower() in ("retry-after", "retry-after-ms", "x-ms-retry-after-ms")
        }
        assert present == headers
        assert node_stats(emu, "cs", node_id)["reimages"] == 0
        assert emu.stats()["requests"]["faults"] == {"throttle": 1}


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("server_busy", 503, "ServerBusy"), ("server_error", 500, "InternalError")],
)
async def test_server_faults(kind: str, status: int, code: str) -> None:
    spec = with_faults(f"faults: {{all: {{{kind}: 1.0}}}}")
    async with emulator_client(spec) as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        reply = await client.post(f"/pools/cs/nodes/{node_id}/reboot")
        assert (reply.status, reply.json()["code"]) == (status, code)
        assert ("Retry-After" in reply.headers) == (status == 503)
        assert (await client.get("/pools")).status == status
        assert node_stats(emu, "cs", node_id)["reboots"] == 0


async def test_reset_before_applies_nothing_and_reset_after_applies() -> None:
    before = with_faults("faults: {reimage: {reset_before: 1.0}}")
    async with emulator_client(before) as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        assert await _reimage(client, node_id) == "reset"
        entry = node_stats(emu, "cs", node_id)
        assert (entry["state"], entry["reimages"], entry["reboots"]) == ("idle", 0, 0)
        assert emu.stats()["requests"]["faults"] == {"reset_before": 1}
        assert emu.stats()["requests"]["by_status"] == {}
    after = with_faults("faults: {reimage: {reset_after: 1.0}}")
    async with emulator_client(after) as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        assert await _reimage(client, node_id) == "reset"
        assert node_stats(emu, "cs", node_id)["reimages"] == 1  # in doubt, but applied
        assert emu.state.pools["cs"].by_id[node_id].state == "reimaging"
        # The session recovers: the next request gets a fresh connection and a real answer.
        assert (await client.get("/pools")).status == 200


async def test_a_raw_connection_sees_the_reset_not_a_status() -> None:
    spec = with_faults("faults: {get_pool: {reset_after: 1.0}}")
    async with emulator_client(spec) as (emu, client):
        stream = await anyio.connect_tcp("127.0.0.1", emu.port)
        url = client.url("/pools/cs")
        headers = client.sign("GET", url, {})
        target = url[len(emu.url) :]
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{emu.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        try:
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            pass
        assert received == b""


async def test_delay_after_applies_then_answers_too_late() -> None:
    spec = with_faults("faults: {reimage: {delay_after: 1.0, delay: 600ms}}")
    async with emulator_client(spec) as (emu, client):
        first, second = node_ids(emu, "cs", "idle")[:2]
        assert await _reimage(client, first, timeout=0.2) == "timeout"
        assert emu.state.pools["cs"].by_id[first].state == "reimaging"  # applied, no answer
        assert await _reimage(client, second, timeout=5) == 202  # answered, later
        assert emu.stats()["requests"]["faults"] == {"delay_after": 2}


async def test_latency_and_jitter_slow_every_request_of_the_operation() -> None:
    spec = with_faults("faults: {get_pool: {latency: 2s, jitter: 50ms}}")
    injector = FaultInjector(spec.faults)
    waits = [draw.latency for draw in map(injector.draw, ["get_pool"] * 50) if draw is not None]
    assert len(waits) == 50 and all(2.0 <= wait <= 2.05 for wait in waits)
    assert len(set(waits)) > 1  # the jitter varies
    assert injector.draw("list_pools") is None  # not configured: never slowed
    async with emulator_client(spec) as (_, client):
        with pytest.raises(TimeoutError):  # held back by its latency
            await client.get("/pools/cs", timeout=0.3)
        assert (await client.get("/pools")).status == 200


async def test_fault_pattern_is_the_same_whatever_the_concurrency() -> None:
    spec = with_faults("faults: {seed: 11, reimage: {throttle: 0.3, server_error: 0.2}}")
    outcomes = []
    for concurrency in (1, 8):
        async with emulator_client(spec) as (emu, client):
            ids = node_ids(emu, "cs")
            results: dict[str, int | str] = {}
            limiter = anyio.Semaphore(concurrency)

            async def one(node_id: str) -> None:
                async with limiter:  # noqa: B023  (each loop iteration awaits its own group)
                    results[node_id] = await _reimage(client, node_id)  # noqa: B023

            order = ids[:] if concurrency == 1 else list(reversed(ids))
            async with anyio.create_task_group() as group:
                for node_id in order:
                    group.start_soon(one, node_id)
            outcomes.append(results)
    assert outcomes[0] == outcomes[1]
    assert {429, 500, 202} <= set(outcomes[0].values())


async def test_rate_limit_answers_429_past_the_budget() -> None:
    spec = with_faults("", "rate_limit: {requests_per_second: 5, burst: 3}")
    async with emulator_client(spec) as (emu, client):
        replies = [await client.get("/pools") for _ in range(6)]
        assert [reply.status for reply in replies[:3]] == [200, 200, 200]
        limited = [reply for reply in replies[3:] if reply.status == 429]
        assert limited and all(r.json()["code"] == "TooManyRequests" for r in limited)
        wait = int(limited[0].headers["retry-after-ms"])
        assert 1 <= wait <= 200 and "Retry-After" not in limited[0].headers
        assert limited[0].headers["x-ms-retry-after-ms"] == str(wait)
        await anyio.sleep(wait / 1000 + 0.01)
        assert (await client.get("/pools")).status == 200
        assert emu.stats()["requests"]["rate_limited"] == len(limited)
    slow = with_faults("", "rate_limit: {requests_per_second: 0.5, burst: 1}")
    async with emulator_client(slow) as (_, client):
        assert (await client.get("/pools")).status == 200
        reply = await client.get("/pools")
        assert (reply.status, reply.headers["Retry-After"]) == (429, "2")
