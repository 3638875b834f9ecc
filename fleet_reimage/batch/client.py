"""Azure Batch data-plane client: the handful of calls fleet-reimage makes.

Every request carries ``client-request-id`` (chosen by the caller for mutating calls, so the
journal can record it before the request leaves), ``return-client-request-id: true`` and
``ocp-date``. A 401/403 makes the credential refresh once and the request go again; any
other failure of a mutating call is raised for the caller to decide (see ``retry.py``).
Reads (list/get) are idempotent and retried here with the same pure decisions.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit

import anyio
import structlog

from .. import __version__
from .auth import Credential
from .errors import (
    AuthFailed,
    BatchError,
    ConfigurationError,
    RequestInDoubt,
    UnexpectedResponse,
)
from .explain import retry_message
from .models import NodeInfo, PoolInfo
from .network import is_loopback_host
from .responses import error_from_response, json_object
from .retry import GiveUp, Reconcile, RetryCounters, RetryPolicy, decide_retry
from .transport import HttpRequest, HttpResponse, Transport, foreign_answer
from .versions import DEFAULT_API_VERSION
from .versions import api_version as version_of

API_VERSION = DEFAULT_API_VERSION
JSON_CONTENT_TYPE = "application/json; odata=minimalmetadata"
MAX_SERVER_TIMEOUT = 30  # the service treats any larger `timeout` as 30 seconds
NODE_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
# A listing stops past this many pages. Batch pages hold up to 1000 items and a pool has at
# most a few thousand pages even at its largest; a server handing out next links without end
# (67,000 GETs in 20 s, found in review) must not be followed forever.
MAX_PAGES = 10_000
MAX_REMOVE = 100  # node ids per removenodes call (the service's limit)
MIN_RESIZE_TIMEOUT = 300  # seconds: the service refuses a shorter resizeTimeout
log = structlog.get_logger("fleet_reimage.client")
# As Azure tooling sends it, for the service's diagnostics: product, runtime, platform.
USER_AGENT = (
    f"fleet-reimage/{__version__} python/{sys.version_info.major}.{sys.version_info.minor} "
    f"({platform.platform(terse=True)})"
)


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class Accepted(NamedTuple):
    """A mutating call's success: 202 for a reimage, reboot, removal or resize; 200 for a
    scheduling change or a pool patch."""

    status: int
    request_id: str | None
    client_request_id: str  # what we sent
    echoed_client_request_id: str | None  # what the server echoed (None if it did not)
    sent_at: float  # wall clock, just before the request was handed to the transport
    e_tag: str | None = None  # the resource's new ETag, when the answer carries one


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    request_id: str | None
    next_link: str | None


def new_client_request_id() -> str:
    """A random (version 4) UUID as text, like ``str(uuid.uuid4())`` at under half the cost.

    One is made per attempt, on the hot path.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _encode_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in params.items())


class _DateHeader:
    """RFC 1123 ``ocp-date``, formatted at most once a second (it is on the hot path)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second, self._text = second, formatdate(second, usegmt=True)
        return self._text


class BatchClient:
    """One Batch account. Share one transport (connection pool) across the run."""

    def __init__(
        self,
        endpoint: str,
        credential: Credential,
        transport: Transport,
        *,
        api_version: str = API_VERSION,
        request_timeout: float = 30.0,
        read_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Any] = anyio.sleep,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigurationError(f"endpoint {endpoint!r} is not an http(s) URL with a host")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ConfigurationError(
                f"refusing plain http to {parts.hostname}: credentials would travel unencrypted "
                "(http is allowed only for loopback addresses such as the local emulator)"
            )
        self.endpoint = endpoint.rstrip("/")
        self._origin = (parts.scheme, parts.netloc.lower())
        self._credential = credential
        self._transport = transport
        self.api_version = api_version
        self._timeout_parameter = version_of(api_version).timeout_parameter
        self.request_timeout = request_timeout
        self._read_policy = read_policy or RetryPolicy(
            max_attempts=5, initial_backoff=0.5, max_backoff=10.0
        )
        self._sleep = sleep
        self._date = _DateHeader()
        self._random = random.Random()
        self._action_queries: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"BatchClient(endpoint={self.endpoint!r})"

    # --- mutating calls: one attempt each; the caller owns retries and the journal ---

    async def reimage_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        option: str | None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        body = None if option is None else {"nodeReimageOption": option}
        return await self._node_action(
            "reimage", pool_id, node_id, body, client_request_id, timeout
        )

    async def reboot_node(
        self,
        pool_id: str,
        node_id: str,
        *,
        option: str | None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        body = None if option is None else {"nodeRebootOption": option}
        return await self._node_action("reboot", pool_id, node_id, body, client_request_id, timeout)

    async def _node_action(
        self,
        action: str,
        pool_id: str,
        node_id: str,
        body: dict[str, str] | None,
        client_request_id: str,
        timeout: float | None,
    ) -> Accepted:
        if body is not None and next(iter(body.values())) not in NODE_OPTIONS:
            raise ValueError(f"unknown node option {body!r}")
        path = f"/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}/{action}"
        payload = None if body is None else _json_bytes(body)
        return await self._mutate("POST", path, payload, client_request_id, timeout, 202, action)

    async def disable_node_scheduling(
        self,
        pool_id: str,
        node_id: str,
        *,
        option: str | None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        """No new task lands on the node; ``option`` says what happens to running ones
        (``requeue``, ``terminate``, ``taskcompletion``). 200 when done."""
        body = None if option is None else {"nodeDisableSchedulingOption": option}
        if option is not None and option not in NODE_OPTIONS[:3]:
            raise ValueError(f"unknown disable-scheduling option {option!r}")
        path = f"/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}"
        payload = None if body is None else _json_bytes(body)
        return await self._mutate(
            "POST",
            f"{path}/disablescheduling",
            payload,
            client_request_id,
            timeout,
            200,
            "disablescheduling",
        )

    async def enable_node_scheduling(
        self, pool_id: str, node_id: str, *, client_request_id: str, timeout: float | None = None
    ) -> Accepted:
        path = f"/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}"
        return await self._mutate(
            "POST",
            f"{path}/enablescheduling",
            None,
            client_request_id,
            timeout,
            200,
            "enablescheduling",
        )

    async def remove_nodes(
        self,
        pool_id: str,
        node_ids: Sequence[str],
        *,
        option: str | None = None,
        resize_timeout: float | None = None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        """Remove up to ``MAX_REMOVE`` nodes; the pool's target drops by as many (202)."""
        if not 1 <= len(node_ids) <= MAX_REMOVE:
            raise ValueError(f"removenodes takes 1 to {MAX_REMOVE} node ids, not {len(node_ids)}")
        body: dict[str, Any] = {"nodeList": list(node_ids)}
        _add_resize_options(body, option, resize_timeout)
        path = f"/pools/{quote(pool_id, safe='')}/removenodes"
        return await self._mutate(
            "POST", path, _json(body), client_request_id, timeout, 202, "removenodes"
        )

    async def resize_pool(
        self,
        pool_id: str,
        *,
        target_dedicated: int | None = None,
        target_low_priority: int | None = None,
        option: str | None = None,
        resize_timeout: float | None = None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        """Resize to the targets given (a target left out stays as it is) (202)."""
        body: dict[str, Any] = {}
        if target_dedicated is not None:
            body["targetDedicatedNodes"] = target_dedicated
        if target_low_priority is not None:
            body["targetLowPriorityNodes"] = target_low_priority
        _add_resize_options(body, option, resize_timeout)
        path = f"/pools/{quote(pool_id, safe='')}/resize"
        return await self._mutate(
            "POST", path, _json(body), client_request_id, timeout, 202, "resize"
        )

    async def stop_pool_resize(
        self, pool_id: str, *, client_request_id: str, timeout: float | None = None
    ) -> Accepted:
        path = f"/pools/{quote(pool_id, safe='')}/stopresize"
        return await self._mutate("POST", path, None, client_request_id, timeout, 202, "stopresize")

    async def patch_pool_metadata(
        self,
        pool_id: str,
        metadata: Sequence[tuple[str, str]],
        *,
        if_match: str | None,
        client_request_id: str,
        timeout: float | None = None,
    ) -> Accepted:
        """Replace the pool's whole metadata list (200). With ``if_match`` (the pool's ETag)
        only if nobody changed the pool since: ``PreconditionFailed`` (412) otherwise."""
        body = {"metadata": [{"name": name, "value": value} for name, value in metadata]}
        path = f"/pools/{quote(pool_id, safe='')}"
        headers = {"If-Match": if_match} if if_match is not None else None
        return await self._mutate(
            "PATCH", path, _json(body), client_request_id, timeout, 200, "pool patch", headers
        )

    async def _mutate(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        client_request_id: str,
        timeout: float | None,
        expect: int,
        what: str,
        headers: Mapping[str, str] | None = None,
    ) -> Accepted:
        """One attempt of a mutating call that answers ``expect`` on success."""
        seconds = timeout if timeout is not None else self.request_timeout
        url = f"{self.endpoint}{path}?{self._action_query(seconds)}"
        sent_at = time.time()
        response = await self._send(
            method, url, client_request_id, payload, seconds, sent_at, headers
        )
        if response.status != expect:
            if response.status >= 300:
                raise error_from_response(response, client_request_id, time.time())
            raise UnexpectedResponse(
                response.status,
                message=f"expected {expect} for {what}, got "
                f"{response.status}; the request may have been applied",
                request_id=response.headers.get("request-id"),
                client_request_id=client_request_id,
            )
        return Accepted(
            response.status,
            response.headers.get("request-id"),
            client_request_id,
            response.headers.get("client-request-id"),
            sent_at,
            response.headers.get("ETag"),
        )

    def _action_query(self, seconds: float) -> str:
        """``api-version`` and the server-side timeout (capped at 30 s, spelt as the version
        spells it), encoded once."""
        server_timeout = max(1, min(MAX_SERVER_TIMEOUT, int(seconds)))
        query = self._action_queries.get(server_timeout)
        if query is None:
            query = _encode_query(
                {"api-version": self.api_version, self._timeout_parameter: str(server_timeout)}
            )
            self._action_queries[server_timeout] = query
        return query

    async def _send(
        self,
        method: str,
        url: str,
        client_request_id: str,
        body: bytes | None,
        timeout: float,
        sent_at: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send once; on 401/403 refresh the credential and send once more."""
        for attempt in (1, 2):
            request = self._build(method, url, client_request_id, body, timeout)
            if extra_headers:
                request.headers.update(extra_headers)
            await self._credential.authorize(request)
            try:
                response = await self._transport.send(request)
                foreign = foreign_answer(request.headers, response.headers)
                if foreign is not None:  # the transport dropped its connection (or is a fake)
                    raise RequestInDoubt(foreign)
            except RequestInDoubt as exc:
                exc.client_request_id = client_request_id
                exc.sent_at = sent_at if sent_at is not None else time.time()
                raise
            except BatchError as exc:
                exc.client_request_id = client_request_id
                raise
            if (
                response.status in (401, 403)
                and attempt == 1
                and await self._credential.refresh(request)
            ):
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _build(
        self, method: str, url: str, client_request_id: str, body: bytes | None, timeout: float
    ) -> HttpRequest:
        headers = {
            "client-request-id": client_request_id,
            "return-client-request-id": "true",
            "ocp-date": self._date.now(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body is not None:
            headers["Content-Type"] = JSON_CONTENT_TYPE
            headers["Content-Length"] = str(len(body))
        elif method != "GET":
            headers["Content-Length"] = "0"
        return HttpRequest(method, url, headers, body, timeout)

    # --- reads: idempotent, retried here ---

    async def get_pool(self, pool_id: str, *, select: str | None = None) -> PoolInfo:
        """The pool; its ``e_tag`` comes from the body or the answer's ETag header."""
        url = self._url(f"/pools/{quote(pool_id, safe='')}", select=select)
        data, _, headers = await self._get_with_headers(url)
        return PoolInfo.from_json(data, e_tag=headers.get("ETag"))

    async def get_node(self, pool_id: str, node_id: str, *, select: str | None = None) -> NodeInfo:
        path = f"/pools/{quote(pool_id, safe='')}/nodes/{quote(node_id, safe='')}"
        return NodeInfo.from_json(await self._get_json(self._url(path, select=select)))

    async def list_pools(
        self,
        *,
        filter: str | None = None,
        select: str | None = None,
        max_results: int | None = None,
    ) -> AsyncIterator[PoolInfo]:
        url: str | None = self._url("/pools", filter=filter, select=select, max_results=max_results)
        async for page in self._pages(url):
            for item in page.items:
                yield PoolInfo.from_json(item)

    async def list_node_pages(
        self,
        pool_id: str,
        *,
        filter: str | None = None,
        select: str | None = None,
        max_results: int | None = None,
    ) -> AsyncIterator[Page]:
        url = self._url(
            f"/pools/{quote(pool_id, safe='')}/nodes",
            filter=filter,
            select=select,
            max_results=max_results,
        )
        async for page in self._pages(url):
            yield page

    async def list_nodes(
        self,
        pool_id: str,
        *,
        filter: str | None = None,
        select: str | None = None,
        max_results: int | None = None,
    ) -> AsyncIterator[NodeInfo]:
        async for page in self.list_node_pages(
            pool_id, filter=filter, select=select, max_results=max_results
        ):
            for item in page.items:
                yield NodeInfo.from_json(item)

    async def _pages(self, url: str | None) -> AsyncIterator[Page]:
        followed = {url} if url is not None else set()
        while url is not None:
            data, request_id = await self._get(url)
            items = data.get("value")
            if not isinstance(items, list):
                raise UnexpectedResponse(
                    200, message="list answer without a 'value' array", request_id=request_id
                )
            link = data.get("odata.nextLink")
            url = self._follow(link, followed, request_id) if link else None
            yield Page([item for item in items if isinstance(item, dict)], request_id, url)

    def _follow(self, link: object, followed: set[str], request_id: str | None) -> str:
        """The next page's URL: same origin as the endpoint, our api-version, else refused.

        A link the listing already followed, or one past ``MAX_PAGES``, stops the listing:
        a server handing out next links without end would otherwise be followed forever.
        """
        url = self._next_page_url(link, request_id)
        if url in followed:
            raise UnexpectedResponse(
                200,
                message=f"odata.nextLink repeats a page already listed ({url}); "
                "the listing would never end",
                request_id=request_id,
            )
        if len(followed) >= MAX_PAGES:
            raise UnexpectedResponse(
                200,
                message=f"more than {MAX_PAGES:,} pages in one listing; refusing to follow "
                "odata.nextLink further",
                request_id=request_id,
            )
        followed.add(url)
        return url

    def _next_page_url(self, link: object, request_id: str | None) -> str:
        def refused(why: str) -> UnexpectedResponse:
            return UnexpectedResponse(
                200, message=f"refusing odata.nextLink {why}", request_id=request_id
            )

        if not isinstance(link, str):
            raise refused("that is not a string")
        try:
            parts = urlsplit(link)
        except ValueError as exc:
            raise refused(f"that is not a URL ({exc}): {link[:200]!r}") from None
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise refused(
                f"to another origin ({parts.scheme}://{parts.netloc}); it must stay on "
                f"{self.endpoint}"
            )
        if not parts.path.startswith("/"):
            raise refused(f"without an absolute path: {link[:200]!r}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        params["api-version"] = self.api_version
        return f"{self.endpoint}{parts.path}?{_encode_query(params)}"

    def _url(
        self,
        path: str,
        *,
        filter: str | None = None,
        select: str | None = None,
        max_results: int | None = None,
    ) -> str:
        params = {"api-version": self.api_version}
        if filter:
            params["$filter"] = filter
        if select:
            params["$select"] = select
        if max_results is not None:
            params["maxresults"] = str(max_results)
        return f"{self.endpoint}{path}?{_encode_query(params)}"

    async def _get_json(self, url: str) -> dict[str, Any]:
        data, _ = await self._get(url)
        return data

    async def _get(self, url: str) -> tuple[dict[str, Any], str | None]:
        """GET with retries: the JSON object and the answer's request-id."""
        data, request_id, _ = await self._get_with_headers(url)
        return data, request_id

    async def _get_with_headers(
        self, url: str
    ) -> tuple[dict[str, Any], str | None, Mapping[str, str]]:
        """GET with retries: the JSON object, the answer's request-id, and its headers."""
        counters = RetryCounters()
        while True:
            client_request_id = new_client_request_id()
            try:
                response = await self._send(
                    "GET", url, client_request_id, None, self.request_timeout
                )
                if response.status == 200:
                    data = json_object(response, client_request_id)
                    return data, response.headers.get("request-id"), response.headers
                raise error_from_response(response, client_request_id, time.time())
            except AuthFailed:
                raise
            except BatchError as error:
                counters = counters.after(error)
                decision = decide_retry(error, counters, self._read_policy, self._random.random())
                if isinstance(decision, GiveUp):
                    raise
                if isinstance(decision, Reconcile):  # a GET in doubt is simply sent again
                    continue
                attempt = counters.failures + counters.connect_failures + counters.throttles
                log.warning(
                    retry_message(self.endpoint, error, attempt, decision.delay),
                    endpoint=self.endpoint,
                    attempt=attempt,
                    next_in_s=round(decision.delay, 3),
                )
                await self._sleep(decision.delay)

    async def close(self) -> None:
        await self._credential.close()


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _add_resize_options(
    body: dict[str, Any], option: str | None, resize_timeout: float | None
) -> None:
    """``nodeDeallocationOption`` and ``resizeTimeout`` (ISO 8601, at least 5 minutes)."""
    if option is not None:
        if option not in NODE_OPTIONS:
            raise ValueError(f"unknown node deallocation option {option!r}")
        body["nodeDeallocationOption"] = option
    if resize_timeout is not None:
        body["resizeTimeout"] = f"PT{max(MIN_RESIZE_TIMEOUT, int(resize_timeout))}S"


def _json_bytes(body: Mapping[str, str]) -> bytes:
    # Tiny fixed-shape bodies: no need for json.dumps on the hot path.
    ((key, value),) = body.items()
    return f'{{"{key}":"{value}"}}'.encode()
