"""Webhook notifications: a ``RunObserver`` sink that POSTs the run's milestones as JSON.

Off the hot path: ``event`` (called by the run, synchronously) only builds the body
(``notifybody.py``) and puts it in a bounded queue; a background sender (``run``) posts each
to every webhook, one at a time, with a short timeout and a few retries. A notification never
blocks or fails the run: a full queue drops the newest, a webhook that refuses, fails or
never answers is given up after its retries; every loss is logged and counted
(``summary``), and the run's summary shows the counts. At the end, ``close`` gives what is
still queued a bounded time (``FLUSH_LIMIT``) and drops the rest.

A webhook URL is a secret (its path is the credential): it is never logged, printed or
journaled; messages name a webhook by its position and host only (``Webhook.label``). It goes
through the proxy the environment names, with the CA bundle it names, as Batch requests do
(``batch/network.py``); plain http is accepted only to this machine's loopback.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import structlog

from fleet_reimage.batch.network import Proxy, is_loopback_host, proxy_for, tls_context
from fleet_reimage.engine.notifybody import notification
from fleet_reimage.engine.wakeup import Wakeup
from fleet_reimage.errors import RefusedError

log = structlog.get_logger("fleet_reimage.notify")

QUEUE_LIMIT = 200  # notifications waiting; more are dropped (and counted)
TIMEOUT = 5.0  # seconds for one POST, connection included
ATTEMPTS = 3  # per notification and webhook
BACKOFF = 0.5  # seconds before the second attempt, doubled after
FLUSH_LIMIT = 10.0  # seconds the end of a run gives the queue


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str = field(repr=False)
    label: str  # "webhook 2 (hooks.slack.com)": what may be shown


def webhooks(urls: Sequence[str]) -> list[Webhook]:
    """Check the URLs (RefusedError, naming none of them whole, when one is wrong)."""
    hooks = []
    for index, url in enumerate(urls, 1):
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            host, parts = None, None
        label = f"webhook {index}" + (f" ({host})" if host else "")
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise RefusedError(f"{label}: not an http(s) URL")
        if parts.scheme == "http" and not is_loopback_host(host):
            raise RefusedError(f"{label}: plain http is only for this machine; use https")
        hooks.append(Webhook(url, label))
    return hooks


def urls_from_environment(names: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The plan's ``notify`` URLs from their variables (RefusedError if one is not set)."""
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise RefusedError(
            f"notify: environment variable {', '.join(missing)} is not set (or empty); "
            "export the webhook URL in it"
        )
    return [environ[name] for name in names]


class Notifier:
    def __init__(
        self,
        hooks: Sequence[Webhook],
        *,
        plan: str,
        timeout: float | None = None,
        attempts: int = ATTEMPTS,
        backoff: float | None = None,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        """Unset, ``timeout`` and ``backoff`` are the module's ``TIMEOUT`` and ``BACKOFF``."""
        self.hooks = list(hooks)
        self.plan = plan
        self.timeout = TIMEOUT if timeout is None else timeout
        self.attempts = attempts
        self.backoff = BACKOFF if backoff is None else backoff
        self.queue_limit = queue_limit
        self.run_id: str | None = None
        self.sent = self.failed = self.dropped = 0
        self.broken = False  # the sender failed: nothing more is queued
        self._queue: deque[dict[str, Any]] = deque()
        self._more = Wakeup()
        self._busy = False
        self._idle: Wakeup | None = None  # set once the queue is empty (``close`` waits)

    # --- the run's side: cheap, never blocks ---

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "run_started":
            self.run_id = str(fields.get("run_id"))
        body = notification(kind, fields, run_id=self.run_id, plan=self.plan, at=time.time())
        if body is None:
            return
        if self.broken or len(self._queue) >= self.queue_limit:
            self.dropped += len(self.hooks)
            log.warning("notification dropped: the queue is full", kind=kind)
            return
        self._queue.append(body)
        self._more.set()

    def summary(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}

    # --- the sender ---

    async def run(self) -> None:
        """Send what is queued, in order, until cancelled (``close`` cancels it). A fault of
        the sender's own is logged, never raised: the run goes on without notifications."""
        try:
            await self._run()
        except Exception as exc:  # a notification must never fail the run
            log.error("notifications stopped", error=type(exc).__name__)  # no text: a URL
            self.broken = True
            self._busy = False
            self.dropped += len(self._queue) * len(self.hooks)
            self._queue.clear()
            if self._idle is not None:
                self._idle.set()

    async def _run(self) -> None:
        routes = [await _route(hook) for hook in self.hooks]
        async with _session() as session:
            while True:
                while self._queue:
                    self._busy = True
                    body = self._queue.popleft()
                    data = json.dumps(body, default=str).encode()
                    for hook, route in zip(self.hooks, routes, strict=True):
                        await self._send(session, hook, route, data, str(body["event"]))
                    self._busy = False
                if self._idle is not None:
                    self._idle.set()
                self._more = Wakeup()
                if not self._queue:
                    await self._more.wait()

    async def close(self, scope: anyio.CancelScope, limit: float | None = None) -> None:
        """Give the queue up to ``limit`` seconds (``FLUSH_LIMIT``), then stop the sender
        (``scope``: its)."""
        if self._queue or self._busy:
            self._idle = Wakeup()
            with anyio.move_on_after(FLUSH_LIMIT if limit is None else limit):
                await self._idle.wait()
        left = len(self._queue) + (1 if self._busy else 0)
        if left:
            self.dropped += left * len(self.hooks)
            log.warning("notifications not sent by the end of the run", count=left)
        scope.cancel()

    async def _send(
        self, session: aiohttp.ClientSession, hook: Webhook, route: _Route, data: bytes, kind: str
    ) -> None:
        error = ""
        for attempt in range(self.attempts):
            if attempt:
                await anyio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with anyio.fail_after(self.timeout):
                    async with session.post(hook.url, data=data, headers=_HEADERS,
                                            proxy=route.proxy, proxy_headers=route.proxy_headers,
                                            ssl=route.ssl) as answer:  # fmt: skip
                        await answer.read()
                        if answer.status < 300:
                            self.sent += 1
                            return
                        error = f"HTTP {answer.status}"
                        if 400 <= answer.status < 500 and answer.status != 429:
                            break  # refused: the same body will be refused again
            except TimeoutError:
                error = f"no answer within {self.timeout:g}s"
            except (aiohttp.ClientError, OSError) as exc:
                error = type(exc).__name__  # its text may quote the URL
        self.failed += 1
        log.warning("notification failed", webhook=hook.label, kind=kind, error=error)


_HEADERS = {"Content-Type": "application/json", "User-Agent": "fleet-reimage"}


@dataclass(frozen=True, slots=True)
class _Route:
    proxy: Any
    proxy_headers: dict[str, str] | None
    ssl: Any


async def _route(hook: Webhook) -> _Route:
    """The proxy and TLS settings for a webhook, read from the environment off the loop."""
    proxy: Proxy | None = None
    context: ssl.SSLContext | bool = True
    try:
        proxy = await anyio.to_thread.run_sync(proxy_for, hook.url)
        if hook.url.lower().startswith("https:"):
            context = await anyio.to_thread.run_sync(tls_context)
    except Exception as exc:  # a notification must never fail the run: the send fails
        # instead (and is counted).
        log.warning("notification network settings not usable", webhook=hook.label,
                    error=type(exc).__name__)  # fmt: skip
    headers = None if proxy is None or proxy.headers is None else dict(proxy.headers)
    return _Route(None if proxy is None else proxy.url, headers, context)


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # the route is worked out once per webhook, in _route
        connector=aiohttp.TCPConnector(limit=4),
    )
