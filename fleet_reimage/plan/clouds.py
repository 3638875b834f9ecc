"""Where an account's Entra credentials may go: the hosts of one Azure cloud, and no other.

An Entra account authenticates by sending a client secret (or a federated token) to the
sign-in host (``authority``), asking for a token for a resource (``audience``), and sending
that token to the endpoint. A plan may therefore only name, for the cloud its endpoint is in
(``*.batch.azure.com`` public, ``*.batch.chinacloudapi.cn`` Azure China,
``*.batch.usgovcloudapi.net`` US Government):

- that cloud's sign-in host (azure-identity's ``AzureAuthorityHosts``) as ``authority``;
- that cloud's Batch resource as ``audience``, so no token for another service (Azure
  Resource Manager, say) is ever sent to a Batch endpoint;
- an endpoint under that cloud's Batch suffix, so a Batch token never goes anywhere else.

Anything else is an error unless the account says ``custom_cloud: true`` (Azure Stack, a
private cloud); then both hosts must be given, and every run warns naming them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fleet_reimage.batch.auth import CLOUD_BY_BATCH_SUFFIX, PUBLIC_CLOUD, Cloud, cloud_of_host

from .model import EntraAuth
from .reader import Checker, Node, join, shown

_SUFFIXES = ", ".join(f"*{suffix}" for suffix, _ in CLOUD_BY_BATCH_SUFFIX)
_AUTHORITIES = ", ".join(f"{c.authority_host} ({c.name})" for _, c in CLOUD_BY_BATCH_SUFFIX)
CUSTOM = (
    "For Azure Stack or a private cloud, set custom_cloud: true on the account (every run "
    "then warns, naming the hosts)."
)


def read_custom_cloud(checker: Checker, at: Node | None) -> bool:
    """``custom_cloud``: false unless given as true."""
    if at is None:
        return False
    return checker.boolean(at) is True


def check_entra(
    checker: Checker,
    auth_at: Node,
    auth: EntraAuth,
    endpoint_at: Node | None,
    endpoint: str | None,
    custom_at: Node | None,
) -> EntraAuth | None:
    """The Entra auth of one account, checked against its endpoint's cloud.

    ``endpoint``: the normalised URL and ``endpoint_at`` its node (None for an emulator
    account); ``custom_at``: the ``custom_cloud: true`` node, if the account says so.
    Returns the auth (for a known cloud with the authority as a bare host and the audience
    as the cloud's resource id), or None when errors were reported.
    """
    cloud = None if endpoint is None else cloud_of_host(urlsplit(endpoint).hostname or "")
    if custom_at is not None:
        return _custom(checker, auth_at, auth, cloud, endpoint, custom_at)
    if cloud is None:
        what = "this host is not" if endpoint is not None else "an emulator is not"
        checker.error(
            endpoint_at or auth_at,
            f"with Entra auth the endpoint must be an Azure Batch host ({_SUFFIXES}), so that "
            f"tokens only ever go to Azure Batch, and {what}. {CUSTOM}",
        )
        return None
    errors = checker.error_count
    if auth.authority is not None:
        _check_authority(checker, _child(auth_at, "authority"), auth.authority, cloud)
    if auth.audience is not None and _canonical(auth.audience) != _canonical(cloud.audience):
        checker.error(
            _child(auth_at, "audience"),
            f"the endpoint is in the {cloud.name} cloud, whose Batch resource is "
            f"{cloud.audience}; a token for {shown(auth.audience)} would be sent to the "
            f"endpoint; leave audience out to use the right one. {CUSTOM}",
        )
    if checker.error_count > errors:
        return None
    return EntraAuth(
        credential=auth.credential,
        client_id=auth.client_id,
        tenant_id=auth.tenant_id,
        authority=None if auth.authority is None else cloud.authority_host,
        audience=None if auth.audience is None else cloud.audience,
    )


def _check_authority(checker: Checker, at: Node, authority: str, cloud: Cloud) -> None:
    parts = urlsplit(_as_url(authority))
    host = (parts.hostname or "").rstrip(".")
    known = {c.authority_host for _, c in CLOUD_BY_BATCH_SUFFIX}
    if parts.path.strip("/"):
        checker.error(
            at,
            f"give the sign-in host only, such as {cloud.authority_host}; the tenant goes "
            f"in tenant_id. {CUSTOM}",
        )
    elif parts.port is not None or host not in known:
        checker.error(
            at,
            f"{shown(authority)} is not a Microsoft Entra sign-in host (use {_AUTHORITIES}): "
            f"a client secret would be sent there. {CUSTOM}",
        )
    elif host != cloud.authority_host:
        checker.error(
            at,
            f"the endpoint is in the {cloud.name} cloud, whose sign-in host is "
            f"{cloud.authority_host}; {host} signs in to another cloud. Leave authority "
            f"out to use the right one. {CUSTOM}",
        )


def _custom(
    checker: Checker,
    auth_at: Node,
    auth: EntraAuth,
    cloud: Cloud | None,
    endpoint: str | None,
    custom_at: Node,
) -> EntraAuth | None:
    """``custom_cloud: true``: any hosts, but none guessed, and a warning naming them."""
    missing = [k for k in ("authority", "audience") if getattr(auth, k) is None and cloud is None]
    if missing:
        checker.error(
            auth_at,
            f"a custom cloud needs auth.{' and auth.'.join(missing)}: they cannot be inferred "
            "from an endpoint that is not an Azure Batch host",
        )
        return None
    hosts = entra_hosts(endpoint, auth)
    checker.warning(
        custom_at,
        f"custom cloud: credentials are sent to the sign-in host {hosts['authority_host']}, "
        f"and tokens for {hosts['audience']} to the endpoint host "
        f"{hosts['endpoint_host'] or '(the emulator)'}; check that these are the hosts you mean",
    )
    return auth


def entra_hosts(endpoint: str | None, auth: EntraAuth) -> dict[str, str]:
    """Where an account's Entra credentials go: endpoint host, sign-in host, token audience."""
    host = "" if endpoint is None else urlsplit(endpoint).hostname or ""
    cloud = cloud_of_host(host) or PUBLIC_CLOUD
    return {
        "endpoint_host": host,
        "authority_host": urlsplit(_as_url(auth.authority or cloud.authority_host)).netloc,
        "audience": auth.audience or cloud.audience,
    }


def _as_url(authority: str) -> str:
    return authority if "://" in authority else f"https://{authority}"


def _child(at: Node, key: str) -> Node:
    data = at.value
    line, column = data.value_positions[key]
    return Node(data[key], join(at.path, key), line, column)


def _canonical(audience: str) -> str:
    return audience.rstrip("/").lower()
