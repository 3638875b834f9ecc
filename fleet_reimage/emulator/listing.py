"""List pages: query parameters, filtering, ``$select`` and absolute next links.

A ``$skiptoken`` is the position in the pool's (stable) node order where the next page
starts. The page scans ahead to the next match before offering a next link, so a client
never gets an empty trailing page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web

from .odata import ODataError, Predicate, Schema, compile_filter, parse_select
from .state import BatchOperationError

T = TypeVar("T")
MAX_RESULTS = 1000
_SAFE = "$'(),:"  # left readable in next links; clients decode either way
_INVALID_VALUE = "Value for one of the query parameters specified in the request URI is invalid."


def invalid_parameter(name: str, value: str, reason: str) -> BatchOperationError:
    return BatchOperationError(
        400,
        "InvalidQueryParameterValue",
        _INVALID_VALUE,
        (("QueryParameterName", name), ("QueryParameterValue", value), ("Reason", reason)),
    )


@dataclass(frozen=True, slots=True)
class ListQuery:
    max_results: int
    predicate: Predicate | None
    names: tuple[str, ...] | None
    start: int


def check_timeout(query: Mapping[str, str]) -> None:
    """``timeout`` (REST spec) or ``timeOut`` (newer SDKs): whole seconds when present."""
    for name in ("timeout", "timeOut"):
        value = query.get(name)
        if value is not None and not value.strip().lstrip("-").isdigit():
            raise invalid_parameter(name, value, "The value must be a whole number of seconds.")


def select_names(query: Mapping[str, str]) -> tuple[str, ...] | None:
    text = query.get("$select")
    if text is None:
        return None
    try:
        return parse_select(text)
    except ODataError as exc:
        raise invalid_parameter("$select", text, exc.reason) from None


def parse_list_query(query: Mapping[str, str], schema: Schema) -> ListQuery:
    """The list parameters of a request, or the 400 the service answers."""
    text = query.get("maxresults", str(MAX_RESULTS))
    try:
        max_results = int(text)
    except ValueError:
        max_results = 0
    if not 1 <= max_results <= MAX_RESULTS:
        raise invalid_parameter("maxresults", text, f"must be between 1 and {MAX_RESULTS}")
    predicate = None
    filter_text = query.get("$filter")
    if filter_text is not None:
        try:
            predicate = compile_filter(filter_text, schema)
        except ODataError as exc:
            raise invalid_parameter("$filter", filter_text, exc.reason) from None
    token = query.get("$skiptoken", "0")
    if not token.isdigit():
        raise invalid_parameter("$skiptoken", token, "not a token this endpoint issued")
    return ListQuery(max_results, predicate, select_names(query), int(token))


def _next_link(request: web.Request, base: str, position: int) -> str:
    pairs = [(key, value) for key, value in request.query.items() if key != "$skiptoken"]
    pairs.append(("$skiptoken", str(position)))
    return f"{base}{request.path}?{urlencode(pairs, quote_via=quote, safe=_SAFE)}"


def list_page(
    request: web.Request,
    base: str,
    kind: str,
    items: Sequence[T],
    query: ListQuery,
    render: Callable[[T], dict[str, Any]],
) -> dict[str, Any]:
    """The list body: ``odata.metadata``, ``value`` and, when more remain, ``odata.nextLink``."""
    predicate = query.predicate
    position, end = query.start, len(items)
    page: list[T] = []
    while position < end and len(page) < query.max_results:
        item = items[position]
        position += 1
        if predicate is None or predicate(item):
            page.append(item)
    if predicate is not None:
        while position < end and not predicate(items[position]):
            position += 1
    values = [render(item) for item in page]  # render applies any $select
    body: dict[str, Any] = {"odata.metadata": f"{base}/$metadata#{kind}", "value": values}
    if position < end:
        body["odata.nextLink"] = _next_link(request, base, position)
    return body
