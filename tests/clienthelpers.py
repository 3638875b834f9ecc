"""Helpers for the Batch client tests: an emulated account, fake transports, token sources
and a tiny aiohttp server for answers the emulator would never give."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

from fleet_reimage.batch.auth import Credential, SharedKeyCredential
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.http11 import Http11Transport
from fleet_reimage.batch.retry import RetryPolicy
from fleet_reimage.batch.transport import HttpRequest, HttpResponse, Transport
from fleet_reimage.emulator import FleetSpec, parse_fleet, running_emulator
from fleet_reimage.emulator.server import RunningEmulator

# Test keys (base64 of fixed bytes), not secrets. OTHER_KEY is a valid key the emulator
# does not know.
TEST_KEY = "Y2xpZW50IHRlc3RzOiBub3QgYSByZWFsIGJhdGNoIGtleSEhIQ=="
OTHER_KEY = "d3Jvbmcga2V5IGZvciB0aGUgY2xpZW50IHRlc3RzISEhIQ=="
ACCOUNT = "clienttest"
VM_REASON = "Operation reimage can be invoked only on pools created with cloudServiceConfiguration"

BASE_FLEET = f"""
account: {{name: {ACCOUNT}, key: "{TEST_KEY}", bearer_tokens: [tok1]}}
seed: 11
pools:
  - id: cs
    nodes: 30
    states: {{idle: 0.8, running: 0.2}}
    running_tasks: 2
  - id: vm
    nodes: 4
    reimage: refused
  - id: odd
    nodes: 3
    states: {{creating: 0.3333333333, unusable: 0.3333333333, starting: 0.3333333334}}
timings: {{reimaging: 5s, rebooting: 5s, starting: 1s}}
"""


def fleet(extra: str = "") -> FleetSpec:
    """The base fleet plus any top-level YAML (``faults:``, ``rate_limit:``)."""
    return parse_fleet(BASE_FLEET + extra, "client-test.yaml")


def no_sleep_recorder() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    """A ``sleep`` for BatchClient that records delays and returns at once."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await anyio.lowlevel.checkpoint()

    return delays, sleep


def real_sleep_recorder() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    """A ``sleep`` for BatchClient that records delays and really sleeps."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await anyio.sleep(seconds)

    return delays, sleep


class RecordingTransport:
    """Wraps a real transport and keeps a copy of every request handed to it."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.sent.append(
            HttpRequest(
                request.method, request.url, dict(request.headers), request.body, request.timeout
            )
        )
        return await self.inner.send(request)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Emulated:
    emu: RunningEmulator
    client: BatchClient
    transport: RecordingTransport

    @property
    def sent(self) -> list[HttpRequest]:
        return self.transport.sent


@asynccontextmanager
async def emulated(
    spec: FleetSpec | None = None,
    *,
    credential: Credential | None = None,
    key: str | None = None,
    limit: float = 15.0,
    **client_kwargs: Any,
) -> AsyncIterator[Emulated]:
    """A running emulator and a BatchClient talking to it over real TCP (127.0.0.1)."""
    with anyio.fail_after(limit):
        async with running_emulator(spec or fleet(), host="127.0.0.1", port=0) as emu:
            transport = RecordingTransport(Http11Transport(pool_size=16))
            cred = credential or SharedKeyCredential(emu.account_name, key or emu.account_key)
            client = BatchClient(emu.url, cred, transport, **client_kwargs)
            try:
                yield Emulated(emu, client, transport)
            finally:
                await client.close()
                await transport.close()


def node_ids(emu: RunningEmulator, pool: str, state: str | None = None) -> list[str]:
    return [n.id for n in emu.state.pools[pool].nodes if state is None or n.state == state]


def node_counts(emu: RunningEmulator, pool: str, node_id: str) -> tuple[int, int]:
    """(reimages, reboots) the emulator applied to one node, from its stats document."""
    for entry in emu.stats(pool)["nodes"]:
        if entry["id"] == node_id:
            return entry["reimages"], entry["reboots"]
    raise AssertionError(f"{pool}/{node_id} not in the emulator's stats")


def requests_by_operation(emu: RunningEmulator, operation: str) -> int:
    by_operation = emu.stats(include_nodes=False)["requests"]["by_operation"]
    return int(by_operation.get(operation, 0))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- fakes for the transport seam and the token source ---------------------------------


@dataclass
class ScriptedTransport:
    """A Transport answering from a script: each entry is a response or an exception."""

    script: list[HttpResponse | BaseException]
    sent: list[HttpRequest] = field(default_factory=list)
    closed: bool = False

    async def send(self, request: HttpRequest) -> HttpResponse:
        # Copy: the client must not be able to change what we recorded afterwards.
        self.sent.append(
            HttpRequest(
                request.method, request.url, dict(request.headers), request.body, request.timeout
            )
        )
        await anyio.lowlevel.checkpoint()
        if not self.script:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> HttpResponse:
    from multidict import CIMultiDict

    return HttpResponse(status, CIMultiDict(headers or {}), body)


@dataclass
class FakeToken:
    token: str
    expires_on: int


@dataclass
class FakeTokenSource:
    """An azure-identity-like async credential handing out tok1, tok2, ... on each call."""

    lifetime: float = 3600.0
    clock: Callable[[], float] = time.time
    delay: float = 0.0  # seconds each fetch takes (to make concurrent callers overlap)
    fail_with: BaseException | None = None
    prefix: str = "tok"
    calls: list[tuple[str, ...]] = field(default_factory=list)
    closed: bool = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> FakeToken:
        self.calls.append(scopes)
        if self.delay:
            await anyio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        return FakeToken(f"{self.prefix}{len(self.calls)}", int(self.clock() + self.lifetime))

    async def close(self) -> None:
        self.closed = True


class ManualTime:
    """A wall clock for EntraCredential that only moves when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- a fake Batch endpoint for answers the emulator never gives -------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeServer:
    url: str
    seen: list[tuple[str, str]]  # (method, path_qs) of every request received


@asynccontextmanager
async def fake_server(
    routes: Sequence[tuple[str, str, Handler]] = (),
) -> AsyncIterator[FakeServer]:
    """An aiohttp app on 127.0.0.1:<free port>; unrouted paths answer 599 (a test bug)."""
    seen: list[tuple[str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        seen.append((request.method, request.path_qs))
        return await handler(request)

    async def unrouted(request: web.Request) -> web.Response:
        return web.Response(status=599, text="no route in the fake server")

    app = web.Application(middlewares=[record])
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app.router.add_route("*", "/{tail:.*}", unrouted)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield FakeServer(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client_for(
    url: str, *, limit: float = 10.0, **client_kwargs: Any
) -> AsyncIterator[BatchClient]:
    """A BatchClient with a Shared Key credential and a real transport, for a fake server."""
    with anyio.fail_after(limit):
        transport = Http11Transport(pool_size=4)
        client = BatchClient(
            url, SharedKeyCredential(ACCOUNT, TEST_KEY), transport, **client_kwargs
        )
        try:
            yield client
        finally:
            await client.close()
            await transport.close()


def fast_reads(max_attempts: int = 3, max_connect_failures: int = 3) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        max_connect_failures=max_connect_failures,
        initial_backoff=0.01,
        max_backoff=0.05,
    )
