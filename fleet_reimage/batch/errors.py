"""What can go wrong talking to Azure Batch, as one exception tree.

::

    BatchError                      anything the client raises
    ├── RequestNotSent              never reached the server (DNS, refused, connect timeout):
    │                               safe to send again
    ├── RequestInDoubt              sent, then timed out or lost the connection: it may have
    │                               been applied; read the node before sending again
    └── BatchHTTPError              the server answered with a status we did not want
        ├── BadRequest              400: our bug or bad input, never retried
        ├── AuthFailed              401, 403: a run-wide problem, not a node's
        ├── NotFound                404 (PoolNotFound, NodeNotFound, ...)
        ├── Conflict                409
        │   ├── NodeStateConflict       NodeBeing*, NodeStateUnusable,
        │   │                           OperationInvalidForCurrentState
        │   ├── PoolStateConflict       PoolBeingDeleted, PoolBeingResized, PoolBeingCreated
        │   └── OperationNotSupported   OperationNotValidOnNode / OperationNotValidOnPool
        ├── PreconditionFailed      412: the resource changed since the ETag given in If-Match
        ├── Throttled               429, with the server's retry_after
        ├── TransientServerError    408, 500, 502, 503, 504, with retry_after when sent
        └── UnexpectedResponse      anything else, including 200 where 202 is the contract
                                    and success bodies that are not the JSON we expect

Every ``BatchHTTPError`` carries the status, the Batch error ``code``, the message, the
``values`` (key/value details), the server's ``request-id`` and the echoed
``client-request-id``; empty and non-JSON bodies still yield all the headers can tell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from fleet_reimage.errors import FleetReimageError


class BatchError(FleetReimageError):
    """Base of everything the Batch client raises.

    ``account``, ``endpoint`` and ``credential`` say where: they are filled in by whoever
    knows (``batch.explain.locate``), for a message that names them (``describe``).
    """

    client_request_id: str | None = None
    account: str | None = None  # the plan's name for the account
    endpoint: str | None = None
    credential: str | None = None  # how we signed in, in words (never the secret)


class ConfigurationError(BatchError):
    """The client was set up in a way that cannot work (e.g. a key over plain http)."""


class RequestNotSent(BatchError):
    """The request never reached the server: connect failure, refused, DNS, connect timeout."""

    def __init__(self, message: str, *, client_request_id: str | None = None) -> None:
        super().__init__(message)
        self.client_request_id = client_request_id


class RequestInDoubt(BatchError):
    """The request was sent but no answer came back (timeout or connection lost).

    The server may have applied it. ``sent_at`` is the wall-clock time (epoch seconds) the
    request was handed to the connection, for comparing against a node's lastBootTime.
    """

    def __init__(
        self, message: str, *, client_request_id: str | None = None, sent_at: float | None = None
    ) -> None:
        super().__init__(message)
        self.client_request_id = client_request_id
        self.sent_at = sent_at


class BatchHTTPError(BatchError):
    """The server answered with a status other than the operation's success status."""

    default_message: ClassVar[str] = "Batch request failed"

    def __init__(
        self,
        status: int,
        *,
        code: str | None = None,
        message: str | None = None,
        values: Mapping[str, str] | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        retry_after: float | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message or self.default_message
        self.values = dict(values or {})
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.retry_after = retry_after
        self.body_excerpt = body_excerpt
        super().__init__(self.summary())

    def summary(self) -> str:
        """One line: status, code, first line of the message, request-id."""
        first_line = self.message.splitlines()[0] if self.message else ""
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        if first_line:
            parts.append(first_line)
        text = ": ".join(parts)
        if self.values.get("Reason"):
            text += f" ({self.values['Reason']})"
        if self.request_id:
            text += f" [request-id {self.request_id}]"
        return text


class BadRequest(BatchHTTPError):
    default_message = "The request was rejected as malformed"


class AuthFailed(BatchHTTPError):
    default_message = "The server refused our credentials"


class NotFound(BatchHTTPError):
    default_message = "The resource does not exist"


class Conflict(BatchHTTPError):
    default_message = "The operation conflicts with the resource's current state"


class NodeStateConflict(Conflict):
    default_message = "The node is not in a state that allows this operation"


class PoolStateConflict(Conflict):
    default_message = "The pool is not in a state that allows this operation"


class OperationNotSupported(Conflict):
    default_message = "The pool does not support this operation"


class PreconditionFailed(BatchHTTPError):
    default_message = "The resource changed since it was read (If-Match)"


class Throttled(BatchHTTPError):
    default_message = "The server is throttling requests"


class TransientServerError(BatchHTTPError):
    default_message = "The server failed transiently"


class UnexpectedResponse(BatchHTTPError):
    default_message = "The server's answer was not what the API promises"


_NODE_STATE_CODES = frozenset(
    {
        "NodeBeingReimaged",
        "NodeBeingRebooted",
        "NodeBeingCreated",
        "NodeBeingStarted",
        "NodeStateUnusable",
        "OperationInvalidForCurrentState",
        "NodeNotReady",
    }
)
_POOL_STATE_CODES = frozenset({"PoolBeingDeleted", "PoolBeingResized", "PoolBeingCreated"})
_UNSUPPORTED_CODES = frozenset({"OperationNotValidOnNode", "OperationNotValidOnPool"})
_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})


def error_class_for(status: int, code: str | None) -> type[BatchHTTPError]:
    """The exception class for a status and Batch error code (pure)."""
    if status == 400:
        return BadRequest
    if status in (401, 403):
        return AuthFailed
    if status == 404:
        return NotFound
    if status == 409:
        if code in _UNSUPPORTED_CODES:
            return OperationNotSupported
        if code in _POOL_STATE_CODES:
            return PoolStateConflict
        if code in _NODE_STATE_CODES:
            return NodeStateConflict
        return Conflict
    if status == 412:
        return PreconditionFailed
    if status == 429:
        return Throttled
    if status in _TRANSIENT_STATUSES:
        return TransientServerError
    return UnexpectedResponse
