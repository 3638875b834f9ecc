"""Answers the emulator never gives (proxies, broken servers, hostile links), from a small
aiohttp server of our own on 127.0.0.1."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from clienthelpers import client_for, fake_server, fast_reads, no_sleep_recorder

from fleet_reimage.batch.client import API_VERSION
from fleet_reimage.batch.errors import (
    BatchHTTPError,
    NotFound,
    RequestInDoubt,
    TransientServerError,
    UnexpectedResponse,
)
from fleet_reimage.batch.responses import EXCERPT_CHARS
from fleet_reimage.batch.transport import MAX_RESPONSE_BYTES

pytestmark = pytest.mark.anyio
REIMAGE = "/pools/p/nodes/n/reimage"
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title>"
    "<style>body { font: 12px sans-serif }</style></head>\n<body>\n"
    "<h1>Bad Gateway</h1>\n<p>The proxy server could not reach the upstream server.</p>"
    "</body></html>"
)


def fixed(
    status: int, body: bytes | str = b"", headers: dict[str, str] | None = None
) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=data, headers=headers or {})


async def reimage_error(handler: object) -> BatchHTTPError:
    async with (
        fake_server([("POST", REIMAGE, handler)]) as server,  # type: ignore[list-item]
        client_for(server.url) as client,
    ):
        with pytest.raises(BatchHTTPError) as caught:
            await client.reimage_node("p", "n", option=None, client_request_id="crid")
        assert len(server.seen) == 1
    return caught.value


async def test_empty_error_body_keeps_status_and_headers() -> None:
    async def handler(request: web.Request) -> web.Response:
        return fixed(503, headers={"request-id": "rid-empty", "Retry-After": "5"})

    error = await reimage_error(handler)
    assert isinstance(error, TransientServerError)
    assert (error.status, error.code, error.request_id) == (503, None, "rid-empty")
    assert error.retry_after == 5.0 and error.client_request_id == "crid"
    assert error.message == TransientServerError.default_message
    assert str(error) == f"HTTP 503: {error.message} [request-id rid-empty]"


async def test_html_error_page_gives_a_readable_excerpt() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            status=502, text=HTML_PAGE, content_type="text/html", headers={"request-id": "rid-h"}
        )

    error = await reimage_error(handler)
    assert isinstance(error, TransientServerError)
    assert (error.status, error.code, error.request_id) == (502, None, "rid-h")
    excerpt = error.body_excerpt or ""
    assert "Bad Gateway" in excerpt and "could not reach the upstream server" in excerpt
    assert "<" not in excerpt and "\n" not in excerpt
    assert excerpt in error.message
    assert str(error).startswith("HTTP 502: non-JSON error body: ")
    assert str(error).endswith("[request-id rid-h]")


async def test_long_garbage_error_body_is_cut_short() -> None:
    async def handler(request: web.Request) -> web.Response:
        return fixed(500, "<p>" + "x" * 10_000 + "</p>" + "\x00\xff" * 10)

    error = await reimage_error(handler)
    assert isinstance(error, TransientServerError) and error.request_id is None
    assert error.body_excerpt is not None and len(error.body_excerpt) <= EXCERPT_CHARS


async def test_missing_request_id_header_is_found_in_the_message() -> None:
    body = {
        "odata.metadata": "x",
        "code": "NodeNotFound",
        "message": {
            "lang": "en-US",
            "value": "The specified node does not exist.\n"
            "RequestId:5f4c1f05-603a-4495-8e80-01f776310bbd\nTime:2016-01-04T22:12:33.9245931Z",
        },
    }

    async def handler(request: web.Request) -> web.Response:
        return fixed(404, json.dumps(body))

    error = await reimage_error(handler)
    assert isinstance(error, NotFound) and error.code == "NodeNotFound"
    assert error.request_id == "5f4c1f05-603a-4495-8e80-01f776310bbd"


async def test_accepted_without_request_id_or_echo() -> None:
    async def handler(request: web.Request) -> web.Response:
        return fixed(202)

    async with (
        fake_server([("POST", REIMAGE, handler)]) as server,
        client_for(server.url) as client,
    ):
        accepted = await client.reimage_node("p", "n", option=None, client_request_id="crid")
    assert accepted.status == 202 and accepted.client_request_id == "crid"
    assert accepted.request_id is None and accepted.echoed_client_request_id is None


@pytest.mark.parametrize("status", [200, 204])
async def test_success_other_than_202_may_have_been_applied(status: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        return fixed(status, headers={"request-id": "rid-200"})

    error = await reimage_error(handler)
    assert isinstance(error, UnexpectedResponse) and error.status == status
    assert "expected 202" in error.message and "may have been applied" in error.message
    assert error.request_id == "rid-200" and error.client_request_id == "crid"


async def test_redirect_is_not_followed() -> None:
    async with fake_server() as elsewhere:

        async def handler(request: web.Request) -> web.Response:
            return fixed(307, headers={"Location": f"{elsewhere.url}{REIMAGE}"})

        error = await reimage_error(handler)
        assert elsewhere.seen == []  # our signed request never went to the other host
    assert isinstance(error, UnexpectedResponse) and error.status == 307


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"<html><body>Service Unavailable</body></html>", "Service Unavailable"),
        (b"", "expected a JSON body"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"odata.metadata": "x"}', "without a 'value' array"),
        (b'{"value": {"id": "n"}}', "without a 'value' array"),
        (b"\xff\xfe garbage", "expected a JSON body"),
    ],
    ids=["html", "empty", "array", "no-value", "value-not-list", "undecodable"],
)
async def test_a_200_that_is_not_a_list_page(body: bytes, needle: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return fixed(200, body, {"request-id": "rid-list"})

    delays, sleep = no_sleep_recorder()
    async with (
        fake_server([("GET", "/pools/p/nodes", handler)]) as server,
        client_for(server.url, sleep=sleep) as client,
    ):
        with pytest.raises(UnexpectedResponse) as caught:
            async for _ in client.list_nodes("p"):
                pass
        assert len(server.seen) == 1 and delays == []  # not retried
    assert caught.value.status == 200 and needle in caught.value.message
    assert caught.value.request_id == "rid-list"


async def test_next_link_to_another_host_is_refused() -> None:
    async with fake_server() as elsewhere:
        page = {"value": [{"id": "n1"}], "odata.nextLink": f"{elsewhere.url}/pools/p/nodes?x=1"}

        async def handler(request: web.Request) -> web.Response:
            return fixed(200, json.dumps(page))

        async with (
            fake_server([("GET", "/pools/p/nodes", handler)]) as server,
            client_for(server.url) as client,
        ):
            with pytest.raises(UnexpectedResponse) as caught:
                async for _ in client.list_node_pages("p"):
                    pass
            assert len(server.seen) == 1
        assert elsewhere.seen == []  # credentials never went to the other origin
    assert "refusing odata.nextLink to another origin" in caught.value.message
    assert elsewhere.url.removeprefix("http://") in caught.value.message


@pytest.mark.parametrize(
    "link",
    [
        "https://{host}/pools/p/nodes?$skiptoken=1",  # same host and port, other scheme
        "http://localhost:{port}/pools/p/nodes?$skiptoken=1",  # same machine, other name
        "http://user@{host}/pools/p/nodes?$skiptoken=1",  # userinfo smuggled in
        12345,  # not even a string
    ],
)
async def test_next_links_that_are_not_our_origin(link: object) -> None:
    state: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        text = (
            link.format(host=state["host"], port=state["port"]) if isinstance(link, str) else link
        )
        return fixed(200, json.dumps({"value": [], "odata.nextLink": text}))

    async with (
        fake_server([("GET", "/pools/p/nodes", handler)]) as server,
        client_for(server.url) as client,
    ):
        state["host"] = server.url.removeprefix("http://")
        state["port"] = state["host"].rsplit(":", 1)[1]
        with pytest.raises(UnexpectedResponse):
            async for _ in client.list_node_pages("p"):
                pass
        assert len(server.seen) == 1


async def test_next_link_on_our_origin_is_followed_with_our_api_version() -> None:
    async def handler(request: web.Request) -> web.Response:
        if "$skiptoken" in request.query:
            return fixed(200, json.dumps({"value": [{"id": "n2"}]}), {"request-id": "r2"})
        link = (
            f"http://{request.host}/pools/p/nodes?api-version=2019-01-01.0.0"
            "&$filter=state%20eq%20'idle'&$skiptoken=abc%2Bdef"
        )
        body = {"value": [{"id": "n1"}, "not-an-object"], "odata.nextLink": link}
        return fixed(200, json.dumps(body), {"request-id": "r1"})

    async with (
        fake_server([("GET", "/pools/p/nodes", handler)]) as server,
        client_for(server.url) as client,
    ):
        pages = [page async for page in client.list_node_pages("p", filter="state eq 'idle'")]
        seen = server.seen
    assert [[item["id"] for item in page.items] for page in pages] == [["n1"], ["n2"]]
    assert [page.request_id for page in pages] == ["r1", "r2"]
    second = {k: v[0] for k, v in parse_qs(urlsplit(seen[1][1]).query).items()}
    assert second == {
        "api-version": API_VERSION,
        "$filter": "state eq 'idle'",
        "$skiptoken": "abc+def",
    }


async def test_body_over_the_cap_is_refused_without_harm() -> None:
    chunk = b"x" * (1024 * 1024)

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"request-id": "rid-big"})
        await response.prepare(request)
        try:
            for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up, as it should
        return response

    async def small(request: web.Request) -> web.Response:
        return fixed(200, json.dumps({"id": "p", "state": "active"}))

    delays, sleep = no_sleep_recorder()
    async with (
        fake_server([("GET", "/pools", huge), ("GET", "/pools/p", small)]) as server,
        client_for(server.url, sleep=sleep, limit=20) as client,
    ):
        with pytest.raises(UnexpectedResponse) as caught:
            async for _ in client.list_pools():
                pass
        pool = await client.get_pool("p")  # the client still works afterwards
    assert "larger than 32 MiB" in caught.value.message
    assert caught.value.request_id == "rid-big" and caught.value.client_request_id is not None
    assert pool.id == "p" and delays == []


async def test_large_body_in_many_chunks_is_read_whole() -> None:
    """A list page of a few MB arrives in many TCP chunks; all of it must be read.

    Regression: the transport used ``content.read(n)``, which returns what is buffered,
    so big pages came back truncated and failed to parse.
    """
    items = [{"id": f"node-{i:06d}", "state": "idle", "pad": "p" * 100} for i in range(20_000)]

    async def handler(request: web.Request) -> web.Response:
        return fixed(200, json.dumps({"value": items}))

    async with (
        fake_server([("GET", "/pools/p/nodes", handler)]) as server,
        client_for(server.url) as client,
    ):
        ids = [node.id async for node in client.list_nodes("p")]
    assert len(ids) == 20_000 and ids[-1] == "node-019999"


async def test_connection_dropped_mid_body_is_in_doubt() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=202, headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return response

    async with (
        fake_server([("POST", REIMAGE, handler)]) as server,
        client_for(server.url) as client,
    ):
        with pytest.raises(RequestInDoubt) as caught:
            await client.reimage_node("p", "n", option=None, client_request_id="crid")
    assert caught.value.client_request_id == "crid" and caught.value.sent_at is not None


async def test_transient_reads_from_a_proxy_are_retried() -> None:
    answers = [
        fixed(502, HTML_PAGE),
        fixed(504),
        fixed(200, json.dumps({"value": [{"id": "only"}]})),
    ]

    async def handler(request: web.Request) -> web.Response:
        return answers.pop(0)

    delays, sleep = no_sleep_recorder()
    async with (
        fake_server([("GET", "/pools", handler)]) as server,
        client_for(server.url, sleep=sleep, read_policy=fast_reads()) as client,
    ):
        pools = [pool.id async for pool in client.list_pools()]
        assert len(server.seen) == 3
    assert pools == ["only"] and len(delays) == 2
