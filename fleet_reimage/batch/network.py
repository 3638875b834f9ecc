"""What the environment says about the network: the CA bundle and the egress proxy.

Read as Azure tooling (``az``, the Azure SDKs) reads them:

- **CA bundle**: ``$SSL_CERT_FILE``, else ``$REQUESTS_CA_BUNDLE`` (what ``az`` users set
  behind a TLS-inspecting proxy), else the system's trust store. A bundle that is set but
  cannot be read is a configuration error, never a silent fall-back to the system store.
  Certificates are matched on their subjectAltName only: a certificate that names its host
  only in the subject's CN is refused (``hostname_checks_common_name = False``).
- **Proxy**: ``$HTTPS_PROXY`` / ``$HTTP_PROXY`` (either case) and ``$NO_PROXY``, with
  credentials in the proxy URL or in ``~/.netrc``: aiohttp's ``trust_env`` rules, read once
  per endpoint rather than once per request. Loopback hosts never go through a proxy (as in
  Go's net/http): a proxy cannot reach this machine's loopback, and since plain http is
  allowed only to loopback, every proxied Batch request is TLS inside a CONNECT tunnel.
  The proxy's credentials go only into ``Proxy-Authorization``; they are never logged or
  stored (``Proxy.display`` and ``redact_credentials`` are what may be shown).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from yarl import URL

CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# Up to the last "@" before the path: a password may hold a raw "@" in an environment variable.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def ca_bundle(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """(variable, path) of the CA bundle the environment names, or None for the system store."""
    for name in CA_BUNDLE_VARIABLES:
        path = environ.get(name, "").strip()
        if path:
            return name, path
    return None


def tls_context(environ: Mapping[str, str] = os.environ) -> ssl.SSLContext:
    """The client TLS context: verified, SAN-only host names, the bundle the environment names.

    Blocking (reads the CA bundle): call it off the event loop.
    """
    chosen = ca_bundle(environ)
    try:
        if chosen is None:
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context(cafile=chosen[1])
    except (OSError, ssl.SSLError) as exc:
        assert chosen is not None  # the system store does not fail to load
        name, path = chosen
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"${name}={path}: cannot use it as a CA bundle: {reason}"
        ) from None
    context.hostname_checks_common_name = False
    return context


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy for one endpoint. ``url`` carries no credentials."""

    url: URL
    headers: Mapping[str, str] | None = field(default=None, repr=False)  # Proxy-Authorization
    variable: str = ""  # the environment variable it came from, for messages

    @property
    def display(self) -> str:
        """What may be shown to the operator: the proxy's URL, never its credentials."""
        credentials = " (with credentials)" if self.headers else ""
        return f"{self.url}{credentials}"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_for(url: str) -> Proxy | None:
    """The proxy the environment names for ``url``, or None to connect directly.

    Blocking (``~/.netrc`` may be read): call it off the event loop, once per endpoint.
    """
    from urllib.request import getproxies  # imported here, as aiohttp: only runs need them

    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    target = URL(url)
    if is_loopback_host(target.host):
        return None
    variable = f"{target.scheme.upper()}_PROXY"
    configured = getproxies().get(target.scheme)
    if not configured:
        return None
    if "://" not in configured:
        raise _bad_proxy(variable, configured, "no scheme; write http://[user:password@]host:port")
    try:
        scheme = URL(configured).scheme.lower()
    except ValueError:
        raise _bad_proxy(variable, configured, "not a URL") from None
    if scheme not in ("http", ""):
        # aiohttp would ignore it with a warning and connect directly: never silently.
        raise _bad_proxy(
            variable,
            configured,
            f"a {scheme}:// proxy; only http:// proxies are supported (the tunnel to the "
            "endpoint is TLS either way)",
        )
    try:
        proxy_url, auth = get_env_proxy_for_url(target)
    except LookupError:  # $NO_PROXY names the host
        return None
    except ValueError:
        raise _bad_proxy(variable, configured, "not a URL") from None
    headers = None if auth is None else {"Proxy-Authorization": auth.encode()}
    return Proxy(proxy_url.with_user(None), headers, variable)


def _bad_proxy(variable: str, value: str, why: str) -> ConfigurationError:
    """The error for a proxy variable: its value shown without user and password."""
    scheme, sep, rest = value.rpartition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@")[-1]
    return ConfigurationError(f"${variable}={scheme}{sep}{rest}: {why}")
