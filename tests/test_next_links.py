"""Following ``odata.nextLink`` (issue 13 item 6), over real TCP against scripted servers:
a link must keep to the endpoint's origin and carry an absolute path, and a listing stops,
with a clear error, on a repeated link or past ``MAX_PAGES`` pages; a page that cannot be
read whole is an error, never a shorter listing."""

from __future__ import annotations

import gzip
import json
from itertools import count

import pytest
from aiohttp import web
from clienthelpers import client_for, fake_server

from fleet_reimage.batch import client as client_module
from fleet_reimage.batch.errors import UnexpectedResponse

pytestmark = pytest.mark.anyio


def page(items: list[str], link: str | None) -> web.Response:
    body: dict[str, object] = {"value": [{"id": i} for i in items]}
    if link is not None:
        body["odata.nextLink"] = link
    return web.Response(text=json.dumps(body), content_type="application/json")


async def list_all(url: str) -> list[str]:
    async with client_for(url) as client:
        return [node.id async for node in client.list_nodes("p")]


@pytest.mark.parametrize("suffix", ["?$skiptoken=1", "", "?"])
async def test_a_next_link_without_a_path_is_refused(suffix: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return page(["n1"], f"http://{request.host}{suffix}")

    async with fake_server([("GET", "/pools/p/nodes", handler)]) as server:
        with pytest.raises(UnexpectedResponse, match="without an absolute path"):
            await list_all(server.url)
    assert [path for _, path in server.seen] == ["/pools/p/nodes?api-version=2024-07-01.20.0"]


async def test_a_repeated_next_link_stops_the_listing() -> None:
    """Each page links to the same second page: it is listed once, then the repeat is refused."""

    async def handler(request: web.Request) -> web.Response:
        return page([f"n{len(server.seen)}"], f"http://{request.host}/pools/p/nodes?$skiptoken=s")

    async with fake_server([("GET", "/pools/p/nodes", handler)]) as server:
        with pytest.raises(UnexpectedResponse, match="repeats a page already listed"):
            await list_all(server.url)
    assert len(server.seen) == 2


async def test_a_listing_stops_past_the_page_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server handing out a new next link on every page (67,000 GETs in 20 s before):
    exactly MAX_PAGES pages are read, then the listing stops with a clear error."""
    monkeypatch.setattr(client_module, "MAX_PAGES", 40)
    tokens = count(1)

    async def endless(request: web.Request) -> web.Response:
        token = next(tokens)
        return page([f"n{token}"], f"http://{request.host}/pools/p/nodes?$skiptoken={token}")

    async with fake_server([("GET", "/pools/p/nodes", endless)]) as server:
        with pytest.raises(UnexpectedResponse, match="more than 40 pages"):
            await list_all(server.url)
    assert len(server.seen) == 40


async def test_a_listing_of_exactly_the_page_bound_is_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "MAX_PAGES", 40)

    async def forty(request: web.Request) -> web.Response:
        token = int(request.query.get("$skiptoken", "0")) + 1
        link = f"http://{request.host}/pools/p/nodes?$skiptoken={token}" if token < 40 else None
        return page([f"n{token}"], link)

    async with fake_server([("GET", "/pools/p/nodes", forty)]) as server:
        ids = await list_all(server.url)
    assert ids == [f"n{i}" for i in range(1, 41)]


async def test_a_cut_short_compressed_page_is_an_error_not_a_shorter_list() -> None:
    """A gzip page whose stream is cut short (the HTTP framing intact): aiohttp hands back
    what it could inflate; the listing must fail on it, never return part of the nodes."""
    document = json.dumps({"value": [{"id": f"n{i}"} for i in range(2000)]}).encode()
    packed = gzip.compress(document)

    async def cut(request: web.Request) -> web.Response:
        return web.Response(body=packed[: len(packed) // 2], headers={"Content-Encoding": "gzip"})

    async with fake_server([("GET", "/pools/p/nodes", cut)]) as server:
        with pytest.raises(UnexpectedResponse, match="expected a JSON body"):
            await list_all(server.url)
