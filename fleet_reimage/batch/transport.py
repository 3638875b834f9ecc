"""The one-method seam between the Batch client and the network.

``Transport.send(request) -> response`` is all the client needs. The real one is
``aiohttp_transport.AiohttpTransport`` (aiohttp's client, proxies and CA bundle from the
environment); tests may pass any object with ``send`` and ``close``.

A transport answers with a response for *any* HTTP status and raises only when no answer
came back, sorting the failure into the two kinds that matter for a non-idempotent POST:

- ``RequestNotSent``: no byte of the request left (DNS, refused, connect timeout, a TLS
  handshake or proxy tunnel that failed or stalled, no pooled connection in time).
- ``RequestInDoubt``: the request may have reached the server (timeout after writing began,
  connection reset or closed before the full answer, an answer that cannot be read, or an
  answer echoing another request's ``client-request-id``). When unsure, we say "in doubt":
  the caller then reads the node before sending again, which is always safe.

A transport never re-sends a request by itself, never follows a redirect, and refuses a body
over ``MAX_RESPONSE_BYTES`` (``UnexpectedResponse``). A URL it cannot parse is a
``ConfigurationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

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


ECHO_HEADER = "client-request-id"


def foreign_answer(sent: Mapping[str, str], answer: Mapping[str, str]) -> str | None:
    """Why an answer belongs to another request, or None if it may be ours.

    Batch echoes the ``client-request-id`` it was sent (``return-client-request-id: true``).
    An answer echoing a different one is another request's: a late answer left on a
    keep-alive connection, read as the answer to the next request. An answer that echoes
    nothing (a proxy's error page, say) is not refused for it.
    """
    ours = sent.get(ECHO_HEADER)
    echoed = answer.get(ECHO_HEADER)
    if ours is None or echoed is None or echoed == ours or echoed.lower() == ours.lower():
        return None  # (GUIDs compare without regard to case)
    return (
        f"the answer echoed client-request-id {echoed!r}, not ours ({ours!r}): it belongs "
        "to another request, so whether ours was applied is unknown"
    )
