"""The Transport contract (``batch/transport.py``), checked over real TCP on 127.0.0.1 with a
raw asyncio server that records the bytes it is sent and answers exactly the bytes a test
scripts (malformed, cut short, withheld, ...). The safety cases (floods, never sent versus
in doubt, no re-send, redirects, answers for other requests, TLS names) are in
``test_transport_safety.py``."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import struct
import time
import zlib

import anyio
import pytest
from clienthelpers import closed_port
from rawserver import Reader, Seen, Writer, answer, ok, raw_server, replies, wait_for_eof
from tlscerts import new_authority
from transporthelpers import get, opened

from fleet_reimage.batch import aiohttp_transport
from fleet_reimage.batch.errors import RequestInDoubt, RequestNotSent, UnexpectedResponse
from fleet_reimage.batch.transport import HttpRequest, Transport

pytestmark = pytest.mark.anyio


# --- answers that arrive whole ------------------------------------------------------------


async def test_any_status_comes_back_with_body_and_case_insensitive_headers() -> None:
    document = json.dumps({"id": "node-1", "state": "idle"}).encode()
    answers = {
        "/a": answer(202, headers={"Request-Id": "r-202", "DataServiceVersion": "3.0"}),
        "/b": answer(200, document, {"Content-Type": "application/json", "Request-Id": "r-200"}),
        "/c": answer(503, b"busy", {"Retry-After": "7", "request-id": "r-503"}),
    }
    with anyio.fail_after(4):
        async with (
            raw_server(replies(lambda seen: answers[seen.target])) as server,
            opened() as transport,
        ):
            accepted = await transport.send(HttpRequest("POST", server.url + "/a", {}))
            document_answer = await transport.send(get(server.url + "/b"))
            busy = await transport.send(get(server.url + "/c"))
    assert (accepted.status, accepted.body) == (202, b"")
    assert accepted.headers.get("dataserviceversion") == "3.0"
    assert accepted.headers.get("Request-Id") == accepted.headers.get("request-id") == "r-202"
    assert (document_answer.status, document_answer.body) == (200, document)
    assert document_answer.headers.get("REQUEST-ID") == "r-200"
    assert (busy.status, busy.body, busy.headers.get("Retry-After")) == (503, b"busy", "7")


async def test_request_goes_on_the_wire_exactly_as_given() -> None:
    signed = {
        "Authorization": "SharedKey acct:c2lnbmF0dXJl+/==",
        "ocp-date": "Tue, 05 May 2026 10:00:00 GMT",
        "client-request-id": "0c7e-11",
    }
    target = "/pools/p%2F1/nodes/tvm-1%3A2/reimage?api-version=2024-07-01.20.0&timeout=30"
    body = b'{"nodeReimageOption":"requeue"}'
    content_type = "application/json; odata=minimalmetadata"
    with anyio.fail_after(4):
        async with raw_server() as server, opened() as transport:
            await transport.send(HttpRequest("POST", server.url + target, dict(signed)))
            with_body = {**signed, "Content-Type": content_type}
            await transport.send(HttpRequest("POST", server.url + target, with_body, body))
            await transport.send(get(server.url + "/pools?$filter=id%20eq%20%27a%27"))
    bare, full, listing = server.seen
    host = server.url.removeprefix("http://")
    for seen in (bare, full):
        assert (seen.method, seen.target) == ("POST", target)
        for name, value in signed.items():
            assert seen.values(name) == [value]
        assert seen.values("Host") == [host]
    assert bare.values("Content-Type") == []  # never added behind the signature's back
    assert bare.values("Content-Length") == ["0"] and bare.body == b""
    assert full.values("Content-Type") == [content_type]
    assert full.values("Content-Length") == [str(len(body))] and full.body == body
    assert (listing.method, listing.target) == ("GET", "/pools?$filter=id%20eq%20%27a%27")
    assert listing.values("Host") == [host] and listing.body == b""
    assert "gzip" in ",".join(listing.values("Accept-Encoding"))


# --- connections ----------------------------------------------------------------------------


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    with anyio.fail_after(4):
        async with raw_server() as server, opened() as transport:
            answers = [await transport.send(get(f"{server.url}/n/{i}")) for i in range(20)]
    assert [a.body for a in answers] == [f"ok:/n/{i}".encode() for i in range(20)]
    assert server.accepted == 1


async def test_concurrent_requests_stay_within_the_pool() -> None:
    async def slow(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await asyncio.sleep(0.01)
        return await ok(seen, reader, writer)

    with anyio.fail_after(4):
        async with raw_server(slow) as server, opened(pool_size=4) as transport:
            answers = await asyncio.gather(
                *(transport.send(get(f"{server.url}/n/{i}")) for i in range(50))
            )
    assert [a.body for a in answers] == [f"ok:/n/{i}".encode() for i in range(50)]
    assert server.max_open == 4 and server.accepted == 4


@pytest.mark.parametrize("says_close", [True, False], ids=["connection-close", "silent-close"])
async def test_a_connection_the_server_closed_is_not_reused(says_close: bool) -> None:
    """``Connection: close``, or a keep-alive answer followed by the server hanging up: either
    way the next request goes on a new connection and succeeds (never in doubt)."""
    headers = {"Connection": "close"} if says_close else {}
    once = replies(lambda seen: answer(200, b"one", headers), keep=False)
    with anyio.fail_after(4):
        async with raw_server(once) as server, opened() as transport:
            first = await transport.send(get(server.url + "/1"))
            await anyio.sleep(0.1)
            second = await transport.send(get(server.url + "/2"))
    assert first.body == second.body == b"one"
    assert server.accepted == 2


# --- bodies ----------------------------------------------------------------------------------


async def test_chunked_body_is_reassembled() -> None:
    pieces = [b'{"value": [', b'"a", ' * 3000, b'"z"]}']

    async def chunked(seen: Seen, reader: Reader, w: Writer) -> bool:
        w.write(answer(200, headers={"Transfer-Encoding": "chunked"}))
        for piece in pieces:
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
            await asyncio.sleep(0.005)
        w.write(b"0\r\n\r\n")
        return True

    with anyio.fail_after(4):
        async with raw_server(chunked) as server, opened() as transport:
            first = await transport.send(get(server.url + "/1"))
            second = await transport.send(get(server.url + "/2"))
    assert first.body == second.body == b"".join(pieces)
    assert len(json.loads(first.body)["value"]) == 3001
    assert server.accepted == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_body_is_decoded(encoding: str) -> None:
    plain = json.dumps({"value": [{"id": f"tvm-{i}"} for i in range(2000)]}).encode()
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    packs = replies(lambda seen: answer(200, packed, {"Content-Encoding": encoding}))
    with anyio.fail_after(4):
        async with raw_server(packs) as server, opened() as transport:
            got = await transport.send(get(server.url + "/pools"))
    assert got.status == 200 and got.body == plain


async def test_close_delimited_body_is_read_to_the_end() -> None:
    body = b"x" * 100_000 + b"end"

    async def then_close(seen: Seen, reader: Reader, w: Writer) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body[:10])
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(body[10:])
        return False

    with anyio.fail_after(4):
        async with raw_server(then_close) as server, opened() as transport:
            # A request timeout longer than the deadline: waiting for it would fail the test.
            got = await transport.send(get(server.url + "/", timeout=10))
            after = await transport.send(get(server.url + "/", timeout=10))
    assert got.status == 200 and got.body == body and after.body == body


async def test_interim_1xx_answers_are_skipped() -> None:
    """RFC 9110 15.2: a client must read past 1xx answers it did not ask for to the final one."""
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    final = replies(lambda seen: interim + answer(202, headers={"Request-Id": seen.target}))
    with anyio.fail_after(4):
        async with raw_server(final) as server, opened() as transport:
            got = [await transport.send(HttpRequest("POST", f"{server.url}/{i}", {})) for i in "ab"]
    assert [(r.status, r.headers.get("request-id")) for r in got] == [(202, "/a"), (202, "/b")]
    assert server.accepted == 1


async def test_an_answer_nobody_asked_for_is_dropped_with_its_connection() -> None:
    extra = answer(500, b"second!", {"Request-Id": "unasked"})
    twice = replies(lambda seen: answer(200, b"first", {"Request-Id": seen.target}) + extra)
    with anyio.fail_after(4):
        async with raw_server(twice) as server, opened() as transport:
            got = [await transport.send(get(f"{server.url}/{i}")) for i in "ab"]
    assert [(r.status, r.body) for r in got] == [(200, b"first"), (200, b"first")]
    headers = [{k.lower(): v for k, v in r.headers.items()} for r in got]
    assert headers == [  # nothing of the extra answer mixed in
        {"request-id": "/a", "content-length": "5"},
        {"request-id": "/b", "content-length": "5"},
    ]
    assert server.accepted == 2


# --- no complete answer ------------------------------------------------------------------


# What the server does instead of answering: the bytes it writes, then "close", "reset" or
# "hold" (keep the connection open: the client must notice a malformed answer by itself).
FAILURES: dict[str, tuple[bytes, str]] = {
    "close-without-answer": (b"", "close"),
    "reset-without-answer": (b"", "reset"),
    "close-mid-headers": (b"HTTP/1.1 200 OK\r\nContent-Le", "close"),
    "close-mid-body": (answer(200, b"x" * 100)[:-40], "close"),
    "close-mid-chunk": (
        answer(200, headers={"Transfer-Encoding": "chunked"}) + b"64\r\nxx",
        "close",
    ),
    "malformed-not-http": (b"NOT HTTP\r\n\r\n", "hold"),
    "malformed-status": (b"HTTP/1.1 abc Nope\r\n\r\n", "hold"),
    "malformed-length": (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "hold"),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_no_complete_answer_is_in_doubt(failure: str) -> None:
    written, then = FAILURES[failure]

    async def breaks(seen: Seen, reader: Reader, w: Writer) -> bool:
        if seen.target != "/reimage":
            return await ok(seen, reader, w)
        w.write(written)
        await w.drain()
        if then == "reset":  # linger 0: the close sends an RST
            linger = struct.pack("ii", 1, 0)
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            w.transport.abort()
        elif then == "hold":
            await wait_for_eof(reader)
        return False

    with anyio.fail_after(4):
        async with raw_server(breaks) as server, opened() as transport:
            with pytest.raises(RequestInDoubt):
                await transport.send(HttpRequest("POST", server.url + "/reimage", {}, None, 10))
            after = await transport.send(get(server.url + "/after"))
    assert after.body == b"ok:/after"


async def test_no_answer_within_the_request_timeout_is_in_doubt() -> None:
    async def withholds(seen: Seen, reader: Reader, w: Writer) -> bool:
        if seen.target != "/r":
            return await ok(seen, reader, w)
        await wait_for_eof(reader)
        return False

    with anyio.fail_after(3):
        async with raw_server(withholds) as server, opened() as transport:
            started = time.monotonic()
            with pytest.raises(RequestInDoubt):
                await transport.send(HttpRequest("POST", server.url + "/r", {}, None, 0.5))
            elapsed = time.monotonic() - started
            after = await transport.send(get(server.url + "/after"))
    assert 0.4 <= elapsed < 1.5 and after.body == b"ok:/after"


async def test_each_request_keeps_its_own_timeout() -> None:
    """A later request with a shorter timeout gives up first; the longer one keeps waiting."""

    async def withholds(seen: Seen, reader: Reader, w: Writer) -> bool:
        await wait_for_eof(reader)
        return False

    given_up: dict[str, float] = {}

    async def timed(name: str, transport: Transport, url: str, timeout: float) -> None:
        with pytest.raises(RequestInDoubt, match=f"within {timeout:g}s"):
            await transport.send(HttpRequest("POST", url, {}, None, timeout))
        given_up[name] = time.monotonic() - started

    with anyio.fail_after(4):
        async with raw_server(withholds) as server, opened() as transport:
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(timed, "long", transport, server.url + "/long", 1.5)
                await anyio.sleep(0.05)
                tg.start_soon(timed, "short", transport, server.url + "/short", 0.3)
    assert 0.3 <= given_up["short"] < 1.0
    assert 1.5 <= given_up["long"] < 2.5


SMALL_LIMIT = 64 * 1024
BIG = b"y" * (3 * SMALL_LIMIT)
OVERSIZED: dict[str, bytes] = {
    "one-piece": answer(200, BIG),
    "chunked": answer(200, headers={"Transfer-Encoding": "chunked"})
    + b"".join(b"%x\r\n%s\r\n" % (4096, BIG[i : i + 4096]) for i in range(0, len(BIG), 4096))
    + b"0\r\n\r\n",
    "gzip-bomb": answer(200, gzip.compress(BIG), {"Content-Encoding": "gzip"}),
}


@pytest.mark.parametrize("shape", OVERSIZED)
async def test_body_over_the_limit_is_refused_and_the_transport_recovers(
    shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiohttp_transport, "MAX_RESPONSE_BYTES", SMALL_LIMIT)
    small = answer(200, b"a" * SMALL_LIMIT)
    huge = replies(lambda seen: OVERSIZED[shape] if seen.target == "/big" else small)
    with anyio.fail_after(4):
        async with raw_server(huge) as server, opened() as transport:
            with pytest.raises(UnexpectedResponse) as caught:
                await transport.send(get(server.url + "/big"))
            at_the_limit = await transport.send(get(server.url + "/small"))
    assert caught.value.status == 200
    assert at_the_limit.status == 200 and at_the_limit.body == b"a" * SMALL_LIMIT


async def test_closed_port_is_not_sent() -> None:
    url = f"http://127.0.0.1:{closed_port()}/pools/p/nodes/n/reimage"
    with anyio.fail_after(4):
        async with opened() as transport:
            with pytest.raises(RequestNotSent):
                await transport.send(HttpRequest("POST", url, {}, None, 2))


async def test_cancelled_request_drops_its_connection() -> None:
    """Cancelled mid-answer, with a second request queued for the only pooled connection:
    the connection is closed, not reused, and the pool slot comes back."""
    closed_by_client = asyncio.Event()

    async def holds(seen: Seen, reader: Reader, w: Writer) -> bool:
        if seen.target != "/held":
            return await ok(seen, reader, w)
        await wait_for_eof(reader)
        closed_by_client.set()
        return False

    with anyio.fail_after(4):
        async with raw_server(holds) as server, opened(pool_size=1) as transport:
            async with anyio.create_task_group() as group:
                group.start_soon(transport.send, get(server.url + "/held", timeout=10))
                await server.got_request.wait()
                group.start_soon(transport.send, get(server.url + "/queued", timeout=10))
                await anyio.sleep(0.05)
                group.cancel_scope.cancel()
            with anyio.fail_after(1):
                await closed_by_client.wait()
            answers = [await transport.send(get(server.url + f"/{i}")) for i in range(3)]
    assert [a.body for a in answers] == [b"ok:/0", b"ok:/1", b"ok:/2"]
    assert [s.target for s in server.seen] == ["/held", "/0", "/1", "/2"]
    assert server.accepted == 2


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it): a test CA's certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    authority = new_authority(folder)
    return authority.server_context(folder, "127.0.0.1"), authority.client_context()


async def test_https_with_a_trusted_certificate(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_pair
    with anyio.fail_after(4):
        async with raw_server(tls=server_context) as server:
            async with opened(ssl_context=client_context) as transport:
                answers = [await transport.send(get(f"{server.url}/s/{i}")) for i in range(3)]
            async with opened() as untrusting:
                with pytest.raises(RequestNotSent):
                    await untrusting.send(HttpRequest("POST", server.url + "/s", {}, None, 2))
    assert [a.body for a in answers] == [b"ok:/s/0", b"ok:/s/1", b"ok:/s/2"]
    assert server.seen[0].values("Host") == [server.url.removeprefix("https://")]
    assert len(server.seen) == 3  # the untrusted request never got past the handshake


# --- refused before sending --------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb"])
async def test_header_value_with_a_line_break_is_refused_before_sending(value: str) -> None:
    with anyio.fail_after(4):
        async with raw_server() as server, opened() as transport:
            with pytest.raises(ValueError):
                await transport.send(HttpRequest("POST", server.url + "/r", {"x-ms-a": value}))
            after = await transport.send(get(server.url + "/after"))
    assert after.body == b"ok:/after"
    assert [s.target for s in server.seen] == ["/after"]  # nothing of the bad one went out
