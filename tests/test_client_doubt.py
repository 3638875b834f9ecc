"""In doubt or never sent: what a lost answer means for a reimage, checked against what the
emulator actually applied."""

from __future__ import annotations

import time

import anyio
import pytest
from clienthelpers import (
    ACCOUNT,
    TEST_KEY,
    closed_port,
    emulated,
    fast_reads,
    fleet,
    no_sleep_recorder,
    node_counts,
    node_ids,
    requests_by_operation,
)

from fleet_reimage.batch.aiohttp_transport import AiohttpTransport
from fleet_reimage.batch.auth import SharedKeyCredential
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.errors import RequestInDoubt, RequestNotSent
from fleet_reimage.batch.models import RECOVERING_STATES

pytestmark = pytest.mark.anyio


async def test_reset_after_applying_is_in_doubt_and_was_applied() -> None:
    spec = fleet("faults: {reimage: {reset_after: 1.0}}")
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        before = time.time()
        with pytest.raises(RequestInDoubt) as caught:
            await env.client.reimage_node("cs", node_id, option="requeue", client_request_id="c1")
        applied = node_counts(env.emu, "cs", node_id)
        faults = env.emu.stats(include_nodes=False)["requests"]["faults"]
        assert requests_by_operation(env.emu, "reimage") == 1  # never resent under us
        # Reconciling by reading the node shows the first request took effect.
        node = await env.client.get_node("cs", node_id)
    error = caught.value
    assert applied == (1, 0) and faults == {"reset_after": 1}
    assert error.client_request_id == "c1"
    assert error.sent_at is not None and before <= error.sent_at <= time.time()
    assert "connection lost" in str(error)
    assert node.state in RECOVERING_STATES


async def test_reset_before_applying_is_still_in_doubt_for_the_client() -> None:
    """The connection was established and the request written: the client cannot tell a
    reset before the server acted from one after, so it must say "in doubt"."""
    spec = fleet("faults: {reimage: {reset_before: 1.0}}")
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(RequestInDoubt) as caught:
            await env.client.reimage_node("cs", node_id, option=None, client_request_id="c2")
        applied = node_counts(env.emu, "cs", node_id)
        assert requests_by_operation(env.emu, "reimage") == 1
        node = await env.client.get_node("cs", node_id)
    assert not isinstance(caught.value, RequestNotSent)
    assert caught.value.client_request_id == "c2" and caught.value.sent_at is not None
    assert applied == (0, 0) and node.state == "idle"  # reading the node tells the truth


async def test_answer_later_than_our_timeout_is_in_doubt_and_was_applied() -> None:
    spec = fleet("faults: {reimage: {delay_after: 1.0, delay: 2s}}")
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        before = time.time()
        with pytest.raises(RequestInDoubt) as caught:
            await env.client.reimage_node(
                "cs", node_id, option=None, client_request_id="c3", timeout=0.3
            )
        after = time.time()
        applied = node_counts(env.emu, "cs", node_id)
        request = env.sent[0]
    error = caught.value
    assert applied == (1, 0)
    assert error.sent_at is not None and before <= error.sent_at <= after
    assert "no answer within 0.3s" in str(error) and error.client_request_id == "c3"
    assert "timeout=1" in request.url  # the server was told at least one second


async def test_slow_before_applying_is_in_doubt_and_was_not_applied() -> None:
    """Latency before the operation: same error for the client, nothing applied yet."""
    spec = fleet("faults: {reimage: {latency: 1s}}")
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(RequestInDoubt):
            await env.client.reimage_node(
                "cs", node_id, option=None, client_request_id="c4", timeout=0.3
            )
        assert node_counts(env.emu, "cs", node_id) == (0, 0)


async def test_reads_in_doubt_are_sent_again() -> None:
    delays, sleep = no_sleep_recorder()
    spec = fleet("faults: {get_node: {reset_after: 1.0}}")
    async with emulated(spec, read_policy=fast_reads(max_attempts=3), sleep=sleep) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(RequestInDoubt):
            await env.client.get_node("cs", node_id)
        on_the_wire = requests_by_operation(env.emu, "get_node")
    assert len(env.sent) == 3  # the policy's three attempts
    # The transport never resends by itself (aiohttp's client resends an idempotent GET once
    # when the connection drops): the server sees exactly the policy's attempts.
    assert on_the_wire == 3
    assert delays == []  # an idempotent GET in doubt is simply sent again


async def test_closed_port_is_not_sent() -> None:
    port = closed_port()
    transport = AiohttpTransport(connect_timeout=2.0)
    delays, sleep = no_sleep_recorder()
    client = BatchClient(
        f"http://127.0.0.1:{port}",
        SharedKeyCredential(ACCOUNT, TEST_KEY),
        transport,
        read_policy=fast_reads(max_connect_failures=3),
        sleep=sleep,
    )
    try:
        with anyio.fail_after(10):
            with pytest.raises(RequestNotSent) as on_write:
                await client.reimage_node("p", "n", option=None, client_request_id="c5")
            with pytest.raises(RequestNotSent) as on_read:
                await client.get_pool("p")
    finally:
        await transport.close()
    assert not isinstance(on_write.value, RequestInDoubt)
    assert on_write.value.client_request_id == "c5"
    assert "could not connect" in str(on_write.value)
    assert on_read.value.client_request_id is not None
    assert len(delays) == 2  # reads retried connect failures, then gave up
