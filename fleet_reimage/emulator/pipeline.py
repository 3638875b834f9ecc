"""What every request to the emulator goes through, and the shapes of every answer.

Every request goes through the same steps, in the service's order: api-version, then
authentication, then the account's rate limit, then the operation's injected fault (if
any), then the operation itself (``operations.py``). The hot path (reimage) does no
logging, parses nothing but the tiny JSON body, and touches the state in O(log n).

Two api-versions are served, ``2024-07-01.20.0`` (the server timeout spelt ``timeout``)
and ``2025-06-01`` (``timeOut``, as the official SDK 15.1 sends it); the service treats
query names without regard to case here, so either spelling is read at either version.
Any other version is answered ``400 UnsupportedRequestVersion``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .auth import Authenticator
from .clock import Clock, RealClock
from .faults import AFTER_KINDS, BEFORE_KINDS, Draw, FaultInjector, TokenBucket, retry_headers
from .faults import rate_limit_headers as _rate_limit_headers
from .listing import check_timeout
from .population import build_state
from .render import JSON_CONTENT_TYPE, dumps, error_json
from .resources import BatchOperationError
from .spec import FleetSpec
from .state import EmulatorState
from .stats import RequestCounters, build_stats

# Each served api-version, and how it spells the server-side timeout query parameter.
API_VERSIONS = {"2024-07-01.20.0": "timeout", "2025-06-01": "timeOut"}
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
_NODE_VERBS = frozenset(
    {"reimage", "reboot", "deallocate", "start", "disablescheduling", "enablescheduling"}
)
_POOL_VERBS = frozenset({"removenodes", "resize", "stopresize"})
Action = Callable[[web.Request, str, str], Awaitable[web.Response]]


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def known_path(path: str) -> bool:
    """A path the service has (so a wrong verb is 405, not 404)."""
    parts = path.strip("/").split("/")
    if not parts or parts[0] != "pools":
        return False
    if len(parts) <= 2:
        return True
    if len(parts) == 3:
        return parts[2] == "nodes" or parts[2] in _POOL_VERBS
    return parts[2] == "nodes" and (
        len(parts) == 4 or (len(parts) == 5 and parts[4] in _NODE_VERBS)
    )


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


def _reset(request: web.Request) -> web.Response:
    """Drop the connection with nothing written: the client sees a reset, not a status.

    aiohttp still tries to send the returned response, finds the transport closed and
    gives up quietly (a ConnectionError inside its own finish_response).
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


class Pipeline:
    """What every request goes through, and the shapes of every answer."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.counters = emulator.counters

    # -- answers ---------------------------------------------------------------------------
    def headers(self, request: web.Request, request_id: str) -> dict[str, str]:
        headers = {"request-id": request_id, "DataServiceVersion": "3.0"}
        client_id = request.headers.get("client-request-id")
        if (
            client_id is not None
            and request.headers.get("return-client-request-id", "").lower() == "true"
        ):
            headers["client-request-id"] = client_id
        return headers

    def json(
        self,
        request: web.Request,
        request_id: str,
        body: dict[str, Any],
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        headers = self.headers(request, request_id)
        headers["Content-Type"] = JSON_CONTENT_TYPE
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=dumps(body), headers=headers)

    def empty(
        self, request: web.Request, request_id: str, status: int, extra: dict[str, str]
    ) -> web.Response:
        headers = self.headers(request, request_id)
        headers.update(extra)
        return web.Response(status=status, headers=headers)

    def error(
        self,
        request: web.Request,
        request_id: str,
        error: BatchOperationError,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        body = error_json(
            base_url(request),
            error.code,
            error.message,
            request_id,
            self.state.now_ticks(),
            error.values,
        )
        headers = dict(error.headers)
        if extra:
            headers.update(extra)
        return self.json(request, request_id, body, error.status, headers)

    # -- the common steps --------------------------------------------------------------------
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
        self.counters.version(version)
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

    async def serve(
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
            response = await action(request, request_id, base_url(request))
        except BatchOperationError as error:
            response = self.error(request, request_id, error)
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
        return self.error(request, request_id, BatchOperationError(status, code, message), extra)

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
            return self.error(request, request_id, error)
        headers = self.headers(request, request_id)
        headers["Content-Type"] = "application/json"
        return web.Response(body=dumps(document), headers=headers)

    async def unknown(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        self.counters.received("unknown")
        if known_path(request.path):
            error = BatchOperationError(
                405, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb."
            )
        else:
            error = BatchOperationError(
                404, "ResourceNotFound", "The specified resource does not exist."
            )
        self.counters.answered(error.status)
        return self.error(request, request_id, error)
