"""Helpers for the transport tests: an opened transport, a GET, a full accept queue."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fleet_reimage.batch.aiohttp_transport import AiohttpTransport
from fleet_reimage.batch.transport import HttpRequest


@asynccontextmanager
async def opened(**kwargs: Any) -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(**{"pool_size": 4, **kwargs})
    try:
        yield transport
    finally:
        await transport.close()


def get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None) -> HttpRequest:
    return HttpRequest("GET", url, dict(headers or {}), None, timeout)


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: a new connection's SYN goes unanswered.

    The listener never accepts, and its queue (backlog 0 holds one) is filled by a first
    connection, so the kernel drops further SYNs and a connect hangs until its timeout:
    a "connect timeout" without leaving this machine.
    """
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        yield port
