"""BatchClient logic through a scripted transport (no network): headers, encoding, when
requests are resent and when they are not."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import anyio
import pytest
from clienthelpers import (
    ACCOUNT,
    TEST_KEY,
    FakeTokenSource,
    ScriptedTransport,
    fast_reads,
    no_sleep_recorder,
    response,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_reimage.batch.auth import PUBLIC_CLOUD, EntraCredential, SharedKeyCredential
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.errors import (
    AuthFailed,
    RequestInDoubt,
    RequestNotSent,
    Throttled,
    TransientServerError,
)
from fleet_reimage.batch.sharedkey import SharedKeySigner, decode_key
from fleet_reimage.batch.transport import HttpRequest, HttpResponse

pytestmark = pytest.mark.anyio
ENDPOINT = "https://clienttest.westeurope.batch.azure.com"
ACCEPTED = response(202, headers={"request-id": "rid"})
POOL = response(200, b'{"id": "p"}', {"request-id": "rid"})


def make(
    script: list[HttpResponse | BaseException], **kwargs: object
) -> tuple[BatchClient, ScriptedTransport]:
    transport = ScriptedTransport(script)
    credential = kwargs.pop("credential", None) or SharedKeyCredential(ACCOUNT, TEST_KEY)
    return BatchClient(ENDPOINT, credential, transport, **kwargs), transport  # type: ignore[arg-type]


async def test_common_headers() -> None:
    client, transport = make([POOL, ACCEPTED])
    await client.get_pool("p")
    await client.reimage_node("p", "n", option="requeue", client_request_id="mine")
    get, post = transport.sent
    for request in (get, post):
        assert request.headers["return-client-request-id"] == "true"
        assert request.headers["Accept"] == "application/json"
        sent = parsedate_to_datetime(request.headers["ocp-date"])
        assert sent.tzinfo is not None and abs(sent.timestamp() - time.time()) < 5
        assert request.headers["ocp-date"].endswith(" GMT")
        signer = SharedKeySigner(ACCOUNT, decode_key(TEST_KEY))
        signature = request.headers["Authorization"].removeprefix(f"SharedKey {ACCOUNT}:")
        assert signer.verify(request.method, request.url, request.headers, signature)
    assert get.body is None and "Content-Length" not in get.headers
    assert "Content-Type" not in get.headers
    assert post.headers["client-request-id"] == "mine"
    assert post.body == b'{"nodeReimageOption":"requeue"}'


@settings(max_examples=50, deadline=None)
@given(
    pool=st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    node=st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
)
def test_ids_are_one_path_segment_each(pool: str, node: str) -> None:
    client, transport = make([ACCEPTED])
    anyio.run(lambda: client.reimage_node(pool, node, option=None, client_request_id="c"))
    path = urlsplit(transport.sent[0].url).path
    segments = path.split("/")
    assert len(segments) == 6 and segments[1] == "pools" and segments[3] == "nodes"
    from urllib.parse import unquote

    assert (unquote(segments[2]), unquote(segments[4]), segments[5]) == (pool, node, "reimage")


async def test_in_doubt_post_carries_the_time_it_was_sent() -> None:
    class SlowThenLost(ScriptedTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.sent.append(request)
            await anyio.sleep(0.2)
            raise RequestInDoubt("connection lost")

    transport = SlowThenLost([])
    client = BatchClient(ENDPOINT, SharedKeyCredential(ACCOUNT, TEST_KEY), transport)
    before = time.time()
    with pytest.raises(RequestInDoubt) as caught:
        await client.reimage_node("p", "n", option=None, client_request_id="c")
    failed = time.time()
    assert caught.value.client_request_id == "c"
    assert caught.value.sent_at is not None
    assert before <= caught.value.sent_at <= before + 0.1 < failed - 0.1
    assert len(transport.sent) == 1  # a POST in doubt is never resent by the client


async def test_not_sent_post_is_raised_not_resent() -> None:
    client, transport = make([RequestNotSent("refused")])
    with pytest.raises(RequestNotSent) as caught:
        await client.reboot_node("p", "n", option=None, client_request_id="c")
    assert caught.value.client_request_id == "c" and len(transport.sent) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_post_failures_are_left_to_the_caller(status: int) -> None:
    client, transport = make([response(status, b"", {"Retry-After": "3"})])
    with pytest.raises((Throttled, TransientServerError)) as caught:
        await client.reimage_node("p", "n", option=None, client_request_id="c")
    assert caught.value.retry_after == 3.0
    assert len(transport.sent) == 1


async def test_401_on_a_post_refreshes_and_resends_the_same_request() -> None:
    source = FakeTokenSource()
    credential = EntraCredential(source, PUBLIC_CLOUD)
    client, transport = make(
        [response(401, b"", {"request-id": "r1"}), ACCEPTED], credential=credential
    )
    accepted = await client.reimage_node("p", "n", option="terminate", client_request_id="c")
    first, second = transport.sent
    assert accepted.status == 202 and len(source.calls) == 2
    assert first.headers["Authorization"] == "Bearer tok1"
    assert second.headers["Authorization"] == "Bearer tok2"
    assert first.headers["client-request-id"] == second.headers["client-request-id"] == "c"
    assert first.url == second.url and first.body == second.body


async def test_403_twice_is_auth_failed_after_one_refresh() -> None:
    source = FakeTokenSource()
    credential = EntraCredential(source, PUBLIC_CLOUD)
    client, transport = make([response(403), response(403)], credential=credential)
    with pytest.raises(AuthFailed):
        await client.get_pool("p")
    assert len(transport.sent) == 2 and len(source.calls) == 2


async def test_reads_resend_in_doubt_at_once_then_give_up() -> None:
    delays, sleep = no_sleep_recorder()
    script: list[HttpResponse | BaseException] = [RequestInDoubt("lost")] * 3
    client, transport = make(script, read_policy=fast_reads(max_attempts=3), sleep=sleep)
    with pytest.raises(RequestInDoubt):
        await client.get_pool("p")
    assert len(transport.sent) == 3 and delays == []
    ids = {r.headers["client-request-id"] for r in transport.sent}
    assert len(ids) == 3


async def test_reads_wait_as_the_server_asks_and_recover() -> None:
    delays, sleep = no_sleep_recorder()
    script: list[HttpResponse | BaseException] = [
        response(429, b"", {"retry-after-ms": "1500"}),
        response(503, b"", {"Retry-After": "2"}),
        RequestNotSent("refused"),
        response(500),
        POOL,
    ]
    client, transport = make(script, read_policy=fast_reads(max_attempts=3), sleep=sleep)
    pool = await client.get_pool("p")
    assert pool.id == "p" and len(transport.sent) == 5
    assert delays[:2] == [1.5, 2.0] and len(delays) == 4
    assert all(0 <= d <= 0.05 for d in delays[2:])  # our own backoff, jittered


async def test_close_closes_the_credential_not_the_shared_transport() -> None:
    source = FakeTokenSource()
    client, transport = make([], credential=EntraCredential(source, PUBLIC_CLOUD))
    await client.close()
    assert source.closed and not transport.closed
