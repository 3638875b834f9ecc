"""A small HTTP CONNECT proxy on 127.0.0.1 for tests: test infrastructure, not a client.

It behaves like a TLS-inspecting corporate proxy: it asks for Basic proxy credentials (when
given some), opens tunnels only to the ``host:port`` names it maps, answers every other
CONNECT with 403 (so nothing ever leaves this machine), and terminates TLS inside the
tunnel with a certificate from a test CA (which the client must trust through
``$REQUESTS_CA_BUNDLE``). It forwards the plain requests to a local server and records
each one it sees (method and target), so a test can tell what went through it.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from rawserver import stream_server

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter


@dataclass
class Tunnel:
    target: str  # "host:port" as the CONNECT asked for it
    proxy_authorization: str | None
    status: int  # what the proxy answered the CONNECT with


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:PORT, without credentials
    tunnels: list[Tunnel] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (host, method, target)

    def url_with(self, user: str, password: str) -> str:
        return self.url.replace("http://", f"http://{user}:{password}@")


@dataclass
class Route:
    """A name the proxy serves: TLS terminated with ``tls``, forwarded to ``port`` in clear."""

    tls: ssl.SSLContext
    port: int


@asynccontextmanager
async def connect_proxy(
    routes: dict[str, Route], *, credentials: tuple[str, str] | None = None
) -> AsyncIterator[Proxy]:
    expected = None
    if credentials is not None:
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        expected = f"Basic {token}"
    state = Proxy("")

    async def serve(reader: Reader, writer: Writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            method, target, _ = request_line.split(" ")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)
            }
            auth = headers.get("proxy-authorization")
            status = _decide(method, target, auth, expected, routes)
            state.tunnels.append(Tunnel(target, auth, status))
            if status != 200:
                extra = 'Proxy-Authenticate: Basic realm="test"\r\n' if status == 407 else ""
                writer.write(f"HTTP/1.1 {status} No\r\n{extra}Content-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            route = routes[target]
            await writer.start_tls(route.tls)
            await _forward(reader, writer, route.port, target.split(":")[0], state)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()

    async with stream_server(serve) as port:
        state.url = f"http://127.0.0.1:{port}"
        yield state


def _decide(
    method: str, target: str, auth: str | None, expected: str | None, routes: dict[str, Route]
) -> int:
    if method != "CONNECT":
        return 501  # plain-http forwarding: fleet-reimage never asks for it
    if expected is not None and auth != expected:
        return 407
    return 200 if target in routes else 403


async def _forward(reader: Reader, writer: Writer, port: int, host: str, state: Proxy) -> None:
    """Requests from the tunnel to the local server, answers back, until either side ends."""
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    sides = {
        asyncio.ensure_future(_requests(reader, upstream_writer, host, state)),
        asyncio.ensure_future(_pipe(upstream_reader, writer)),
    }
    try:
        await asyncio.wait(sides, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for side in sides:
            side.cancel()
        await asyncio.gather(*sides, return_exceptions=True)
        upstream_writer.close()


async def _requests(reader: Reader, upstream: Writer, host: str, state: Proxy) -> None:
    """Each request (head, then a Content-Length body) recorded and passed on."""
    with suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ")
            state.requests.append((host, method, target))
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            upstream.write(head + (await reader.readexactly(length) if length else b""))
            await upstream.drain()


async def _pipe(reader: Reader, writer: Writer) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
