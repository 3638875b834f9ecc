"""The Batch operations the emulator serves, as aiohttp handlers over one ``Pipeline``.

Each answer carries what the spec declares for it: ``DataServiceId`` on actions and
patches; ``ETag`` and ``Last-Modified`` on every operation that declares them (a pool's
are its ``eTag``/``lastModified``; a node has no ``eTag`` property, so its header tags
the node's last change; a list's tag its latest change on the page).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import bodies, rules
from .listing import list_page, parse_list_query, select_names
from .odata import NODE_FIELDS, POOL_FIELDS, select
from .pipeline import Pipeline
from .render import node_renderer, pool_json
from .resources import BatchOperationError, Node, Pool
from .state import EmulatorState
from .timefmt import etag_of, http_date

_CONDITION_NOT_MET = "The condition specified using HTTP conditional header(s) is not met."


def version_headers(modified_ticks: int) -> dict[str, str]:
    return {"ETag": etag_of(modified_ticks), "Last-Modified": http_date(modified_ticks)}


def _action_headers(request: web.Request, base: str, modified_ticks: int) -> dict[str, str]:
    headers = version_headers(modified_ticks)
    headers["DataServiceId"] = base + request.raw_path.partition("?")[0]
    return headers


NodeApply = Callable[[EmulatorState, str, str, str | None], Node]


@dataclass(frozen=True, slots=True)
class NodeAction:
    """A ``POST /pools/{pool}/nodes/{node}/{verb}``: its body's one option and its answer."""

    verb: str
    operation: str  # the name in the counters and fault specs
    option: str | None  # the body property naming the option, None: no body
    options: tuple[str, ...]
    status: int
    apply: NodeApply


NODE_ACTIONS = (
    # The hot ones first: aiohttp tries the routes under /pools in order.
    NodeAction(
        "reimage", "reimage", "nodeReimageOption", rules.NODE_OPTIONS, 202,
        lambda state, pool, node, option: state.reimage(pool, node, option or "requeue"),
    ),
    NodeAction(
        "reboot", "reboot", "nodeRebootOption", rules.NODE_OPTIONS, 202,
        lambda state, pool, node, option: state.reboot(pool, node, option or "requeue"),
    ),
    NodeAction(
        "deallocate", "deallocate", "nodeDeallocateOption", rules.NODE_OPTIONS, 202,
        lambda state, pool, node, option: state.deallocate(pool, node, option or "requeue"),
    ),
    NodeAction(
        "start", "start", None, (), 202,
        lambda state, pool, node, option: state.start(pool, node),
    ),
    NodeAction(
        "disablescheduling", "disable_scheduling", "nodeDisableSchedulingOption",
        rules.SCHEDULING_OPTIONS, 200,
        lambda state, pool, node, option: state.disable_scheduling(
            pool, node, option or "requeue"
        ),
    ),
    NodeAction(
        "enablescheduling", "enable_scheduling", None, (), 200,
        lambda state, pool, node, option: state.enable_scheduling(pool, node),
    ),
)  # fmt: skip


def add_routes(app: web.Application, pipeline: Pipeline) -> None:
    operations = Operations(pipeline)
    add = app.router.add_route
    for action in NODE_ACTIONS:
        add("POST", f"/pools/{{pool}}/nodes/{{node}}/{action.verb}", operations.node_action(action))
    add("GET", "/pools/{pool}/nodes/{node}", operations.get_node)
    add("GET", "/pools/{pool}/nodes", operations.list_nodes)
    add("POST", "/pools/{pool}/removenodes", operations.remove_nodes)
    add("POST", "/pools/{pool}/resize", operations.resize)
    add("POST", "/pools/{pool}/stopresize", operations.stop_resize)
    add("GET", "/pools/{pool}", operations.get_pool)
    add("PATCH", "/pools/{pool}", operations.patch_pool)
    add("GET", "/pools", operations.list_pools)


class Operations:
    """Handlers bound to one pipeline (and so to one emulated account)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.state = pipeline.state
        self.remove_nodes = self._pool_call("remove_nodes", self._remove, 202)
        self.resize = self._pool_call("resize", self._resize, 202)
        self.stop_resize = self._pool_call("stop_resize", self._stop, 202)
        self.patch_pool = self._pool_call("patch_pool", self._patch, 200)

    # -- nodes ---------------------------------------------------------------------------
    def node_action(self, action: NodeAction) -> Callable[[web.Request], Any]:
        pipeline, state = self.pipeline, self.state

        async def apply(request: web.Request, request_id: str, base: str) -> web.Response:
            body = await request.read()
            option = (
                bodies.node_option(body, action.option, action.options) if action.option else None
            )
            if action.option is None and body.strip():
                bodies.json_object(body, required=False)  # an empty object is all it takes
            info = request.match_info
            node = action.apply(state, info["pool"], info["node"], option)
            headers = _action_headers(request, base, node.modified_ticks)
            return pipeline.empty(request, request_id, action.status, headers)

        async def handler(request: web.Request) -> web.Response:
            info = request.match_info
            return await pipeline.serve(
                request, action.operation, apply, info["pool"], info["node"]
            )

        return handler

    async def get_node(self, request: web.Request) -> web.Response:
        info = request.match_info
        return await self.pipeline.serve(
            request, "get_node", self._get_node, info["pool"], info["node"]
        )

    async def _get_node(self, request: web.Request, request_id: str, base: str) -> web.Response:
        names = select_names(request.query)
        info = request.match_info
        node = self.state.node(info["pool"], info["node"])
        body: dict[str, Any] = {"odata.metadata": f"{base}/$metadata#nodes/@Element"}
        body.update(node_renderer(names)(node, base))
        extra = version_headers(node.modified_ticks)
        return self.pipeline.json(request, request_id, body, extra=extra)

    async def list_nodes(self, request: web.Request) -> web.Response:
        return await self.pipeline.serve(request, "list_nodes", self._list_nodes)

    async def _list_nodes(self, request: web.Request, request_id: str, base: str) -> web.Response:
        query = parse_list_query(request.query, NODE_FIELDS)
        pool = self.state.pool(request.match_info["pool"])
        render = node_renderer(query.names)
        latest = [pool.creation_ticks]

        def one(node: Node) -> dict[str, Any]:
            latest[0] = max(latest[0], node.modified_ticks)
            return render(node, base)

        body = list_page(request, base, "nodes", pool.nodes, query, one)
        return self.pipeline.json(request, request_id, body, extra=version_headers(latest[0]))

    # -- pools ---------------------------------------------------------------------------
    async def list_pools(self, request: web.Request) -> web.Response:
        return await self.pipeline.serve(request, "list_pools", self._list_pools)

    async def _list_pools(self, request: web.Request, request_id: str, base: str) -> web.Response:
        query = parse_list_query(request.query, POOL_FIELDS)
        self.state.advance()
        pools = list(self.state.pools.values())
        names = query.names
        latest = [0]

        def render(pool: Pool) -> dict[str, Any]:
            latest[0] = max(latest[0], pool.modified_ticks)
            resource = pool_json(pool, base)
            return select(resource, names) if names is not None else resource

        body = list_page(request, base, "pools", pools, query, render)
        extra = version_headers(latest[0] or self.state.now_ticks())
        return self.pipeline.json(request, request_id, body, extra=extra)

    async def get_pool(self, request: web.Request) -> web.Response:
        return await self.pipeline.serve(
            request, "get_pool", self._get_pool, request.match_info["pool"], ""
        )

    async def _get_pool(self, request: web.Request, request_id: str, base: str) -> web.Response:
        names = select_names(request.query)
        pool = self.state.pool(request.match_info["pool"])
        extra = version_headers(pool.modified_ticks)
        status = rules.condition_failure(request.headers, pool.etag, pool.modified_ticks, read=True)
        if status == 304:
            return self.pipeline.empty(request, request_id, 304, extra)
        if status is not None:
            raise _condition_not_met()
        body: dict[str, Any] = {"odata.metadata": f"{base}/$metadata#pools/@Element"}
        resource = pool_json(pool, base)
        body.update(select(resource, names) if names else resource)
        return self.pipeline.json(request, request_id, body, extra=extra)

    def _pool_call(
        self, operation: str, change: Callable[[str, bytes], Pool], status: int
    ) -> Callable[[web.Request], Any]:
        """A conditional pool operation (If-Match & co. are checked before it applies)."""

        async def apply(request: web.Request, request_id: str, base: str) -> web.Response:
            body = await request.read()
            pool_id = request.match_info["pool"]
            pool = self.state.pool(pool_id)
            if rules.condition_failure(request.headers, pool.etag, pool.modified_ticks, read=False):
                raise _condition_not_met()
            pool = change(pool_id, body)
            headers = _action_headers(request, base, pool.modified_ticks)
            return self.pipeline.empty(request, request_id, status, headers)

        async def handler(request: web.Request) -> web.Response:
            pool_id = request.match_info["pool"]
            return await self.pipeline.serve(request, operation, apply, pool_id, "")

        return handler

    def _remove(self, pool_id: str, body: bytes) -> Pool:
        request = bodies.remove_nodes(body)
        return self.state.pool_ops.remove_nodes(
            pool_id, request.node_ids, request.timeout, request.option
        )

    def _resize(self, pool_id: str, body: bytes) -> Pool:
        request = bodies.resize(body)
        return self.state.pool_ops.resize(
            pool_id, request.dedicated, request.low_priority, request.timeout, request.option
        )

    def _stop(self, pool_id: str, body: bytes) -> Pool:
        if body.strip():
            bodies.json_object(body, required=False)
        return self.state.pool_ops.stop_resize(pool_id)

    def _patch(self, pool_id: str, body: bytes) -> Pool:
        metadata = bodies.pool_patch(body)
        if metadata is None:
            return self.state.pool(pool_id)
        return self.state.pool_ops.patch_metadata(pool_id, metadata)


def _condition_not_met() -> BatchOperationError:
    return BatchOperationError(412, "ConditionNotMet", _CONDITION_NOT_MET)
