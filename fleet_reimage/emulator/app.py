"""The Batch data-plane endpoints, as an aiohttp application over one ``EmulatorState``.

Every request goes through the same steps, in the service's order: api-version, then
authentication, then the account's rate limit, then the operation's injected fault (if
any), then the operation itself. The hot path (reimage) does no logging, parses nothing
but the tiny JSON body, and touches the state in O(log n).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .auth import Authenticator
from .clock import Clock, RealClock
from .faults import AFTER_KINDS, BEFORE_KINDS, Draw, FaultInjector, TokenBucket, retry_headers
from .faults import rate_limit_headers as _rate_limit_headers
from .listing import check_timeout, list_page, parse_list_query, select_names
from .odata import NODE_FIELDS, POOL_FIELDS, select
from .population import build_state
from .render import JSON_CONTENT_TYPE, dumps, error_json, node_renderer, pool_json
from .spec import FleetSpec
from .state import BatchOperationError, EmulatorState, Pool
from .stats import RequestCounters, build_stats

API_VERSIONS = frozenset(
    {
        "2021-06-01.14.0",
        "2022-01-01.15.0",
        "2022-10-01.16.0",
        "2023-05-01.17.0",
        "2023-11-01.18.0",
        "2024-02-01.19.0",
        "2024-07-01.20.0",
        "2025-06-01",
    }
)
NODE_OPTIONS = frozenset({"requeue", "terminate", "taskcompletion", "retaineddata"})
_FAULT_ERRORS = {
    "throttle": (
        429,
        "TooManyRequests",
        "The request was throttled; retry after the time given in the response headers.",
    ),
    "server_busy": (
        503,
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
    ),
    "server_error": (
        500,
        "InternalError",
        "Server encountered an internal error. Please try again after some time.",
    ),
}
Action = Callable[[web.Request, str, str], Awaitable[web.Response]]


class Emulator:
    """One emulated Batch account: its state, credentials, faults, limits and counters."""

    def __init__(
        self, spec: FleetSpec, *, clock: Clock | None = None, state: EmulatorState | None = None
    ) -> None:
        self.spec = spec
        self.clock = clock or RealClock()
        self.state = state or build_state(spec, self.clock)
        self.auth = Authenticator(spec.account, self.state)
        self.faults = FaultInjector(spec.faults)
        self.limiter = TokenBucket(spec.rate_limit, self.clock) if spec.rate_limit else None
        self.counters = RequestCounters()

    def stats(self, pool: str | None = None, include_nodes: bool = True) -> dict[str, Any]:
        return build_stats(self.state, self.counters, pool=pool, include_nodes=include_nodes)


EMULATOR_KEY = web.AppKey("emulator", Emulator)


def create_app(
    spec: FleetSpec, *, clock: Clock | None = None, state: EmulatorState | None = None
) -> web.Application:
    """The aiohttp application answering as ``spec``'s account (``emulator_of`` finds it)."""
    emulator = Emulator(spec, clock=clock, state=state)
    app = web.Application()
    app[EMULATOR_KEY] = emulator
    routes = _Routes(emulator)
    add = app.router.add_route
    # aiohttp tries the routes under "/pools" in this order: the hot ones go first.
    add("POST", "/pools/{pool}/nodes/{node}/reimage", routes.reimage)
    add("POST", "/pools/{pool}/nodes/{node}/reboot", routes.reboot)
    add("GET", "/pools/{pool}/nodes/{node}", routes.get_node)
    add("GET", "/pools/{pool}/nodes", routes.list_nodes)
    add("GET", "/pools/{pool}", routes.get_pool)
    add("GET", "/pools", routes.list_pools)
    add("GET", "/_emulator/stats", routes.stats)
    add("*", "/{tail:.*}", routes.unknown)
    return app


def emulator_of(app: web.Application) -> Emulator:
    return app[EMULATOR_KEY]


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _reset(request: web.Request) -> web.Response:
    """Drop the connection with nothing written: the client sees a reset, not a status.

    aiohttp still tries to send the returned response, finds the transport closed and
    gives up quietly (a ConnectionError inside its own finish_response).
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


def _option(body: bytes, name: str) -> None:
    """Validate the optional ``{"nodeReimageOption": ...}`` / ``{"nodeRebootOption": ...}``."""
    if not body.strip():
        return
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BatchOperationError(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            (("Reason", "The body is not valid JSON."),),
        ) from None
    if not isinstance(document, dict):
        raise BatchOperationError(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            (("Reason", "The body must be a JSON object."),),
        )
    value = document.get(name)
    if value is not None and value not in NODE_OPTIONS:
        raise BatchOperationError(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            (
                ("PropertyName", name),
                ("PropertyValue", str(value)),
                ("Reason", "allowed: " + ", ".join(sorted(NODE_OPTIONS))),
            ),
        )


class _Routes:
    """Request handlers bound to one ``Emulator``."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.counters = emulator.counters

    # -- the common pipeline --------------------------------------------------------------
    def _headers(self, request: web.Request, request_id: str) -> dict[str, str]:
        headers = {"request-id": request_id, "DataServiceVersion": "3.0"}
        client_id = request.headers.get("client-request-id")
        if (
            client_id is not None
            and request.headers.get("return-client-request-id", "").lower() == "true"
        ):
            headers["client-request-id"] = client_id
        return headers

    def _json(
        self,
        request: web.Request,
        request_id: str,
        body: dict[str, Any],
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        headers = self._headers(request, request_id)
        headers["Content-Type"] = JSON_CONTENT_TYPE
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=dumps(body), headers=headers)

    def _error(
        self,
        request: web.Request,
        request_id: str,
        error: BatchOperationError,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        body = error_json(
            _base(request),
            error.code,
            error.message,
            request_id,
            self.state.now_ticks(),
            error.values,
        )
        headers = dict(error.headers)
        if extra:
            headers.update(extra)
        return self._json(request, request_id, body, error.status, headers)

    def _admit(self, request: web.Request) -> None:
        """api-version, credentials, rate limit: raise the service's error or return."""
        version = request.query.get("api-version")
        if version is None:
            raise BatchOperationError(
                400,
                "MissingRequiredQueryParameter",
                "A query parameter that's mandatory for this request is not specified.",
                (("QueryParameterName", "api-version"),),
            )
        if version not in API_VERSIONS:
            raise BatchOperationError(
                400,
                "UnsupportedRequestVersion",
                "The specified Request Version is not supported.",
                (("QueryParameterName", "api-version"), ("QueryParameterValue", version)),
            )
        check_timeout(request.query)
        self.emulator.auth.check(request.method, request.raw_path, request.headers)
        limiter = self.emulator.limiter
        if limiter is not None:
            wait = limiter.take()
            if wait > 0:
                self.counters.rate_limited += 1
                raise BatchOperationError(
                    429,
                    "TooManyRequests",
                    "The account's request rate limit was exceeded.",
                    headers=_rate_limit_headers(wait),
                )

    async def _serve(
        self,
        request: web.Request,
        operation: str,
        action: Action,
        pool: str | None = None,
        node: str | None = None,
    ) -> web.Response:
        request_id = str(uuid.uuid4())
        self.counters.received(operation)
        draw: Draw | None = None
        try:
            self._admit(request)
            draw = self.emulator.faults.draw(operation, pool, node)
            if draw is not None:
                if draw.latency > 0:
                    await asyncio.sleep(draw.latency)
                if draw.kind in BEFORE_KINDS:
                    return self._fault_before(request, request_id, draw)
            response = await action(request, request_id, _base(request))
        except BatchOperationError as error:
            response = self._error(request, request_id, error)
        if draw is not None and draw.kind in AFTER_KINDS:
            self.counters.fault(draw.kind)
            if draw.kind == "reset_after":
                return _reset(request)
            await asyncio.sleep(draw.spec.delay)  # applied; the answer comes too late
        self.counters.answered(response.status)
        return response

    def _fault_before(self, request: web.Request, request_id: str, draw: Draw) -> web.Response:
        kind = draw.kind or ""
        self.counters.fault(kind)
        if kind == "reset_before":
            return _reset(request)
        status, code, message = _FAULT_ERRORS[kind]
        extra = retry_headers(draw.spec.retry_after) if status in (429, 503) else None
        self.counters.answered(status)
        return self._error(request, request_id, BatchOperationError(status, code, message), extra)

    # -- endpoints ------------------------------------------------------------------------
    async def list_pools(self, request: web.Request) -> web.Response:
        return await self._serve(request, "list_pools", self._list_pools)

    async def get_pool(self, request: web.Request) -> web.Response:
        return await self._serve(
            request, "get_pool", self._get_pool, request.match_info["pool"], ""
        )

    async def list_nodes(self, request: web.Request) -> web.Response:
        return await self._serve(request, "list_nodes", self._list_nodes)

    async def get_node(self, request: web.Request) -> web.Response:
        info = request.match_info
        return await self._serve(request, "get_node", self._get_node, info["pool"], info["node"])

    async def reimage(self, request: web.Request) -> web.Response:
        info = request.match_info
        return await self._serve(request, "reimage", self._reimage, info["pool"], info["node"])

    async def reboot(self, request: web.Request) -> web.Response:
        info = request.match_info
        return await self._serve(request, "reboot", self._reboot, info["pool"], info["node"])

    # -- operations -----------------------------------------------------------------------
    async def _list_pools(self, request: web.Request, request_id: str, base: str) -> web.Response:
        query = parse_list_query(request.query, POOL_FIELDS)
        self.state.advance()
        pools = list(self.state.pools.values())
        seed, names = self.state.seed, query.names

        def render(pool: Pool) -> dict[str, Any]:
            resource = pool_json(pool, base, seed)
            return select(resource, names) if names is not None else resource

        body = list_page(request, base, "pools", pools, query, render)
        return self._json(request, request_id, body)

    async def _get_pool(self, request: web.Request, request_id: str, base: str) -> web.Response:
        names = select_names(request.query)
        pool = self.state.pool(request.match_info["pool"])
        body: dict[str, Any] = {"odata.metadata": f"{base}/$metadata#pools/@Element"}
        resource = pool_json(pool, base, self.state.seed)
        body.update(select(resource, names) if names else resource)
        return self._json(request, request_id, body)

    async def _list_nodes(self, request: web.Request, request_id: str, base: str) -> web.Response:
        query = parse_list_query(request.query, NODE_FIELDS)
        pool = self.state.pool(request.match_info["pool"])
        render = node_renderer(query.names)
        body = list_page(request, base, "nodes", pool.nodes, query, lambda node: render(node, base))
        return self._json(request, request_id, body)

    async def _get_node(self, request: web.Request, request_id: str, base: str) -> web.Response:
        names = select_names(request.query)
        info = request.match_info
        node = self.state.node(info["pool"], info["node"])
        body: dict[str, Any] = {"odata.metadata": f"{base}/$metadata#nodes/@Element"}
        body.update(node_renderer(names)(node, base))
        return self._json(request, request_id, body)

    async def _reimage(self, request: web.Request, request_id: str, base: str) -> web.Response:
        _option(await request.read(), "nodeReimageOption")
        info = request.match_info
        self.state.reimage(info["pool"], info["node"])
        return self._accepted(request, request_id, base)

    async def _reboot(self, request: web.Request, request_id: str, base: str) -> web.Response:
        _option(await request.read(), "nodeRebootOption")
        info = request.match_info
        self.state.reboot(info["pool"], info["node"])
        return self._accepted(request, request_id, base)

    def _accepted(self, request: web.Request, request_id: str, base: str) -> web.Response:
        headers = self._headers(request, request_id)
        headers["DataServiceId"] = base + request.raw_path.partition("?")[0]
        return web.Response(status=202, headers=headers)

    # -- outside the Batch API --------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        remote = request.remote or ""
        try:
            loopback = ipaddress.ip_address(remote.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        try:
            if not loopback:
                raise BatchOperationError(
                    403,
                    "InsufficientAccountPermissions",
                    "The emulator's stats are only served to loopback peers.",
                )
            document = self.emulator.stats(
                request.query.get("pool"),
                include_nodes=request.query.get("nodes", "true").lower() != "false",
            )
        except BatchOperationError as error:
            return self._error(request, request_id, error)
        headers = self._headers(request, request_id)
        headers["Content-Type"] = "application/json"
        return web.Response(body=dumps(document), headers=headers)

    async def unknown(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        self.counters.received("unknown")
        if _known_path(request.path):
            error = BatchOperationError(
                405, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb."
            )
        else:
            error = BatchOperationError(
                404, "ResourceNotFound", "The specified resource does not exist."
            )
        self.counters.answered(error.status)
        return self._error(request, request_id, error)


def _known_path(path: str) -> bool:
    parts = path.strip("/").split("/")
    if not parts or parts[0] != "pools":
        return False
    return (len(parts) in (1, 2, 3, 4) and (len(parts) < 3 or parts[2] == "nodes")) or (
        len(parts) == 5 and parts[2] == "nodes" and parts[4] in ("reimage", "reboot")
    )
