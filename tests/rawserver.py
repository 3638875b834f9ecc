"""A raw HTTP/1.1 server on 127.0.0.1 for transport tests: it records the bytes each request
arrives as and answers exactly the bytes a test scripts (malformed, cut short, withheld...)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class Seen:
    """One request as it arrived: request line parts, headers in order, body."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
# A handler answers one request by writing to the stream; it returns whether to read another
# request on the connection (False closes it).
Handler = Callable[[Seen, Reader, Writer], Awaitable[bool]]


@dataclass
class RawServer:
    url: str
    seen: list[Seen] = field(default_factory=list)
    accepted: int = 0
    open_now: int = 0
    max_open: int = 0
    got_request: asyncio.Event = field(default_factory=asyncio.Event)


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An answer with a Content-Length (unless ``headers`` already frames the body)."""
    fields = dict(headers or {})
    if "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    head = f"HTTP/1.1 {status} Whatever\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def replies(make: Callable[[Seen], bytes], keep: bool = True) -> Handler:
    """A handler writing ``make(request)`` as the answer (then closing unless ``keep``)."""

    async def handler(seen: Seen, reader: Reader, writer: Writer) -> bool:
        writer.write(make(seen))
        return keep

    return handler


ok = replies(lambda seen: answer(200, b"ok:" + seen.target.encode()))


async def wait_for_eof(reader: Reader, limit: float = 3.0) -> None:
    """Hold the connection until the client closes it (bounded, so the server always ends)."""
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionError):
        pass


@asynccontextmanager
async def raw_server(
    handler: Handler = ok, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    state = RawServer("")

    async def serve(reader: Reader, writer: Writer) -> None:
        state.accepted += 1
        state.open_now += 1
        state.max_open = max(state.max_open, state.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = request_line.split(" ")
                headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines)]
                seen = Seen(method, target, headers, b"")
                length = seen.values("Content-Length")
                seen.body = await reader.readexactly(int(length[0])) if length else b""
                state.seen.append(seen)
                state.got_request.set()
                keep_going = await handler(seen, reader, writer)
                await writer.drain()
                if not keep_going:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            state.open_now -= 1
            writer.close()

    async with stream_server(serve, tls=tls) as port:
        state.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        yield state


@asynccontextmanager
async def stream_server(
    serve: Callable[[Reader, Writer], Awaitable[None]], *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """An asyncio stream server on 127.0.0.1 (its port), each connection served by a task;
    at exit the server closes and every task still serving is cancelled."""
    tasks: set[asyncio.Task[None]] = set()

    def track(reader: Reader, writer: Writer) -> None:
        task = asyncio.ensure_future(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(track, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
