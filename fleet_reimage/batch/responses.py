"""Turning HTTP answers into JSON values or typed errors (pure; no I/O)."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import BatchHTTPError, UnexpectedResponse, error_class_for
from .retry import parse_retry_after
from .transport import HttpResponse

_REQUEST_ID_IN_MESSAGE = re.compile(r"RequestId:([0-9a-fA-F-]{8,})")
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
EXCERPT_CHARS = 200


def body_excerpt(body: bytes) -> str:
    """A short readable excerpt of a body that is not JSON (an HTML error page, say)."""
    text = body[:4096].decode("utf-8", "replace")
    return _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()[:EXCERPT_CHARS]


def error_from_response(
    response: HttpResponse, client_request_id: str | None, now: float
) -> BatchHTTPError:
    """The typed error for a non-success answer, whatever its body looks like."""
    headers = response.headers
    code, message, values = _batch_error_fields(response.body)
    request_id = headers.get("request-id")
    if request_id is None and message:
        found = _REQUEST_ID_IN_MESSAGE.search(message)
        request_id = found.group(1) if found else None
    excerpt = None
    if code is None and message is None and response.body:
        excerpt = body_excerpt(response.body)
        message = f"non-JSON error body: {excerpt}" if excerpt else None
    cls = error_class_for(response.status, code)
    return cls(
        response.status,
        code=code,
        message=message,
        values=values,
        request_id=request_id,
        client_request_id=headers.get("client-request-id") or client_request_id,
        retry_after=parse_retry_after(headers, now),
        body_excerpt=excerpt,
    )


def _batch_error_fields(body: bytes) -> tuple[str | None, str | None, dict[str, str]]:
    if not body:
        return None, None, {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, {}
    if not isinstance(data, dict):
        return None, None, {}
    code = data.get("code") if isinstance(data.get("code"), str) else None
    raw_message = data.get("message")
    message = None
    if isinstance(raw_message, dict) and isinstance(raw_message.get("value"), str):
        message = raw_message["value"]
    elif isinstance(raw_message, str):
        message = raw_message
    values: dict[str, str] = {}
    raw_values = data.get("values")
    if isinstance(raw_values, list):
        for item in raw_values:
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                values[item["key"]] = str(item.get("value", ""))
    return code, message, values


def json_object(response: HttpResponse, client_request_id: str | None) -> dict[str, Any]:
    """The JSON object of a 200 answer, or UnexpectedResponse saying why it is not one."""
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise UnexpectedResponse(
            response.status,
            message=f"expected a JSON body, got: {body_excerpt(response.body)!r}",
            request_id=response.headers.get("request-id"),
            client_request_id=client_request_id,
        ) from None
    if not isinstance(data, dict):
        raise UnexpectedResponse(
            response.status,
            message="expected a JSON object",
            request_id=response.headers.get("request-id"),
            client_request_id=client_request_id,
        )
    return data
