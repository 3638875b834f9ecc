"""Checking an answer against the official spec, strictly (the conformance tests' oracle).

An answer conforms when its status is one the operation declares (a success code, or an
error under ``default`` with a ``BatchError`` body), its body validates against the
declared schema with no property the schema lacks (``odata.metadata`` aside), every header
the response declares is there in its declared format (``client-request-id`` only when
asked for), and no other header but HTTP's own and ``DataServiceVersion`` is sent. The
schemas come from ``tests/spec/`` (derived from the spec by ``specfixture.py``); the
validation is jsonschema's, so nothing here is the emulator's own code checking itself.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from jsonschema import Draft4Validator, FormatChecker

JSON_CONTENT_TYPE = "application/json; odata=minimalmetadata"
# HTTP's own headers, and the OData version header the live service sends on every answer.
TRANSPORT_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "date",
        "server",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "dataserviceversion",
    }
)
# Errors are "default" responses, which declare no headers; these are what they carry.
ERROR_HEADERS = frozenset(
    {
        "request-id",
        "client-request-id",
        "retry-after",
        "retry-after-ms",
        "x-ms-retry-after-ms",
        "www-authenticate",
    }
)
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?Z")
_DURATION = re.compile(r"P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")


def _formats() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("date-time")
    def date_time(value: object) -> bool:
        return not isinstance(value, str) or bool(_ISO_TIME.fullmatch(value))

    @checker.checks("duration")
    def duration(value: object) -> bool:
        return not isinstance(value, str) or bool(_DURATION.fullmatch(value))

    @checker.checks("int32")
    def int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    return checker


def strict(schema: Any) -> Any:
    """Every object schema closed: a property it does not declare is an error."""
    if isinstance(schema, dict):
        result = {key: strict(value) for key, value in schema.items()}
        if "properties" in result:
            result["properties"] = {
                name: strict(value) for name, value in schema["properties"].items()
            }
            result.setdefault("additionalProperties", False)
        return result
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def _header_format(kind: str | None, value: str) -> bool:
    if kind == "uuid":
        try:
            uuid.UUID(value)
        except ValueError:
            return False
        return True
    if kind == "date-time-rfc1123":
        try:
            parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return False
        return value.endswith(" GMT")
    return True


class Conformance:
    """Findings for answers, against one fixture (one api-version's spec)."""

    def __init__(self, fixture: Mapping[str, Any]) -> None:
        self.fixture = fixture
        self.definitions = strict(copy.deepcopy(fixture["definitions"]))
        self.formats = _formats()

    def operation(self, operation_id: str) -> Mapping[str, Any]:
        return self.fixture["operations"][operation_id]

    def body_findings(self, schema: Mapping[str, Any], body: Any, where: str) -> list[str]:
        if not isinstance(body, dict):
            return [f"{where}: the body is not a JSON object"]
        body = dict(body)
        metadata = body.pop("odata.metadata", None)
        findings = []
        if metadata is not None and not isinstance(metadata, str):
            findings.append(f"{where}: odata.metadata is not a string")
        root = {"definitions": self.definitions, **strict(schema)}
        validator = Draft4Validator(root, format_checker=self.formats)
        for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            path = "/".join(str(part) for part in error.absolute_path) or "(top)"
            findings.append(f"{where}: {path}: {error.message}")
        return findings

    def findings(
        self,
        operation_id: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        asked_for_client_id: bool,
    ) -> list[str]:
        where = f"{operation_id} {status}"
        responses = self.operation(operation_id)["responses"]
        lowered = {name.lower(): value for name, value in headers.items()}
        declared = responses.get(str(status))
        if declared is None:
            if 200 <= status < 300 or "default" not in responses:
                return [f"{where}: status not declared (declared: {', '.join(responses)})"]
            return self._error_findings(where, responses["default"], status, lowered, body)
        findings = []
        expected = {name.lower(): spec for name, spec in declared["headers"].items()}
        for name, spec in expected.items():
            value = lowered.get(name)
            if value is None:
                if name != "client-request-id" or asked_for_client_id:
                    findings.append(f"{where}: declared header {name} missing")
            elif not _header_format(spec.get("format"), value):
                findings.append(f"{where}: header {name}={value!r} is not {spec.get('format')}")
        for name in lowered:
            if name not in expected and name not in TRANSPORT_HEADERS:
                findings.append(f"{where}: undeclared header {name}")
        if "schema" in declared:
            findings += self._json_findings(where, declared["schema"], lowered, body)
        elif body:
            findings.append(f"{where}: a body where none is declared: {body[:80]!r}")
        return findings

    def _json_findings(
        self, where: str, schema: Mapping[str, Any], headers: Mapping[str, str], body: bytes
    ) -> list[str]:
        if headers.get("content-type") != JSON_CONTENT_TYPE:
            return [f"{where}: Content-Type {headers.get('content-type')!r}"]
        try:
            document = json.loads(body)
        except ValueError:
            return [f"{where}: the body is not JSON"]
        return self.body_findings(schema, document, where)

    def _error_findings(
        self,
        where: str,
        default: Mapping[str, Any],
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> list[str]:
        allowed = ERROR_HEADERS | ({"etag", "last-modified"} if status == 304 else set())
        findings = [
            f"{where}: undeclared header {name}"
            for name in headers
            if name not in TRANSPORT_HEADERS and name not in allowed
        ]
        if "request-id" not in headers:
            findings.append(f"{where}: no request-id")
        if status == 304:
            return findings + ([f"{where}: a body on a 304"] if body else [])
        return findings + self._json_findings(where, default["schema"], headers, body)
