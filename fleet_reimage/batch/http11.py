"""A lean HTTP/1.1 keep-alive transport: the default, because the reimage POST is the hot path.

Per request, aiohttp's ``ClientSession.request`` spends more CPU than everything else
fleet-reimage does for a node (see ``bench/RESULTS.md``): cookie jars, tracing hooks, redirect
handling, multidict building and a stream reader, none of which a Batch call needs. This
transport writes the request in one piece to a pooled asyncio connection and parses the
answer with ``httptools`` (the C parser, llhttp, that uvicorn uses), so chunked bodies,
keep-alive rules and malformed answers are handled by a well-tested parser, not by us.

It keeps the ``Transport`` contract of ``transport.py`` exactly:

- ``RequestNotSent``: the connection could not be made (refused, DNS, connect timeout, TLS).
  A pooled connection that the server has closed, or that sat idle for ``IDLE_SECONDS``, is
  never written to.
- ``RequestInDoubt``: the request was written (or partly written) and no complete answer came:
  a timeout, a reset, the peer closing, an answer the parser cannot read.
- ``UnexpectedResponse``: a body larger than ``MAX_RESPONSE_BYTES`` (the connection is dropped).

Only what Batch needs: no proxies, no redirects (3xx answers are returned as they are), no
cookies, no 100-continue. ``gzip``/``deflate`` answers are decoded (we ask for gzip on GETs,
where list pages are large).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import zlib
from collections import deque
from dataclasses import dataclass

import httptools

from .errors import RequestInDoubt, RequestNotSent, UnexpectedResponse
from .transport import MAX_RESPONSE_BYTES, HttpRequest, HttpResponse

IDLE_SECONDS = 30.0  # a pooled connection idle longer is closed, not reused: servers drop them


class ResponseHeaders(dict[str, str]):
    """Answer headers with case-insensitive lookups (keys are stored lower-case)."""

    __slots__ = ()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str  # without brackets, for connecting
    port: int
    host_header: str  # as it goes in the Host header


class _Deadlines:
    """Request timeouts with one timer per transport, not one per request.

    A timer per request costs a heap push and a cancel, and fills the loop's heap with
    cancelled entries; the reimage POST is the hot path. Here a request only records its
    deadline; one timer waits for the earliest, and requests with the same timeout join
    in deadline order, so in a steady run the timer is re-armed about once per timeout.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[_Connection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._next = math.inf

    def watch(self, connection: _Connection) -> None:
        self._watched.add(connection)
        if connection.deadline < self._next:
            self._arm(connection.deadline)

    def forget(self, connection: _Connection) -> None:
        self._watched.discard(connection)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._next = None, math.inf

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._next = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer, self._next = None, math.inf
        now = self._loop.time()
        late = [c for c in self._watched if c.deadline <= now]
        for connection in late:
            connection.time_out()  # forgets itself
        if self._watched:
            self._arm(min(c.deadline for c in self._watched))


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time (no pipelining).

    The connection is also the parser's callback object: ``on_*`` methods collect the answer
    and ``on_message_complete`` hands it to the waiting request. One parser serves every
    answer on the connection (llhttp resets itself after each message).
    """

    def __init__(
        self, origin: _Origin, loop: asyncio.AbstractEventLoop, deadlines: _Deadlines
    ) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self.deadline = math.inf  # loop time by which the answer must be complete
        self._timeout = 0.0
        self._loop = loop
        self._deadlines = deadlines
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._start_answer()

    def _start_answer(self) -> None:
        self._status = 0
        self._keep_alive = False
        self._headers = ResponseHeaders()
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False

    # --- the request ---

    def send(self, payload: bytes, timeout: float) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None and self._waiter is None
        self._start_answer()
        waiter = self._waiter = self._loop.create_future()
        self._timeout = timeout
        self.deadline = self._loop.time() + timeout
        self._deadlines.watch(self)
        self.transport.write(payload)
        return waiter

    def usable(self, now: float) -> bool:
        transport = self.transport
        return (
            not self.closed
            and self._waiter is None
            and transport is not None
            and not transport.is_closing()
            and now - self.idle_since < IDLE_SECONDS
        )

    def time_out(self) -> None:
        self._fail(RequestInDoubt(f"no answer within {self._timeout:g}s"))

    def abort(self) -> None:
        self.closed = True
        self._deadlines.forget(self)
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(RequestInDoubt(f"unreadable answer: {exc}"))

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self.abort()  # a second answer in one read: nobody asked for it
            self._start_answer()  # parsed into fresh state, not the answer handed out

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = dict.get(self._headers, key)
        dict.__setitem__(self._headers, key, text if previous is None else f"{previous}, {text}")

    def on_headers_complete(self) -> None:
        # Read here: once the message is complete, llhttp has already reset these.
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size <= MAX_RESPONSE_BYTES:
            self._chunks.append(body)
        elif self._waiter is not None:  # once: the first chunk may already be over the limit
            self._chunks = []
            self._fail(self._too_large())

    def _too_large(self) -> UnexpectedResponse:
        return UnexpectedResponse(
            self._status,
            message=f"response body larger than {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; refused",
            request_id=self._headers.get("request-id"),
        )

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # may be `closed`: see _lost, close-delimited bodies
            return
        if self._status < 200:  # an interim answer (100 Continue, 103): the final one follows
            self._start_answer()
            return
        body = b"".join(self._chunks)
        encoding = self._headers.get("content-encoding")
        if encoding and body:
            try:
                body = _decode(body, encoding)
            except (zlib.error, ValueError) as exc:
                self._fail(RequestInDoubt(f"could not decode a {encoding} answer: {exc}"))
                return
            if len(body) > MAX_RESPONSE_BYTES:
                self._fail(self._too_large())
                return
        self._deadlines.forget(self)
        if not self._keep_alive:
            self.abort()
        self._waiter = None
        self.idle_since = time.monotonic()
        if not waiter.done():
            waiter.set_result(HttpResponse(self._status, self._headers, body))

    # --- failures ---

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and _delimited_by_close(self._headers):
            self.on_message_complete()  # a body that ends when the connection does
            return
        reason = f": {type(exc).__name__}: {exc}" if exc else ""
        self._fail(RequestInDoubt(f"connection lost before the full answer{reason}"))

    def _fail(self, error: Exception) -> None:
        self.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


def _delimited_by_close(headers: ResponseHeaders) -> bool:
    return "content-length" not in headers and "chunked" not in (
        headers.get("transfer-encoding") or ""
    )


def _decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ValueError(f"unsupported content-encoding {encoding!r}")
    # wbits 47 accepts both gzip and zlib framing; a cap keeps a zip bomb out of memory.
    # The caller refuses a result over MAX_RESPONSE_BYTES as too large.
    decoder = zlib.decompressobj(47)
    data = decoder.decompress(body, MAX_RESPONSE_BYTES + 1)
    if len(data) <= MAX_RESPONSE_BYTES and not decoder.eof:
        raise ValueError("the compressed body is cut short")
    return data


class _Pool:
    """Connections to one origin: at most ``limit`` open, idle ones reused newest first."""

    def __init__(self, origin: _Origin, limit: int) -> None:
        self.origin = origin
        self.limit = limit
        self.idle: list[_Connection] = []
        self.open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if connection.usable(now):
                return connection
            connection.abort()
            self.open -= 1
        return None

    def give_back(self, connection: _Connection) -> None:
        if connection.closed:
            self.open -= 1
        else:
            self.idle.append(connection)
        self._wake_one()

    def connect_failed(self) -> None:
        self.open -= 1
        self._wake_one()

    async def wait_turn(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # our turn came as we were cancelled: pass it on
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Http11Transport:
    """HTTP/1.1 with a keep-alive pool of at most ``pool_size`` connections per origin."""

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
        self._pools: dict[str, _Pool] = {}
        self._deadlines: _Deadlines | None = None

    async def send(self, request: HttpRequest) -> HttpResponse:
        pool, target = self._route(request.url)
        payload = _encode(request, target, pool.origin.host_header)
        connection = await self._connection(pool, request.timeout)
        try:
            return await connection.send(payload, request.timeout)
        except BaseException:
            connection.abort()  # failed or cancelled mid-answer: never reused
            raise
        finally:
            pool.give_back(connection)

    async def close(self) -> None:
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.abort()
            pool.idle.clear()
        self._pools.clear()
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None

    def _route(self, url: str) -> tuple[_Pool, str]:
        path_start = url.find("/", url.find("://") + 3)
        origin_text, target = (url, "/") if path_start < 0 else (url[:path_start], url[path_start:])
        pool = self._pools.get(origin_text)
        if pool is None:
            pool = _Pool(_parse_origin(origin_text), self._pool_size)
            self._pools[origin_text] = pool
        return pool, target

    async def _connection(self, pool: _Pool, timeout: float) -> _Connection:
        while True:
            connection = pool.take_idle()
            if connection is not None:
                return connection
            if pool.open < pool.limit:
                pool.open += 1
                try:
                    return await self._connect(pool.origin, min(timeout, self._connect_timeout))
                except BaseException:
                    pool.connect_failed()
                    raise
            await pool.wait_turn()

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._deadlines is None:
            self._deadlines = _Deadlines(loop)
        deadlines = self._deadlines
        context = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin, loop, deadlines),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise RequestNotSent(f"could not connect within {timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            raise RequestNotSent(f"could not connect: {type(exc).__name__}: {exc}") from None
        return protocol

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # made once: loading the CA bundle takes ~20 ms
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


def _parse_origin(text: str) -> _Origin:
    scheme, _, netloc = text.partition("://")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {scheme!r}")
    host, port = netloc, 443 if scheme == "https" else 80
    if netloc.startswith("["):
        closing = netloc.index("]")
        host = netloc[1:closing]
        if netloc[closing + 1 :].startswith(":"):
            port = int(netloc[closing + 2 :])
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
        port = int(port_text)
    return _Origin(scheme, host, port, netloc)


def _encode(request: HttpRequest, target: str, host_header: str) -> bytes:
    """The request's bytes, written in one piece (headers exactly as signed)."""
    lines = [f"{request.method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"]
    for name, value in request.headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    if request.method == "GET":
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    elif "Content-Length" not in request.headers:
        lines.append(f"Content-Length: {len(request.body or b'')}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8")
    return head + request.body if request.body else head
