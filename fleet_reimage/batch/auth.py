"""Credentials for Batch requests: Shared Key and Microsoft Entra ID, plus sovereign clouds.

A credential adds the Authorization header to a request (``authorize``) and can be asked to
``refresh`` once after the server refused it (401/403). Neither ever shows its secret in a
repr, a log line or an exception message.

Sovereign clouds are inferred from the endpoint's host and can be overridden::

    host suffix                 token audience                          authority
    *.batch.azure.com           https://batch.core.windows.net/         login.microsoftonline.com
    *.batch.chinacloudapi.cn    https://batch.chinacloudapi.cn/         login.chinacloudapi.cn
    *.batch.usgovcloudapi.net   https://batch.core.usgovcloudapi.net/   login.microsoftonline.us
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio

from .errors import AuthFailed
from .network import redact_credentials
from .sharedkey import SharedKeySigner, decode_key
from .transport import HttpRequest

TOKEN_REFRESH_MARGIN = 300.0  # refresh an Entra token this many seconds before it expires


@dataclass(frozen=True, slots=True)
class Cloud:
    name: str
    audience: str  # the Batch resource; the token scope is audience + "/.default"
    authority_host: str

    @property
    def scope(self) -> str:
        # The Batch resource id ends with "/", and the scope appends "/.default": the double
        # slash is what the service expects (https://batch.core.windows.net//.default).
        return f"{self.audience}/.default"


PUBLIC_CLOUD = Cloud("public", "https://batch.core.windows.net/", "login.microsoftonline.com")
CHINA_CLOUD = Cloud("china", "https://batch.chinacloudapi.cn/", "login.chinacloudapi.cn")
US_GOVERNMENT_CLOUD = Cloud(
    "usgovernment", "https://batch.core.usgovcloudapi.net/", "login.microsoftonline.us"
)
# The Batch host suffix of each cloud: Entra tokens of a cloud go to hosts under it only.
CLOUD_BY_BATCH_SUFFIX = (
    (".batch.azure.com", PUBLIC_CLOUD),
    (".batch.chinacloudapi.cn", CHINA_CLOUD),
    (".batch.usgovcloudapi.net", US_GOVERNMENT_CLOUD),
)


def cloud_of_host(host: str) -> Cloud | None:
    """The Azure cloud whose Batch suffix ``host`` ends with, or None (not an Azure Batch host)."""
    name = host.lower().rstrip(".")
    return next((c for suffix, c in CLOUD_BY_BATCH_SUFFIX if name.endswith(suffix)), None)


def cloud_for_endpoint(
    endpoint: str, *, audience: str | None = None, authority_host: str | None = None
) -> Cloud:
    """The cloud an endpoint belongs to (public by default), with optional overrides.

    Whether the overrides are allowed is the plan's business (``plan/clouds.py``)."""
    cloud = cloud_of_host(urlsplit(endpoint).hostname or "") or PUBLIC_CLOUD
    if audience or authority_host:
        cloud = Cloud("custom", audience or cloud.audience, authority_host or cloud.authority_host)
    return cloud


class Credential(Protocol):
    """Adds Authorization to a request; ``refresh`` after a 401/403, True if worth a retry.

    ``rejected`` is the request the server refused: when its credential has already been
    replaced (by a concurrent refresh), the answer is True at once, with no new fetch.
    """

    async def authorize(self, request: HttpRequest) -> None: ...

    async def refresh(self, rejected: HttpRequest | None = None) -> bool: ...

    async def close(self) -> None: ...


class SharedKeyCredential:
    """Shared Key: HMAC-SHA256 over the canonical request with the account key.

    ``reload`` returns the base64 key again (from the environment variable or key file); it
    is called on ``refresh`` so that a key rotated while the run was going is picked up.
    """

    def __init__(self, account: str, key: str, reload: Callable[[], str] | None = None) -> None:
        self.account = account
        self._reload = reload
        self._signer = SharedKeySigner(account, decode_key(key))

    def __repr__(self) -> str:
        return f"SharedKeyCredential(account={self.account!r}, key=<redacted>)"

    async def authorize(self, request: HttpRequest) -> None:
        request.headers["Authorization"] = self._signer.authorization(
            request.method, request.url, request.headers
        )

    async def refresh(self, rejected: HttpRequest | None = None) -> bool:
        current = self._signer
        if rejected is not None and rejected.headers.get("Authorization") != current.authorization(
            rejected.method, rejected.url, rejected.headers
        ):
            return True  # signed with a key another request has since replaced: resend
        if self._reload is None:
            return False
        try:
            key = await anyio.to_thread.run_sync(self._reload)
            signer = SharedKeySigner(self.account, decode_key(key))
        except Exception:  # a key that cannot be re-read is simply not refreshed
            return False
        self._signer = signer
        # Compared with the key before the reload, not with whatever a concurrent refresh
        # installed meanwhile: otherwise only the first of many rejected requests resends.
        return signer != current

    async def close(self) -> None:
        return None


class AsyncTokenSource(Protocol):
    """What we need of an azure-identity async credential."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...

    async def close(self) -> None: ...


class EntraCredential:
    """Bearer tokens from azure-identity, cached and refreshed ahead of expiry and on 401."""

    def __init__(
        self, source: AsyncTokenSource, cloud: Cloud, clock: Callable[[], float] = time.time
    ) -> None:
        self.cloud = cloud
        self._source = source
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"EntraCredential(cloud={self.cloud.name!r}, token=<redacted>)"

    async def authorize(self, request: HttpRequest) -> None:
        if self._token is None or self._clock() >= self._expires_on - TOKEN_REFRESH_MARGIN:
            await self._fetch(force=False)
        request.headers["Authorization"] = f"Bearer {self._token}"

    async def refresh(self, rejected: HttpRequest | None = None) -> bool:
        used = None
        if rejected is not None:
            used = rejected.headers.get("Authorization", "").removeprefix("Bearer ") or None
        await self._fetch(force=True, seen=used)
        return True

    async def _fetch(self, *, force: bool, seen: str | None = None) -> None:
        """Fetch a token unless one newer than ``seen`` (default: the current one) exists."""
        if seen is None:
            seen = self._token
        async with self._lock:
            # Another task may have fetched while we waited for the lock.
            fresh = self._token is not None and self._token != seen
            if fresh or (
                not force
                and self._token is not None
                and self._clock() < self._expires_on - TOKEN_REFRESH_MARGIN
            ):
                return
            try:
                token = await self._source.get_token(self.cloud.scope)
            except Exception as exc:  # azure-identity raises many kinds
                # None carries a secret, but a network error may quote the proxy's URL.
                raise AuthFailed(
                    401,
                    code="CredentialUnavailable",
                    message=f"could not get an Entra ID token: {redact_credentials(str(exc))}",
                ) from None
            self._token, self._expires_on = token.token, float(token.expires_on)

    async def close(self) -> None:
        await self._source.close()


ENTRA_CREDENTIAL_KINDS = (
    "default",
    "azure-cli",
    "managed-identity",
    "environment",
    "workload-identity",
)


def azure_identity_source(
    kind: str,
    cloud: Cloud,
    *,
    client_id: str | None = None,
    tenant_id: str | None = None,
    transport: Any = None,
) -> AsyncTokenSource:
    """The azure-identity async credential an ``entra`` auth block names.

    ``transport`` (an azure-core async transport, see ``identity_transport``) carries its
    token requests; ``azure-cli`` runs ``az`` and makes none.
    """
    from azure.identity import aio as identity  # imported late: slow, and only for Entra

    authority = {"authority": cloud.authority_host}
    http = {} if transport is None else {"transport": transport}
    source: AsyncTokenSource
    if kind == "default":
        source = identity.DefaultAzureCredential(
            managed_identity_client_id=client_id,
            workload_identity_client_id=client_id,
            workload_identity_tenant_id=tenant_id,
            **authority,
            **http,
        )
    elif kind == "azure-cli":
        source = identity.AzureCliCredential(tenant_id=tenant_id or "")
    elif kind == "managed-identity":
        source = identity.ManagedIdentityCredential(client_id=client_id, **http)
    elif kind == "environment":
        source = identity.EnvironmentCredential(**authority, **http)
    elif kind == "workload-identity":
        source = identity.WorkloadIdentityCredential(
            client_id=client_id, tenant_id=tenant_id, **authority, **http
        )
    else:
        raise ValueError(
            f"unknown Entra credential {kind!r}; use one of {', '.join(ENTRA_CREDENTIAL_KINDS)}"
        )
    return source


@asynccontextmanager
async def identity_transport(ssl_context: ssl.SSLContext) -> AsyncIterator[Any]:
    """An azure-core transport for token requests: the route and trust the Batch calls use.

    azure-identity's own default (an aiohttp session with ``trust_env``, no cookies, no
    decompression), on a connector with fleet-reimage's TLS context: the same CA bundle
    (``$SSL_CERT_FILE`` / ``$REQUESTS_CA_BUNDLE``) and the same proxy variables as the
    Batch transport (``network.py``).
    """
    import aiohttp
    from azure.core.pipeline.transport import AioHttpTransport

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context),
        trust_env=True,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    try:
        yield AioHttpTransport(session=session, session_owner=False)
    finally:
        await session.close()
