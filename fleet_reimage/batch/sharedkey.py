"""Shared Key request signing for Azure Batch (pure functions, no I/O).

The string to sign is::

    VERB \\n Content-Encoding \\n Content-Language \\n Content-Length \\n Content-MD5 \\n
    Content-Type \\n Date \\n If-Modified-Since \\n If-Match \\n If-None-Match \\n
    If-Unmodified-Since \\n Range \\n CanonicalizedHeaders CanonicalizedResource

CanonicalizedHeaders are the ``ocp-*`` headers, lower-cased and sorted, each ``name:value\\n``.
CanonicalizedResource is ``/{account}{path}`` then, per query parameter sorted by name,
``\\n{name}:{decoded value}``. ``Date`` stays empty because we always send ``ocp-date``.

Two variants exist between official SDKs and the service accepts both: the Python SDK signs
Content-Length ``0`` for a body-less POST and keeps query names as sent; the .NET SDK signs an
empty Content-Length for zero length and lower-cases query names. We sign like the Python SDK;
the emulator verifies either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qsl, urlsplit

_SIGNED_STANDARD_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


class SigningVariant(Enum):
    PYTHON = "python"  # Content-Length "0" for a body-less non-GET; query names as sent
    DOTNET = "dotnet"  # Content-Length "" for zero length; query names lower-cased


def string_to_sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    account: str,
    variant: SigningVariant = SigningVariant.PYTHON,
) -> str:
    """The canonical string for ``method url`` with ``headers`` (names in any case)."""
    lowered = {name.lower(): value for name, value in headers.items() if value != ""}
    method = method.upper()
    length = lowered.get("content-length", "")
    if variant is SigningVariant.PYTHON and method not in ("GET", "HEAD") and not length:
        length = "0"
    if variant is SigningVariant.DOTNET and length == "0":
        length = ""
    lowered["content-length"] = length
    standard = "\n".join(lowered.get(name, "") for name in _SIGNED_STANDARD_HEADERS)
    ocp = "".join(
        f"{name}:{lowered[name]}\n" for name in sorted(lowered) if name.startswith("ocp-")
    )
    path, query = _path_and_query(url)
    resource = canonical_resource(account, path, query, variant)
    return f"{method}\n{standard}\n{ocp}{resource}"


def _path_and_query(url: str) -> tuple[str, str]:
    """``urlsplit(url).path, .query`` for the absolute URLs we sign, without its cost."""
    if "#" in url or "://" not in url:
        parts = urlsplit(url)
        return parts.path, parts.query
    base, _, query = url.partition("?")
    slash = base.find("/", base.index("://") + 3)
    return ("" if slash < 0 else base[slash:]), query


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``parse_qsl(query)``; plain ``name=value`` pairs (the hot path) are split directly."""
    if "%" in query or "+" in query:
        return parse_qsl(query, keep_blank_values=False)
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if value:
            pairs.append((name, value))
    return pairs


def canonical_resource(account: str, path: str, query: str, variant: SigningVariant) -> str:
    """``/{account}{path}`` followed by the sorted, decoded query parameters."""
    pairs: Iterable[tuple[str, str]] = _query_pairs(query) if query else ()
    if variant is SigningVariant.DOTNET:
        pairs = [(name.lower(), value) for name, value in pairs]
    first_value: dict[str, str] = {}
    for name, value in pairs:
        first_value.setdefault(name, value)
    resource = f"/{account}{path or '/'}"
    return resource + "".join(f"\n{name}:{first_value[name]}" for name in sorted(first_value))


def sign(key: bytes, text: str) -> str:
    """base64(HMAC-SHA256(key, UTF-8 text))."""
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode()


def decode_key(key_b64: str) -> bytes:
    """The raw account key from its base64 form; ValueError (without the key) when malformed."""
    try:
        return base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the Shared Key is not valid base64") from None


@dataclass(frozen=True, slots=True)
class SharedKeySigner:
    """Signs requests for one account. The key never appears in repr or str."""

    account: str
    _key: bytes

    def __repr__(self) -> str:
        return f"SharedKeySigner(account={self.account!r}, key=<redacted>)"

    __str__ = __repr__

    def authorization(self, method: str, url: str, headers: Mapping[str, str]) -> str:
        text = string_to_sign(method, url, headers, self.account)
        return f"SharedKey {self.account}:{sign(self._key, text)}"

    def verify(self, method: str, url: str, headers: Mapping[str, str], signature: str) -> bool:
        """True when ``signature`` matches either known SDK variant (constant-time compare)."""
        for variant in SigningVariant:
            expected = sign(self._key, string_to_sign(method, url, headers, self.account, variant))
            if hmac.compare_digest(expected, signature):
                return True
        return False
