"""Who may call the emulator: Shared Key (either SDK signing variant) or a bearer token.

Failures are the service's: 403 ``AuthenticationFailed`` for Shared Key problems (bad
signature, wrong account, missing header, a request date more than 15 minutes off), 401
for a bearer token that is unknown or expired. Detail goes in ``AuthenticationErrorDetail``;
the account key never appears in any answer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

from ..batch.sharedkey import SharedKeySigner, SigningVariant, decode_key, string_to_sign
from .spec import AccountSpec
from .state import BatchOperationError, EmulatorState

MAX_CLOCK_SKEW = 15 * 60.0
FAILED_MESSAGE = (
    "Server failed to authenticate the request. Make sure the value of "
    "Authorization header is formed correctly including the signature."
)
_CHALLENGE = (
    'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'error="invalid_token", resource_id="https://batch.core.windows.net/"'
)


def _failed(detail: str, status: int = 403) -> BatchOperationError:
    headers = {"WWW-Authenticate": _CHALLENGE} if status == 401 else None
    return BatchOperationError(
        status,
        "AuthenticationFailed",
        FAILED_MESSAGE,
        (("AuthenticationErrorDetail", detail),),
        headers=headers,
    )


class Authenticator:
    """Checks a request's credentials against one account and the live token set."""

    def __init__(self, account: AccountSpec, state: EmulatorState) -> None:
        self.account = account.name
        self._signer = SharedKeySigner(account.name, decode_key(account.key))
        self._state = state
        self._prefix = f"SharedKey {account.name}:"
        # Clients send the same ocp-date for every request within a second: parse it once.
        self._last_date: tuple[str, float] = ("", 0.0)

    def check(self, method: str, raw_path: str, headers: Mapping[str, str]) -> None:
        """Return when the request is authenticated; raise the service's error otherwise."""
        authorization = headers.get("Authorization", "")
        if authorization.startswith(self._prefix):
            self._check_date(headers)
            signature = authorization[len(self._prefix) :]
            if not self._signer.verify(method, raw_path, headers, signature):
                shown = string_to_sign(
                    method, raw_path, headers, self.account, SigningVariant.PYTHON
                ).replace("\n", "\\n")
                raise _failed(
                    f"The MAC signature found in the HTTP request '{signature}' is not "
                    "the same as any computed signature. Server used following string "
                    f"to sign: '{shown}'."
                )
            return
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            if credentials.strip() not in self._state.accepted_tokens:
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
