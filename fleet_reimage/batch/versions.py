"""The Batch data-plane api-versions fleet-reimage speaks, and how each spells its query
parameters, so every request says what that version's specification says.

``2024-07-01.20.0`` is the default. ``2025-06-01`` is what the official SDK 15.1 sends by
default; Batch has announced the retirement of the versions before it. The two differ, for
the calls fleet-reimage makes, only in the spelling of the server-side timeout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiVersion:
    name: str
    timeout_parameter: str  # the query parameter that bounds the server's time, in seconds


DEFAULT_API_VERSION = "2024-07-01.20.0"
API_VERSIONS: dict[str, ApiVersion] = {
    version.name: version
    for version in (
        ApiVersion("2024-07-01.20.0", timeout_parameter="timeout"),
        ApiVersion("2025-06-01", timeout_parameter="timeOut"),
    )
}


def api_version(name: str) -> ApiVersion:
    """The version called ``name``; one we do not know is spelt like the default."""
    return API_VERSIONS.get(name) or ApiVersion(name, "timeout")
