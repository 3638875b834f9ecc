"""The ``Transport`` contract (see ``transport.py``) on an aiohttp ClientSession.

The fallback transport (``FLEET_REIMAGE_TRANSPORT=aiohttp``); ``http11.py`` is the default.
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL

from .errors import RequestInDoubt, RequestNotSent, UnexpectedResponse
from .transport import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse


class AiohttpTransport:
    """aiohttp with a connection pool sized to the run's concurrency."""

    def __init__(
        self,
        *,
        pool_size: int = 64,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Created lazily so the session belongs to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=300, ssl=self._ssl
        )
        # Content-Type is never added behind our back: aiohttp would put
        # "application/octet-stream" on a body-less POST after it was signed, and the
        # signature (which covers Content-Type) would no longer match.
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent", "Content-Type"),
        )

    async def send(self, request: HttpRequest) -> HttpResponse:
        session = self._session or self._open_session()
        self._session = session
        timeout = aiohttp.ClientTimeout(
            total=request.timeout, sock_connect=min(self._connect_timeout, request.timeout)
        )
        try:
            async with session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await _read_capped(response)
                return HttpResponse(response.status, response.headers, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise RequestNotSent(f"could not connect: {_describe(exc)}") from None
        except TimeoutError as exc:
            raise RequestInDoubt(f"no answer within {request.timeout:g}s{_suffix(exc)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RequestInDoubt(f"connection lost: {_describe(exc)}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, or UnexpectedResponse once it passes ``MAX_RESPONSE_BYTES``.

    ``StreamReader.read(n)`` returns what is buffered (often one chunk), not n bytes, so the
    body is gathered chunk by chunk until EOF.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UnexpectedResponse(
                response.status,
                message=f"response body larger than "
                f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; refused",
                request_id=response.headers.get("request-id"),
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _suffix(exc: BaseException) -> str:
    text = str(exc).strip()
    return f" ({text})" if text else ""
