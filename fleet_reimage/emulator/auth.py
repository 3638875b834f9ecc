"""Who may call the emulator: Shared Key or a bearer token.

The Shared Key check is written from the service's description (``batch-rest.md``, the
REST reference), not from the client's signer, so an end-to-end run can catch a signing
bug: signature = base64(HMAC-SHA256(account key, string to sign)), where the string is ::

    VERB \\n Content-Encoding \\n Content-Language \\n Content-Length \\n Content-MD5 \\n
    Content-Type \\n Date \\n If-Modified-Since \\n If-Match \\n If-None-Match \\n
    If-Unmodified-Since \\n Range \\n CanonicalizedHeaders CanonicalizedResource

CanonicalizedHeaders: every ``ocp-*`` header, lower-cased name, sorted, ``name:value\\n``
each. CanonicalizedResource: ``/{account}{path}``, then per query parameter sorted by name
``\\n{name}:{decoded value}``. ``Date`` stays empty when ``ocp-date`` is sent. The service
accepts the official SDKs' variants: Content-Length ``0`` or empty for a zero-length
request, query names as sent or lower-cased.

Failures are the service's: 403 ``AuthenticationFailed`` for Shared Key problems (bad
signature, wrong account, missing header, a request date more than 15 minutes off), 401
for a bearer token that is unknown or expired. Detail goes in ``AuthenticationErrorDetail``;
the account key never appears in any answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterator, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import parse_qsl

from .resources import BatchOperationError
from .spec import AccountSpec

MAX_CLOCK_SKEW = 15 * 60.0
FAILED_MESSAGE = (
    "Server failed to authenticate the request. Make sure the value of "
    "Authorization header is formed correctly including the signature."
)
_CHALLENGE = (
    'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'error="invalid_token", resource_id="https://batch.core.windows.net/"'
)
# The standard headers in the string to sign, in order, after the verb.
_STANDARD = (
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-MD5",
    "Content-Type",
    "Date",
    "If-Modified-Since",
    "If-Match",
    "If-None-Match",
    "If-Unmodified-Since",
    "Range",
)
_LENGTH = _STANDARD.index("Content-Length")
_DATE = _STANDARD.index("Date")


def account_key(key_b64: str) -> bytes:
    """The raw key from its base64 form; ValueError (never showing the key) if malformed."""
    try:
        return base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the Shared Key is not valid base64") from None


def _failed(detail: str, status: int = 403) -> BatchOperationError:
    headers = {"WWW-Authenticate": _CHALLENGE} if status == 401 else None
    return BatchOperationError(
        status,
        "AuthenticationFailed",
        FAILED_MESSAGE,
        (("AuthenticationErrorDetail", detail),),
        headers=headers,
    )


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs; parameters without a value are not signed."""
    if "%" not in query and "+" not in query:  # the common case, split directly
        pairs = []
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if value:
                pairs.append((name, value))
        return pairs
    return parse_qsl(query)


def canonical_resource(account: str, raw_path: str, lower_names: bool = False) -> str:
    """``/{account}{path}`` and the sorted, decoded query (first value of each name)."""
    path, _, query = raw_path.partition("?")
    values: dict[str, str] = {}
    for name, value in _query_pairs(query) if query else ():
        values.setdefault(name.lower() if lower_names else name, value)
    return f"/{account}{path or '/'}" + "".join(
        f"\n{name}:{values[name]}" for name in sorted(values)
    )


def canonical_headers(headers: Mapping[str, str]) -> str:
    ocp = sorted((name.lower(), value) for name, value in headers.items() if _is_ocp(name))
    return "".join(f"{name}:{value}\n" for name, value in ocp)


def _is_ocp(name: str) -> bool:
    return name[:4].lower() == "ocp-"


def strings_to_sign(
    method: str, raw_path: str, headers: Mapping[str, str], account: str
) -> Iterator[str]:
    """The string to sign in each variant the service accepts, most common first, each
    once (computed lazily: a request signed the common way costs one)."""
    standard = [headers.get(name, "") for name in _STANDARD]
    if headers.get("ocp-date"):
        standard[_DATE] = ""
    lengths = [standard[_LENGTH]]
    if lengths[0] == "0" or (lengths[0] == "" and method not in ("GET", "HEAD")):
        lengths = ["0", ""]  # a zero-length request: signed as "0" or as empty
    ocp = canonical_headers(headers)
    seen: set[str] = set()
    for lower_names in (False, True):
        resource = canonical_resource(account, raw_path, lower_names)
        for length in lengths:
            standard[_LENGTH] = length
            text = f"{method}\n" + "\n".join(standard) + f"\n{ocp}{resource}"
            if text not in seen:
                seen.add(text)
                yield text


class TokenHolder(Protocol):
    accepted_tokens: set[str]  # the live set of bearer tokens (tests change it)


class Authenticator:
    """Checks a request's credentials against one account and the live token set."""

    def __init__(self, account: AccountSpec, tokens: TokenHolder) -> None:
        self.account = account.name
        self._mac = hmac.new(account_key(account.key), digestmod=hashlib.sha256)
        self._tokens = tokens
        self._prefix = f"SharedKey {account.name}:"
        # Clients send the same ocp-date for every request within a second: parse it once.
        self._last_date: tuple[str, float] = ("", 0.0)

    def _signature(self, text: str) -> str:
        mac = self._mac.copy()
        mac.update(text.encode("utf-8"))
        return base64.b64encode(mac.digest()).decode("ascii")

    def check(self, method: str, raw_path: str, headers: Mapping[str, str]) -> None:
        """Return when the request is authenticated; raise the service's error otherwise."""
        authorization = headers.get("Authorization", "")
        if authorization.startswith(self._prefix):
            self._check_date(headers)
            signature = authorization[len(self._prefix) :]
            for text in strings_to_sign(method, raw_path, headers, self.account):
                if hmac.compare_digest(self._signature(text), signature):
                    return
            first = next(strings_to_sign(method, raw_path, headers, self.account))
            shown = first.replace("\n", "\\n")
            raise _failed(
                f"The MAC signature found in the HTTP request '{signature}' is not "
                "the same as any computed signature. Server used following string "
                f"to sign: '{shown}'."
            )
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            if credentials.strip() not in self._tokens.accepted_tokens:
                raise _failed("The access token is expired or not valid for this account.", 401)
            return
        if scheme == "SharedKey":
            account = credentials.partition(":")[0]
            raise _failed(
                f"The account '{account}' in the Authorization header is not the "
                f"account '{self.account}' of this endpoint."
            )
        if not authorization:
            raise _failed("The Authorization header is missing.")
        raise _failed(
            "The Authorization header is not in the format 'SharedKey "
            "{account}:{signature}' or 'Bearer {token}'."
        )

    def _check_date(self, headers: Mapping[str, str]) -> None:
        text = headers.get("ocp-date") or headers.get("Date") or ""
        if not text:
            raise _failed("Request date header not specified (send ocp-date).")
        cached_text, sent = self._last_date
        if text != cached_text:
            try:
                parsed = parsedate_to_datetime(text)
                if parsed.tzinfo is None:  # "-0000" means UTC with no zone claimed
                    parsed = parsed.replace(tzinfo=UTC)
                sent = parsed.timestamp()
            except (TypeError, ValueError, IndexError):
                raise _failed(
                    f"The request date header '{text}' is not an RFC 1123 date."
                ) from None
            self._last_date = (text, sent)
        skew = time.time() - sent  # the client's real clock against ours, not the emulated one
        if skew > MAX_CLOCK_SKEW:
            raise _failed(f"Request date header too old: '{text}'.")
        if skew < -MAX_CLOCK_SKEW:
            raise _failed(f"Request date header is in the future: '{text}'.")
