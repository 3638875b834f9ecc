"""The transport's safety cases, over real TCP on 127.0.0.1 (issue 14; issue 13 items 6-7):

- what a server may send is bounded (header floods, oversized header lines);
- "never sent" (refused, DNS, connect timeout, a stalled TLS handshake, no pooled connection
  in time) is kept apart from "in doubt", whichever timeout strikes first;
- nothing is re-sent behind the caller's back, and redirects are not followed;
- an answer echoing another request's client-request-id is in doubt, its connection dropped;
- a malformed URL is a Batch error; a certificate naming its host only in the CN is refused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest
from rawserver import Reader, Seen, Writer, answer, ok, raw_server, replies, wait_for_eof
from tlscerts import new_authority
from transporthelpers import get, opened, unanswered_port

from fleet_reimage.batch.errors import (
    BatchError,
    ConfigurationError,
    RequestInDoubt,
    RequestNotSent,
    UnexpectedResponse,
)
from fleet_reimage.batch.transport import HttpRequest

pytestmark = pytest.mark.anyio


def post(url: str, timeout: float = 3.0, request_id: str | None = None) -> HttpRequest:
    headers = {} if request_id is None else {"client-request-id": request_id}
    return HttpRequest("POST", url, headers, None, timeout)


# --- what a server may send ------------------------------------------------------------------

FLOODS: dict[str, bytes] = {
    # 100,000 duplicate headers stalled the former transport's event loop for 4.4 s.
    "100k-duplicate-headers": b"HTTP/1.1 200 OK\r\n"
    + b"X-Flood: a\r\n" * 100_000
    + b"Content-Length: 0\r\n\r\n",
    # A 64 MiB header was accepted whole (177 MB RSS); one of 1 MiB shows the limit.
    "1mib-header-line": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",
    "1mib-status-line": b"HTTP/1.1 200 " + b"O" * (1 << 20) + b"\r\n\r\n",
}


@pytest.mark.parametrize("flood", FLOODS)
async def test_header_floods_are_refused_and_the_connection_dropped(flood: str) -> None:
    floods = replies(lambda seen: FLOODS[flood] if seen.target == "/flood" else ok_bytes(seen))
    with anyio.fail_after(10):
        async with raw_server(floods) as server, opened() as transport:
            with pytest.raises(RequestInDoubt, match="connection lost"):
                await transport.send(post(server.url + "/flood"))
            after = await transport.send(get(server.url + "/after"))
    assert after.body == b"ok:/after"
    assert server.accepted == 2  # the flooded connection was not reused


def ok_bytes(seen: Seen) -> bytes:
    return answer(200, b"ok:" + seen.target.encode())


async def test_a_body_announced_over_the_limit_is_refused_without_reading_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Content-Length over the cap: refused at once; the server never has to send it all
    (it holds the connection; reading on would end in a timeout, not this refusal)."""
    from fleet_reimage.batch import aiohttp_transport

    monkeypatch.setattr(aiohttp_transport, "MAX_RESPONSE_BYTES", 1024)
    dropped = asyncio.Event()

    async def announces(seen: Seen, reader: Reader, w: Writer) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n" + b"x" * 100)
        await w.drain()
        await wait_for_eof(reader)
        dropped.set()
        return False

    with anyio.fail_after(5):
        async with raw_server(announces) as server, opened() as transport:
            with pytest.raises(UnexpectedResponse, match="larger than"):
                await transport.send(get(server.url + "/big", timeout=30))
            await dropped.wait()


# --- never sent, or in doubt ---------------------------------------------------------------


@pytest.fixture
def stalled_tls_port() -> Any:
    """A port that accepts TCP and never says a word: the TLS handshake stalls."""

    async def start() -> tuple[asyncio.Server, int]:
        async def silent(reader: Reader, writer: Writer) -> None:
            await wait_for_eof(reader, limit=10)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    return start


@pytest.mark.parametrize(
    ("request_timeout", "connect_timeout"),
    [(0.5, 10.0), (10.0, 0.5)],
    ids=["request-timeout-first", "connect-timeout-first"],
)
async def test_a_stalled_tls_handshake_is_not_sent(
    stalled_tls_port: Any, request_timeout: float, connect_timeout: float
) -> None:
    """Whichever timeout strikes first, nothing was written: not sent (aiohttp reports the
    request timeout as a bare TimeoutError, which used to be taken as "in doubt")."""
    server, port = await stalled_tls_port()
    try:
        with anyio.fail_after(5):
            async with opened(connect_timeout=connect_timeout) as transport:
                with pytest.raises(RequestNotSent, match="could not connect"):
                    await transport.send(post(f"https://127.0.0.1:{port}/r", request_timeout))
    finally:
        server.close()


@pytest.mark.parametrize(
    ("request_timeout", "connect_timeout"),
    [(0.5, 10.0), (10.0, 0.5)],
    ids=["request-timeout-first", "connect-timeout-first"],
)
async def test_a_connect_timeout_is_not_sent(
    request_timeout: float, connect_timeout: float
) -> None:
    with unanswered_port() as port, anyio.fail_after(5):
        async with opened(connect_timeout=connect_timeout) as transport:
            with pytest.raises(RequestNotSent, match="could not connect"):
                await transport.send(post(f"http://127.0.0.1:{port}/r", request_timeout))


async def test_a_name_that_does_not_resolve_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver says the name does not exist (faked here: no DNS query leaves)."""

    def no_such_name(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with anyio.fail_after(5):
        async with opened() as transport:
            with pytest.raises(RequestNotSent, match="could not connect"):
                await transport.send(post("https://nowhere.batch.test/pools/p/nodes/n/reimage"))


async def test_no_pooled_connection_within_the_timeout_is_not_sent() -> None:
    """The only pooled connection stays busy past the second request's timeout: that one
    never left (the server never saw it)."""

    async def holds(seen: Seen, reader: Reader, w: Writer) -> bool:
        if seen.target == "/held":
            await wait_for_eof(reader)
            return False
        return await ok(seen, reader, w)

    with anyio.fail_after(5):
        async with (
            raw_server(holds) as server,
            opened(pool_size=1) as transport,
            anyio.create_task_group() as group,
        ):
            group.start_soon(transport.send, get(server.url + "/held", timeout=10))
            await server.got_request.wait()
            with pytest.raises(RequestNotSent, match=r"within 0\.3s"):
                await transport.send(post(server.url + "/queued", timeout=0.3))
            group.cancel_scope.cancel()
    assert [s.target for s in server.seen] == ["/held"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_nothing_is_re_sent_when_a_kept_alive_connection_closes(method: str) -> None:
    """The server reads the second request on a kept-alive connection and hangs up without
    answering. aiohttp would send an idempotent request again on a new connection; here
    it is in doubt, and the server saw it exactly once."""

    async def hangs_up_on_second(seen: Seen, reader: Reader, w: Writer) -> bool:
        if seen.target == "/second":
            return False
        return await ok(seen, reader, w)

    with anyio.fail_after(5):
        async with raw_server(hangs_up_on_second) as server, opened() as transport:
            await transport.send(HttpRequest(method, server.url + "/first", {}))
            with pytest.raises(RequestInDoubt):
                await transport.send(HttpRequest(method, server.url + "/second", {}))
    assert [s.target for s in server.seen] == ["/first", "/second"]
    assert server.accepted == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    moved = replies(
        lambda seen: (
            answer(status, headers={"Location": "/elsewhere"})
            if seen.target == "/r"
            else ok_bytes(seen)
        )
    )
    with anyio.fail_after(5):
        async with raw_server(moved) as server, opened() as transport:
            got = await transport.send(post(server.url + "/r"))
    assert got.status == status and got.headers.get("Location") == "/elsewhere"
    assert [s.target for s in server.seen] == ["/r"]


# --- answers that belong to another request -------------------------------------------------


async def test_a_late_answer_for_an_earlier_request_is_in_doubt_and_drops_the_connection() -> None:
    """The server answers the first request, then, on the same kept-alive connection, a late
    second answer for it arrives ahead of the second request's own. Taken in order, the late
    one would be read as the second request's answer."""

    def answers(seen: Seen) -> bytes:
        ours = answer(202, headers={"client-request-id": seen.values("client-request-id")[0]})
        if seen.target == "/second":
            late = answer(202, b"", {"client-request-id": "id-1", "request-id": "late"})
            return late + ours
        return ours

    with anyio.fail_after(5):
        async with raw_server(replies(answers)) as server, opened() as transport:
            first = await transport.send(post(server.url + "/first", request_id="id-1"))
            with pytest.raises(RequestInDoubt, match="belongs to another request"):
                await transport.send(post(server.url + "/second", request_id="id-2"))
            third = await transport.send(post(server.url + "/third", request_id="ID-3"))
    assert first.headers.get("client-request-id") == "id-1"
    assert third.headers.get("client-request-id") == "ID-3"
    assert server.accepted == 2  # the connection the late answer arrived on was dropped


async def test_echoes_that_match_or_are_absent_are_accepted() -> None:
    def answers(seen: Seen) -> bytes:
        if seen.target == "/silent":
            return answer(202)
        return answer(202, headers={"client-request-id": "A1B2-c3"})

    with anyio.fail_after(5):
        async with raw_server(replies(answers)) as server, opened() as transport:
            silent = await transport.send(post(server.url + "/silent", request_id="a1b2-c3"))
            upper = await transport.send(post(server.url + "/echo", request_id="a1b2-c3"))
    assert silent.status == upper.status == 202
    assert server.accepted == 1


# --- malformed URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/pools",  # port out of range
        "http://[::1/pools",  # broken IPv6 literal
        "http:///pools",  # no host
        "http://127.0.0.1:port/pools",  # port not a number
        "ftp://127.0.0.1/pools",  # not http
    ],
)
async def test_a_malformed_url_is_a_batch_error(url: str) -> None:
    with anyio.fail_after(5):
        async with opened() as transport:
            with pytest.raises(ConfigurationError, match="malformed URL") as caught:
                await transport.send(get(url))
    assert isinstance(caught.value, BatchError)


# --- TLS: names are checked against the subjectAltName only ----------------------------------


async def test_a_certificate_naming_its_host_only_in_the_cn_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two certificates for "localhost" from one CA, trusted through $REQUESTS_CA_BUNDLE:
    with a subjectAltName it is accepted; with the name only in the CN it is refused
    (``hostname_checks_common_name = False``)."""
    authority = new_authority(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(authority.pem))
    with_san = authority.server_context(tmp_path, "localhost", san=True)
    cn_only = authority.server_context(tmp_path, "localhost", san=False)
    with anyio.fail_after(5):
        async with (
            raw_server(tls=with_san) as good,
            raw_server(tls=cn_only) as bad,
            opened() as transport,
        ):
            accepted = await transport.send(get(_localhost(good.url) + "/ok"))
            with pytest.raises(
                RequestNotSent, match=r"Hostname mismatch|not valid for 'localhost'"
            ):
                await transport.send(get(_localhost(bad.url) + "/cn"))
    assert accepted.body == b"ok:/ok"
    assert bad.seen == []


def _localhost(url: str) -> str:
    return url.replace("127.0.0.1", "localhost")


async def test_the_ca_bundle_variable_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trusted only through $SSL_CERT_FILE, the test CA's certificate is accepted; without
    it (the system store) it is refused."""
    authority = new_authority(tmp_path)
    server_context = authority.server_context(tmp_path, "127.0.0.1")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with anyio.fail_after(5):
        async with raw_server(tls=server_context) as server:
            monkeypatch.setenv("SSL_CERT_FILE", str(authority.pem))
            async with opened() as transport:
                trusted = await transport.send(get(server.url + "/a"))
            monkeypatch.delenv("SSL_CERT_FILE")
            async with opened() as transport:
                with pytest.raises(RequestNotSent):
                    await transport.send(get(server.url + "/b"))
    assert trusted.body == b"ok:/a"
    assert [s.target for s in server.seen] == ["/a"]


def test_an_unreadable_ca_bundle_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_reimage.batch.network import tls_context

    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path / "garbage.pem"):
        with pytest.raises(ConfigurationError, match=r"\$REQUESTS_CA_BUNDLE=.*CA bundle"):
            tls_context({"REQUESTS_CA_BUNDLE": str(path)})
    context = tls_context({})
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.hostname_checks_common_name is False
