"""BatchClient against the local Batch emulator over real TCP: reads, reimage/reboot, and
every error class the service answers with."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from clienthelpers import (
    OTHER_KEY,
    TEST_KEY,
    VM_REASON,
    emulated,
    fast_reads,
    fleet,
    no_sleep_recorder,
    node_counts,
    node_ids,
    real_sleep_recorder,
    requests_by_operation,
)

from fleet_reimage.batch.auth import SharedKeyCredential
from fleet_reimage.batch.client import API_VERSION, JSON_CONTENT_TYPE, Accepted
from fleet_reimage.batch.errors import (
    AuthFailed,
    BadRequest,
    BatchHTTPError,
    Conflict,
    NodeStateConflict,
    NotFound,
    OperationNotSupported,
    Throttled,
    TransientServerError,
)
from fleet_reimage.batch.models import VIRTUAL_MACHINE
from fleet_reimage.batch.transport import HttpRequest

pytestmark = pytest.mark.anyio


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def assert_request_id_consistent(error: BatchHTTPError) -> None:
    """The request-id is kept, and it is the one the service wrote into the message."""
    assert error.request_id is not None
    uuid.UUID(error.request_id)
    assert f"RequestId:{error.request_id}" in error.message


# --- reads -------------------------------------------------------------------------------


async def test_list_pools() -> None:
    async with emulated() as env:
        pools = [pool async for pool in env.client.list_pools()]
    assert [pool.id for pool in pools] == ["cs", "vm", "odd"]
    by_id = {pool.id: pool for pool in pools}
    assert by_id["cs"].configuration == VIRTUAL_MACHINE and by_id["cs"].current_nodes == 30
    assert by_id["vm"].configuration == VIRTUAL_MACHINE and by_id["vm"].current_nodes == 4
    assert all(pool.state == "active" and pool.allocation_state == "steady" for pool in pools)


async def test_list_node_pages_follows_next_links_with_filter_and_select() -> None:
    async with emulated() as env:
        pages = [
            page
            async for page in env.client.list_node_pages(
                "cs", filter="state eq 'idle'", select="id,state", max_results=4
            )
        ]
        idle = node_ids(env.emu, "cs", "idle")
        assert requests_by_operation(env.emu, "list_nodes") == len(pages)
        sent = env.sent
    assert len(idle) == 24 and len(pages) == 6
    assert [item["id"] for page in pages for item in page.items] == idle
    for page in pages:
        assert 1 <= len(page.items) <= 4
        # $select really trimmed the JSON: nothing but the two selected properties.
        assert all(set(item) == {"id", "state"} for item in page.items)
        assert all(item["state"] == "idle" for item in page.items)
    # Every page has its own request-id; the last has no next link.
    request_ids = [page.request_id for page in pages]
    assert None not in request_ids and len(set(request_ids)) == len(pages)
    assert pages[-1].next_link is None and all(page.next_link for page in pages[:-1])
    # Every request (the first and each followed link) carried the whole query.
    assert len(sent) == 6
    for request in sent:
        query = query_of(request.url)
        assert query["$filter"] == "state eq 'idle'" and query["$select"] == "id,state"
        assert query["maxresults"] == "4" and query["api-version"] == API_VERSION
    assert [query_of(r.url).get("$skiptoken") is None for r in sent] == [True] + [False] * 5


async def test_list_nodes_filters_and_parses() -> None:
    async with emulated() as env:
        busy = [n async for n in env.client.list_nodes("cs", filter="state ne 'idle'")]
        both = [
            n
            async for n in env.client.list_nodes(
                "cs", filter="state eq 'idle' or state eq 'running'", max_results=7
            )
        ]
        expected_running = node_ids(env.emu, "cs", "running")
    assert [n.id for n in busy] == expected_running and len(busy) == 6
    assert all(n.state == "running" and n.running_tasks == 2 for n in busy)
    assert all(n.last_boot_time is not None and n.last_boot_time < time.time() for n in busy)
    assert len(both) == 30


async def test_get_pool_and_node_with_and_without_select() -> None:
    async with emulated() as env:
        pool = await env.client.get_pool("vm")
        node_id = node_ids(env.emu, "cs", "running")[0]
        node = await env.client.get_node("cs", node_id)
        trimmed = await env.client.get_node("cs", node_id, select="id")
        pool_trimmed = await env.client.get_pool("cs", select="id,vmSize")
    assert (pool.id, pool.configuration, pool.vm_size) == ("vm", VIRTUAL_MACHINE, "standard_d2_v3")
    assert (node.id, node.state, node.running_tasks) == (node_id, "running", 2)
    assert node.last_boot_time is not None
    # Only the id came back, so everything else is the parser's default.
    assert (trimmed.id, trimmed.state, trimmed.last_boot_time) == (node_id, "unknown", None)
    assert pool_trimmed.configuration is None and pool_trimmed.current_nodes == 0


# --- reimage and reboot ------------------------------------------------------------------


async def test_reimage_is_accepted_once_with_our_request_id() -> None:
    async with emulated() as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        ours = str(uuid.uuid4())
        before = time.time()
        accepted = await env.client.reimage_node(
            "cs", node_id, option="requeue", client_request_id=ours
        )
        after = time.time()
        assert node_counts(env.emu, "cs", node_id) == (1, 0)
        stats = env.emu.stats(include_nodes=False)["requests"]
        assert stats["by_operation"] == {"reimage": 1} and stats["by_status"] == {"202": 1}
        node = await env.client.get_node("cs", node_id)
        request = env.sent[0]
    assert isinstance(accepted, Accepted) and accepted.status == 202
    assert accepted.client_request_id == ours and accepted.echoed_client_request_id == ours
    assert accepted.request_id is not None and accepted.request_id != ours
    uuid.UUID(accepted.request_id)
    assert before <= accepted.sent_at <= after
    assert node.state == "reimaging"
    # What went on the wire.
    assert request.method == "POST"
    assert urlsplit(request.url).path == f"/pools/cs/nodes/{node_id}/reimage"
    assert query_of(request.url) == {"api-version": API_VERSION, "timeout": "30"}
    assert request.headers["client-request-id"] == ours
    assert request.headers["return-client-request-id"] == "true"
    assert request.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert json.loads(request.body or b"") == {"nodeReimageOption": "requeue"}
    assert request.headers["Content-Length"] == str(len(request.body or b""))


@pytest.mark.parametrize("action", ["reimage", "reboot"])
async def test_body_less_post_is_signed_as_sent(action: str) -> None:
    """No option: no body and no Content-Type; the signature must still match.

    Regression: aiohttp used to add ``Content-Type: application/octet-stream`` after the
    request was signed, and the service answered 403 AuthenticationFailed.
    """
    async with emulated() as env:
        node_id = node_ids(env.emu, "cs", "idle")[1]
        call = env.client.reimage_node if action == "reimage" else env.client.reboot_node
        accepted = await call("cs", node_id, option=None, client_request_id=str(uuid.uuid4()))
        counts = node_counts(env.emu, "cs", node_id)
        request = env.sent[0]
    assert accepted.status == 202
    assert counts == ((1, 0) if action == "reimage" else (0, 1))
    assert request.body is None and "Content-Type" not in request.headers
    assert request.headers["Content-Length"] == "0"


async def test_reboot_and_the_timeout_parameter() -> None:
    async with emulated(request_timeout=12.0) as env:
        cs_node, vm_node = node_ids(env.emu, "cs", "idle")[2], node_ids(env.emu, "vm")[0]
        ours = str(uuid.uuid4())
        accepted = await env.client.reboot_node(
            "cs", cs_node, option="taskcompletion", client_request_id=ours, timeout=5
        )
        # Reboot works on a virtual-machine pool, where reimage does not.
        on_vm = await env.client.reboot_node(
            "vm", vm_node, option=None, client_request_id=str(uuid.uuid4())
        )
        await env.client.reimage_node(
            "cs", node_ids(env.emu, "cs", "idle")[3], option="terminate", client_request_id="x"
        )
        await env.client.reimage_node(
            "cs",
            node_ids(env.emu, "cs", "idle")[4],
            option=None,
            client_request_id="y",
            timeout=300,
        )
        assert node_counts(env.emu, "cs", cs_node) == (0, 1)
        assert node_counts(env.emu, "vm", vm_node) == (0, 1)
        sent = env.sent
    assert accepted.echoed_client_request_id == ours and on_vm.status == 202
    assert json.loads(sent[0].body or b"") == {"nodeRebootOption": "taskcompletion"}
    # The server-side timeout is sent, in whole seconds, capped at the service's 30 ...
    assert [query_of(r.url)["timeout"] for r in sent] == ["5", "12", "12", "30"]
    # ... while the client waits as long as it was told.
    assert [r.timeout for r in sent] == [5, 12.0, 12.0, 300]


# --- errors the service answers with -------------------------------------------------------


async def test_not_found() -> None:
    async with emulated() as env:
        with pytest.raises(NotFound) as node_error:
            await env.client.get_node("cs", "no-such-node")
        with pytest.raises(NotFound) as pool_error:
            await env.client.get_pool("no-such-pool")
        with pytest.raises(NotFound) as reimage_error:
            await env.client.reimage_node(
                "no-such-pool", "n", option=None, client_request_id="crid-1"
            )
        # 404 is never retried, even on reads.
        assert requests_by_operation(env.emu, "get_node") == 1
        assert requests_by_operation(env.emu, "get_pool") == 1
    assert (node_error.value.status, node_error.value.code) == (404, "NodeNotFound")
    assert node_error.value.values == {}
    assert_request_id_consistent(node_error.value)
    assert node_error.value.message.startswith("The specified node does not exist.")
    assert str(node_error.value).startswith("HTTP 404: NodeNotFound: The specified node")
    assert node_error.value.client_request_id is not None
    assert (pool_error.value.status, pool_error.value.code) == (404, "PoolNotFound")
    assert_request_id_consistent(pool_error.value)
    assert reimage_error.value.code == "PoolNotFound"
    assert reimage_error.value.client_request_id == "crid-1"


async def test_node_state_conflicts() -> None:
    async with emulated() as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        await env.client.reimage_node("cs", node_id, option=None, client_request_id="first")
        with pytest.raises(NodeStateConflict) as again:
            await env.client.reimage_node("cs", node_id, option=None, client_request_id="second")
        codes = {}
        for other in node_ids(env.emu, "odd"):
            state = env.emu.state.pools["odd"].by_id[other].state
            with pytest.raises(NodeStateConflict) as caught:
                await env.client.reimage_node("odd", other, option=None, client_request_id="z")
            codes[state] = caught.value.code
        assert node_counts(env.emu, "cs", node_id) == (1, 0)
    assert isinstance(again.value, Conflict) and again.value.status == 409
    assert again.value.code == "NodeBeingReimaged"
    assert again.value.client_request_id == "second"
    assert_request_id_consistent(again.value)
    assert codes == {
        "creating": "NodeBeingCreated",
        "unusable": "NodeStateUnusable",
        "starting": "NodeBeingStarted",
    }


async def test_reimage_on_a_virtual_machine_pool_is_not_supported() -> None:
    async with emulated() as env:
        node_id = node_ids(env.emu, "vm")[0]
        with pytest.raises(OperationNotSupported) as caught:
            await env.client.reimage_node("vm", node_id, option="requeue", client_request_id="c")
        assert node_counts(env.emu, "vm", node_id) == (0, 0)
    error = caught.value
    assert isinstance(error, Conflict) and error.status == 409
    assert error.code == "OperationNotValidOnNode"
    assert error.values["Reason"] == VM_REASON
    assert f"({VM_REASON})" in str(error)
    assert_request_id_consistent(error)


async def test_wrong_key_is_auth_failed_and_never_retried() -> None:
    async with emulated(key=OTHER_KEY) as env:
        with pytest.raises(AuthFailed) as on_read:
            async for _ in env.client.list_pools():
                pass
        with pytest.raises(AuthFailed) as on_write:
            await env.client.reimage_node(
                "cs", node_ids(env.emu, "cs", "idle")[0], option=None, client_request_id="c"
            )
        stats = env.emu.stats(include_nodes=False)["requests"]
    assert stats["total"] == 2 and stats["by_status"] == {"403": 2}
    for error in (on_read.value, on_write.value):
        assert (error.status, error.code) == (403, "AuthenticationFailed")
        assert "MAC signature" in error.values["AuthenticationErrorDetail"]
        assert_request_id_consistent(error)
        shown = [str(error), repr(error), error.message, json.dumps(error.values)]
        for secret in (OTHER_KEY, TEST_KEY):
            assert not any(secret in text for text in shown)


async def test_rotated_key_is_reloaded_once_after_403() -> None:
    reloads: list[int] = []

    def reload() -> str:
        reloads.append(1)
        return TEST_KEY

    credential = SharedKeyCredential("clienttest", OTHER_KEY, reload=reload)
    async with emulated(credential=credential) as env:
        pools = [pool.id async for pool in env.client.list_pools()]
        pools_again = [pool.id async for pool in env.client.list_pools()]
        stats = env.emu.stats(include_nodes=False)["requests"]
    assert pools == pools_again == ["cs", "vm", "odd"]
    assert len(reloads) == 1
    assert stats["by_status"] == {"403": 1, "200": 2}


@pytest.mark.parametrize(
    ("retry_after", "header", "seconds"),
    [("2s", "Retry-After", 2.0), ("250ms", "retry-after-ms", 0.25)],
)
async def test_throttled_with_retry_after(retry_after: str, header: str, seconds: float) -> None:
    spec = fleet(f"faults: {{reimage: {{throttle: 1.0, retry_after: {retry_after}}}}}")
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(Throttled) as caught:
            await env.client.reimage_node("cs", node_id, option=None, client_request_id="c")
        assert node_counts(env.emu, "cs", node_id) == (0, 0)
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "TooManyRequests", seconds)
    assert error.client_request_id == "c"
    assert_request_id_consistent(error)


async def test_server_busy_and_internal_error() -> None:
    spec = fleet(
        "faults: {reimage: {server_busy: 1.0, retry_after: 3s},"
        " reboot: {server_error: 1.0, retry_after: 3s}}"
    )
    async with emulated(spec) as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(TransientServerError) as busy:
            await env.client.reimage_node("cs", node_id, option=None, client_request_id="a")
        with pytest.raises(TransientServerError) as internal:
            await env.client.reboot_node("cs", node_id, option=None, client_request_id="b")
        assert node_counts(env.emu, "cs", node_id) == (0, 0)
    assert (busy.value.status, busy.value.code, busy.value.retry_after) == (503, "ServerBusy", 3.0)
    assert (internal.value.status, internal.value.code) == (500, "InternalError")
    assert internal.value.retry_after is None  # the service sends none with a 500
    assert_request_id_consistent(busy.value)
    assert_request_id_consistent(internal.value)


async def test_reads_retry_transient_errors_then_give_up() -> None:
    delays, sleep = no_sleep_recorder()
    spec = fleet("faults: {list_pools: {server_error: 1.0}}")
    async with emulated(spec, read_policy=fast_reads(max_attempts=3), sleep=sleep) as env:
        with pytest.raises(TransientServerError) as caught:
            async for _ in env.client.list_pools():
                pass
        assert requests_by_operation(env.emu, "list_pools") == 3
        crids = [r.headers["client-request-id"] for r in env.sent]
    assert caught.value.code == "InternalError"
    assert len(delays) == 2 and all(0 <= d <= 0.05 for d in delays)
    assert len(set(crids)) == 3  # each attempt is its own request


async def test_reads_wait_out_throttling_as_told() -> None:
    delays, sleep = no_sleep_recorder()
    spec = fleet("faults: {list_nodes: {throttle: 0.6, retry_after: 700ms}}")
    # A small failure budget: throttles must not use it up.
    async with emulated(spec, read_policy=fast_reads(max_attempts=1), sleep=sleep) as env:
        nodes = [n.id async for n in env.client.list_nodes("cs", max_results=5)]
        throttled = env.emu.stats(include_nodes=False)["requests"]["faults"].get("throttle", 0)
        expected = node_ids(env.emu, "cs")
    assert nodes == expected
    assert throttled >= 2 and delays == [0.7] * throttled


async def test_account_rate_limit() -> None:
    delays, sleep = real_sleep_recorder()
    spec = fleet("rate_limit: {requests_per_second: 8, burst: 1}")
    async with emulated(spec, sleep=sleep) as env:
        idle = node_ids(env.emu, "cs", "idle")
        await env.client.reimage_node("cs", idle[0], option=None, client_request_id="a")
        with pytest.raises(Throttled) as caught:
            await env.client.reimage_node("cs", idle[1], option=None, client_request_id="b")
        assert node_counts(env.emu, "cs", idle[1]) == (0, 0)
        # Reads are paced by the server's answer and then succeed.
        for _ in range(3):
            assert len([p async for p in env.client.list_pools()]) == 3
        rate_limited = env.emu.stats(include_nodes=False)["requests"]["rate_limited"]
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 0.125
    assert len(delays) >= 1 and rate_limited == 1 + len(delays)
    assert all(0 < d <= 0.125 for d in delays)


async def test_bad_requests_are_never_retried() -> None:
    async with emulated() as env:
        with pytest.raises(BadRequest) as too_many:
            async for _ in env.client.list_node_pages("cs", max_results=5000):
                pass
        with pytest.raises(BadRequest) as bad_filter:
            async for _ in env.client.list_nodes("cs", filter="state eq"):
                pass
        assert requests_by_operation(env.emu, "list_nodes") == 2
    assert too_many.value.code == "InvalidQueryParameterValue"
    assert too_many.value.values["QueryParameterName"] == "maxresults"
    assert too_many.value.values["QueryParameterValue"] == "5000"
    assert bad_filter.value.values["QueryParameterName"] == "$filter"
    assert_request_id_consistent(too_many.value)


async def test_unsupported_api_version_is_bad_request() -> None:
    async with emulated(api_version="1999-01-01.0.0") as env:
        with pytest.raises(BadRequest) as caught:
            await env.client.get_pool("cs")
        with pytest.raises(BadRequest):
            await env.client.reimage_node("cs", "n", option=None, client_request_id="c")
        assert env.emu.stats(include_nodes=False)["requests"]["total"] == 2
    assert caught.value.code == "UnsupportedRequestVersion"
    assert caught.value.values["QueryParameterValue"] == "1999-01-01.0.0"


async def test_missing_api_version_through_the_raw_seam() -> None:
    """A request built by hand (no api-version), signed and sent through the same seam."""
    from email.utils import formatdate

    from fleet_reimage.batch.responses import error_from_response

    async with emulated() as env:
        request = HttpRequest(
            "GET",
            f"{env.emu.url}/pools",
            {"ocp-date": formatdate(usegmt=True), "client-request-id": "raw"},
        )
        credential = SharedKeyCredential(env.emu.account_name, env.emu.account_key)
        await credential.authorize(request)
        answer = await env.transport.send(request)
    error = error_from_response(answer, "raw", time.time())
    assert isinstance(error, BadRequest) and error.status == 400
    assert error.code == "MissingRequiredQueryParameter"
    assert error.values == {"QueryParameterName": "api-version"}
    assert_request_id_consistent(error)


async def test_an_invalid_option_is_refused_before_sending() -> None:
    async with emulated() as env:
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(ValueError, match="unknown node option"):
            await env.client.reimage_node("cs", node_id, option="now!", client_request_id="c")
        with pytest.raises(ValueError, match="unknown node option"):
            await env.client.reboot_node("cs", node_id, option='requeue"}', client_request_id="c")
        assert env.emu.stats(include_nodes=False)["requests"]["total"] == 0
    assert env.sent == []
