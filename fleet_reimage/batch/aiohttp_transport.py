"""The transport (see ``transport.py``): aiohttp's client, held to the contract a reimage needs.

aiohttp parses the answers and refuses what a server should never send: more than 128
header fields, a header line or field over 8 KiB. On top of it, this module adds:

- **Never sent or in doubt, by what happened.** The moment aiohttp starts writing a request
  is marked (``_MarkedRequest``); a failure before it (DNS, refused, connect timeout, a TLS
  handshake or proxy tunnel that fails or stalls, no pool slot within the timeout) is
  ``RequestNotSent``, a failure after it is ``RequestInDoubt``. The exception's class is not
  trusted for this: aiohttp reports a request timeout that struck during the handshake as a
  plain ``TimeoutError``.
- **No re-send.** aiohttp re-sends an idempotent request once when a pooled connection turns
  out to be closed; that is switched off: only the caller's retry policy sends again.
- **No redirects** (a 3xx comes back as it is), **no cookies**, and no ``Content-Type``
  added behind the signature's back (the Shared Key signature covers it).
- **Bodies capped** at ``MAX_RESPONSE_BYTES`` (decoded size; the connection is dropped).
- **An answer for another request is refused**: one that echoes a ``client-request-id``
  other than the one sent (a late answer left on a keep-alive connection) is in doubt, and
  its connection is dropped.
- **Proxy and CA bundle from the environment** (``network.py``), resolved once per endpoint.
- **Malformed URLs** are a ``ConfigurationError``, never a traceback.
"""

from __future__ import annotations

import asyncio
import ssl
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from .errors import (
    AuthFailed,
    BatchError,
    ConfigurationError,
    RequestInDoubt,
    RequestNotSent,
    UnexpectedResponse,
)
from .network import Proxy, proxy_for, redact_credentials, tls_context
from .transport import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse, foreign_answer


class _Attempt:
    """One request through aiohttp: has writing it begun?"""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("fleet_reimage_http_attempt", default=None)


class _MarkedRequest(aiohttp.ClientRequest):
    """aiohttp's request, marking its attempt as written when sending starts.

    ``send`` is called once the connection (TCP, TLS, proxy tunnel) is ready; from its first
    line on, bytes may leave.
    """

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.written = True
        return await super().send(conn)


@dataclass(frozen=True, slots=True)
class _Route:
    """How requests reach one origin (scheme://host:port)."""

    proxy: URL | None
    proxy_headers: dict[str, str] | None = field(repr=False)  # Proxy-Authorization
    ssl: ssl.SSLContext | bool = True


class AiohttpTransport:
    """aiohttp with a keep-alive pool of at most ``pool_size`` connections per origin."""

    def __init__(
        self,
        *,
        pool_size: int = 64,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._routes: dict[str, _Route] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._proxies_used: dict[str, Proxy] = {}
        self._routing = asyncio.Lock()

    @property
    def proxies(self) -> dict[str, Proxy]:
        """The proxy each origin used so far goes through (origins reached directly left out)."""
        return dict(self._proxies_used)

    async def send(self, request: HttpRequest) -> HttpResponse:
        url = request.url
        route = self._routes.get(_origin_key(url)) or await self._route(url)
        try:
            target = URL(url, encoded=True)
        except (ValueError, TypeError) as exc:
            raise _malformed(url, exc) from None
        timeout = self._timeouts.get(request.timeout) or self._timeout(request.timeout)
        session = self._session or self._open_session()
        attempt = _Attempt()
        _ATTEMPT.set(attempt)  # read by _MarkedRequest.send, in this task
        try:
            async with session.request(
                request.method,
                target,
                headers=request.headers,
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
                proxy=route.proxy,
                proxy_headers=route.proxy_headers,
                ssl=route.ssl,
                skip_auto_headers=_skip_auto_headers(request),
            ) as response:
                foreign = foreign_answer(request.headers, response.headers)
                if foreign is not None:
                    response.close()  # the connection is out of step: never reused
                    raise RequestInDoubt(foreign)
                body = await _read_capped(response)
                return HttpResponse(response.status, response.headers, body)
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise _malformed(url, exc) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _failure(exc, attempt.written, request.timeout) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Created on first use, so the session belongs to the running event loop.
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=300
        )
        session = aiohttp.ClientSession(
            connector=connector,
            request_class=_MarkedRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # read once per origin in _route, not per request
        )
        # RFC 9112 9.3.1 lets a client re-send an idempotent request whose connection
        # closed under it; aiohttp does, once. Only the caller's retry policy re-sends.
        session._retry_connection = False
        self._session = session
        return session

    async def _route(self, url: str) -> _Route:
        """The route to ``url``'s origin, worked out once (reads the environment)."""
        key = _origin_key(url)
        async with self._routing:  # the first requests to an origin arrive all at once
            route = self._routes.get(key)
            if route is None:
                route = await self._new_route(url)
                self._routes[key] = route
        return route

    async def _new_route(self, url: str) -> _Route:
        scheme = url.partition("://")[0].lower()
        try:
            proxy = await asyncio.to_thread(proxy_for, url)
        except ValueError as exc:
            raise _malformed(url, exc) from None
        context: ssl.SSLContext | bool = True
        if scheme == "https":
            if self._ssl_context is None:  # made once: loading a CA bundle takes ~20 ms
                self._ssl_context = await asyncio.to_thread(tls_context)
            context = self._ssl_context
        if proxy is None:
            return _Route(None, None, context)
        self._proxies_used[_origin_key(url)] = proxy
        return _Route(proxy.url, None if proxy.headers is None else dict(proxy.headers), context)

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = aiohttp.ClientTimeout(
            total=seconds, sock_connect=min(self._connect_timeout, seconds)
        )
        self._timeouts[seconds] = timeout
        return timeout


_NO_CONTENT_TYPE = ("Content-Type",)


def _skip_auto_headers(request: HttpRequest) -> tuple[str, ...] | None:
    """Headers aiohttp must not add to this request.

    aiohttp would put "Content-Type: application/octet-stream" on a POST without one, after
    the request was signed (the signature covers Content-Type). Asked only for those: a
    skip list costs aiohttp two header copies per request.
    """
    if request.method == "GET" or "Content-Type" in request.headers:
        return None
    return _NO_CONTENT_TYPE


def _origin_key(url: str) -> str:
    """``scheme://authority`` of a URL with a path: a cache key (``_route`` parses the URL)."""
    end = url.find("/", url.find("://") + 3)
    return url if end < 0 else url[:end]


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The whole (decoded) body, or UnexpectedResponse once it passes ``MAX_RESPONSE_BYTES``."""
    length = response.content_length
    if length == 0:
        return b""
    encoded = "Content-Encoding" in response.headers
    if length is not None and not encoded:
        if length > MAX_RESPONSE_BYTES:
            response.close()
            raise _too_large(response)
        return await response.read()  # one piece: the size is known and allowed
    # Chunked, close-delimited or compressed: gathered until EOF, within the limit.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            raise _too_large(response)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(response: aiohttp.ClientResponse) -> UnexpectedResponse:
    return UnexpectedResponse(
        response.status,
        message=f"response body larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; refused",
        request_id=response.headers.get("request-id"),
    )


def _failure(exc: BaseException, written: bool, timeout: float) -> BatchError:
    """What a failure means: before writing began it was never sent; after, it is in doubt."""
    if isinstance(exc, aiohttp.ClientHttpProxyError) and exc.status == 407:
        # Every request would meet the same refusal: a run-wide problem, as a 401 is.
        return AuthFailed(
            407,
            code="ProxyAuthenticationRequired",
            message="the proxy refused our credentials (the user and password in "
            "$HTTPS_PROXY / $HTTP_PROXY, or ~/.netrc); the request was not sent",
        )
    if not written:
        if isinstance(exc, TimeoutError):
            return RequestNotSent(f"could not connect within {timeout:g}s{_suffix(exc)}")
        return RequestNotSent(f"could not connect: {_describe(exc)}")
    if isinstance(exc, TimeoutError):
        return RequestInDoubt(f"no answer within {timeout:g}s{_suffix(exc)}")
    return RequestInDoubt(f"connection lost: {_describe(exc)}")


def _malformed(url: str, exc: BaseException) -> ConfigurationError:
    return ConfigurationError(f"malformed URL {redact_credentials(url)!r}: {_text(exc)}")


def _text(exc: BaseException) -> str:
    # Messages may quote a proxy's URL: never with its credentials.
    return redact_credentials(str(exc).strip())


def _describe(exc: BaseException) -> str:
    text = _text(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _suffix(exc: BaseException) -> str:
    text = _text(exc)
    return f" ({text})" if text else ""
