"""The one-method seam between the Batch client and the network.

``Transport.send(request) -> response`` is all the client needs. Two real ones:

- ``http11.Http11Transport``, the default: pooled keep-alive HTTP/1.1 on asyncio with the
  ``httptools`` parser; lean, because the reimage POST is the hot path.
- ``aiohttp_transport.AiohttpTransport``: the same contract on an aiohttp ClientSession,
  kept as a fallback (``FLEET_REIMAGE_TRANSPORT=aiohttp``).

Tests may pass any object with those two methods.

A transport answers with a response for *any* HTTP status and raises only when no answer
came back, sorting the failure into the two kinds that matter for a non-idempotent POST:

- ``RequestNotSent``: the connection was never made (DNS, refused, connect timeout, TLS).
- ``RequestInDoubt``: the request may have reached the server (timeout after connecting,
  connection reset or closed before the full answer). When unsure, we say "in doubt": the
  caller then reads the node before sending again, which is always safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .errors import ConfigurationError

MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a list page of 1000 full nodes is ~1.5 MB


@dataclass(slots=True)
class HttpRequest:
    method: str
    url: str  # absolute, already percent-encoded; sent exactly as signed
    headers: dict[str, str]
    body: bytes | None = None
    timeout: float = 30.0


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive lookups
    body: bytes = field(default=b"", repr=False)


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse: ...

    async def close(self) -> None: ...


TRANSPORT_ENV = "FLEET_REIMAGE_TRANSPORT"
TRANSPORTS = ("http11", "aiohttp")


def default_transport(pool_size: int) -> Transport:
    """The transport a run uses: ``http11`` unless ``$FLEET_REIMAGE_TRANSPORT`` says otherwise.

    Imported on demand: aiohttp's client costs ~0.15 s of start-up that a run does not need.
    """
    choice = os.environ.get(TRANSPORT_ENV, "http11").strip().lower() or "http11"
    if choice not in TRANSPORTS:
        raise ConfigurationError(
            f"${TRANSPORT_ENV}={choice!r} is not a transport; use one of {', '.join(TRANSPORTS)}"
        )
    if choice == "aiohttp":
        from .aiohttp_transport import AiohttpTransport

        return AiohttpTransport(pool_size=pool_size)
    from .http11 import Http11Transport

    return Http11Transport(pool_size=pool_size)
