"""Egress proxies and CA bundles as Azure tooling reads them (issue 14), end to end.

A test proxy (``proxyserver.py``) on 127.0.0.1 asks for credentials, opens tunnels only to
the ``.test`` names it maps (a reserved top-level domain: nothing can resolve it, so the
service is reachable only through the proxy) and terminates their TLS with a test CA that
the client trusts through ``$REQUESTS_CA_BUNDLE``, as behind a TLS-inspecting proxy.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from clienthelpers import fake_server
from clihelpers import cli_env
from proxyserver import Route, connect_proxy
from runhelpers import KEY, emulator, reimages, write_plan
from tlscerts import Authority, new_authority
from transporthelpers import get, opened

from fleet_reimage.batch.aiohttp_transport import AiohttpTransport
from fleet_reimage.batch.auth import (
    Cloud,
    EntraCredential,
    azure_identity_source,
    identity_transport,
)
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.errors import AuthFailed, ConfigurationError, RequestNotSent
from fleet_reimage.batch.network import tls_context

pytestmark = pytest.mark.anyio

BATCH = "acct.westeurope.batch.test"
LOGIN = "login.fleet.test"
USER, PASSWORD = "operator", "pr0xy-s3cret-Pa55"
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY")
FIRE_AND_FORGET = """
    waves: ["100%"]
    max_unavailable: "100%"
    health: {wait: false}
    failure_budget: "100%"
"""


@pytest.fixture
def authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Authority:
    """A test CA trusted through $REQUESTS_CA_BUNDLE, and no proxy variable set yet."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    ca = new_authority(tmp_path / "ca")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.pem))
    return ca


@pytest.fixture
def no_name_resolution(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """In-process tests: any name lookup is refused (and recorded), so nothing can leave."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def refuse(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("127.0.0.1", "localhost"):
            return real(host, *args, **kwargs)
        asked.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return asked


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_a_run_reaches_the_service_only_through_the_proxy(
    tmp_path: Path, authority: Authority
) -> None:
    """``fleet-reimage run`` against ``https://acct...batch.test`` with $HTTPS_PROXY (with
    credentials) and $REQUESTS_CA_BUNDLE: every request arrives through the proxy, and
    the proxy's password is in no output, log line, journal or report."""
    pools = [{"id": "p1", "nodes": 12}, {"id": "p2", "nodes": 8}]
    folder = tmp_path / "run"
    folder.mkdir()
    async with emulator(pools) as emu:
        routes = {f"{BATCH}:443": Route(authority.server_context(tmp_path, BATCH), emu.port)}
        async with connect_proxy(routes, credentials=(USER, PASSWORD)) as proxy:
            plan = write_plan(folder, f"https://{BATCH}", rollout=FIRE_AND_FORGET)
            env = cli_env(HTTPS_PROXY=proxy.url_with(USER, PASSWORD))
            journal, log = folder / "j.db", folder / "run.log"
            with anyio.fail_after(60):
                ran = await cli(
                    folder,
                    env,
                    "run",
                    str(plan),
                    "--yes",
                    "--journal",
                    str(journal),
                    "--log-file",
                    str(log),
                )
                report = await cli(
                    folder, env, "report", "--latest", "--journal", str(journal), "--format", "json"
                )
        done = reimages(emu)
    out, err = ran.stdout.decode(), ran.stderr.decode()
    assert ran.returncode == 0, out + err
    assert len(done) == 20 and set(done.values()) == {1}
    posts = [target for _, method, target in proxy.requests if method == "POST"]
    assert len(posts) == 20 and all("/reimage?" in target for target in posts)
    assert {host for host, _, _ in proxy.requests} == {BATCH}
    assert proxy.tunnels and {t.target for t in proxy.tunnels} == {f"{BATCH}:443"}
    assert {t.proxy_authorization for t in proxy.tunnels} == {basic(USER, PASSWORD)}
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    said = [line for line in lines if line["event"] == "requests go through a proxy"]
    assert [(s["proxy"], s["proxy_from"]) for s in said] == [
        (f"{proxy.url} (with credentials)", "$HTTPS_PROXY")
    ]
    artefacts = {
        "stdout": out.encode(),
        "stderr": err.encode(),
        "log": log.read_bytes(),
        "report": report.stdout + report.stderr,
    }
    artefacts.update({p.name: p.read_bytes() for p in folder.glob("j.db*")})
    for name, content in artefacts.items():
        assert PASSWORD.encode() not in content, name
        assert base64.b64encode(f"{USER}:{PASSWORD}".encode()) not in content, name


async def test_an_entra_token_takes_the_batch_route(
    tmp_path: Path,
    authority: Authority,
    monkeypatch: pytest.MonkeyPatch,
    no_name_resolution: list[str],
) -> None:
    """The token request (azure-identity, through ``identity_transport``) and the Batch call
    both go through the proxy named by $HTTPS_PROXY and trust $REQUESTS_CA_BUNDLE."""
    tokens: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        tokens.append({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        body = {"access_token": "tok1", "expires_in": 3600, "token_type": "Bearer"}
        return web.json_response(body)

    monkeypatch.setenv("AZURE_TENANT_ID", "tenant-1")
    monkeypatch.setenv("AZURE_CLIENT_ID", "client-1")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "client-secret-1")
    pools = [{"id": "p1", "nodes": 2}]
    route = "/tenant-1/oauth2/v2.0/token"
    async with (
        emulator(pools, account={"name": "emu", "key": KEY, "bearer_tokens": ["tok1"]}) as emu,
        fake_server([("POST", route, token)]) as entra,
    ):
        routes = {
            f"{BATCH}:443": Route(authority.server_context(tmp_path, BATCH), emu.port),
            f"{LOGIN}:443": Route(authority.server_context(tmp_path, LOGIN), _port(entra.url)),
        }
        async with connect_proxy(routes, credentials=(USER, PASSWORD)) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url_with(USER, PASSWORD))
            context = tls_context()
            cloud = Cloud("custom", "https://batch.core.windows.net/", LOGIN)
            with anyio.fail_after(20):
                async with identity_transport(context) as via:
                    source = azure_identity_source("environment", cloud, transport=via)
                    transport = AiohttpTransport(ssl_context=context)
                    client = BatchClient(
                        f"https://{BATCH}", EntraCredential(source, cloud), transport
                    )
                    try:
                        pool = await client.get_pool("p1")
                    finally:
                        await client.close()
                        await transport.close()
    assert pool.id == "p1"
    assert [t["client_id"] for t in tokens] == ["client-1"]
    assert [(h, m) for h, m, _ in proxy.requests] == [(LOGIN, "POST"), (BATCH, "GET")]
    assert {t.proxy_authorization for t in proxy.tunnels} == {basic(USER, PASSWORD)}
    assert no_name_resolution == []  # only the proxy (an address) was connected to


async def test_wrong_proxy_credentials_stop_with_auth_failed(
    tmp_path: Path, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """407 from the proxy: the request was not sent, and every request would meet it, so it
    is an authentication failure (run-wide); the message names no password."""
    async with connect_proxy({}, credentials=(USER, PASSWORD)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with(USER, "wrong-" + PASSWORD))
        with anyio.fail_after(10):
            async with opened() as transport:
                with pytest.raises(AuthFailed) as caught:
                    await transport.send(get(f"https://{BATCH}/pools"))
    assert caught.value.status == 407 and "proxy refused our credentials" in str(caught.value)
    assert PASSWORD not in repr(caught.value.__dict__) + str(caught.value)
    assert [t.target for t in proxy.tunnels] == [f"{BATCH}:443"]


async def test_a_tunnel_the_proxy_refuses_is_not_sent(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with connect_proxy({}) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url_with(USER, PASSWORD))
        with anyio.fail_after(10):
            async with opened() as transport:
                with pytest.raises(RequestNotSent, match="could not connect") as caught:
                    await transport.send(get(f"https://{BATCH}/pools"))
    assert PASSWORD not in str(caught.value)
    assert [(t.target, t.status) for t in proxy.tunnels] == [(f"{BATCH}:443", 403)]


async def test_loopback_and_no_proxy_hosts_are_reached_directly(
    authority: Authority, monkeypatch: pytest.MonkeyPatch, no_name_resolution: list[str]
) -> None:
    """A proxy cannot reach this machine's loopback: 127.0.0.1 is never proxied, whatever
    $HTTP_PROXY says; $NO_PROXY is honoured for other names."""
    async with connect_proxy({}) as proxy, fake_server() as direct:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", ".batch.test")
        with anyio.fail_after(10):
            async with opened() as transport:
                answered = await transport.send(get(direct.url + "/pools"))
                with pytest.raises(RequestNotSent):  # direct to a .test name: no such host
                    await transport.send(get(f"https://{BATCH}/pools", timeout=5))
            assert transport.proxies == {}
    assert answered.status == 599  # the fake server's "no route": it was reached
    assert proxy.tunnels == []
    assert no_name_resolution == [BATCH]


async def test_an_https_proxy_is_refused_not_bypassed(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp ignores an https:// proxy from the environment (with a warning) and connects
    directly; a tool behind a mandatory proxy must say so instead."""
    monkeypatch.setenv("HTTPS_PROXY", f"https://{USER}:{PASSWORD}@proxy.fleet.test:3128")
    with anyio.fail_after(10):
        async with opened() as transport:
            with pytest.raises(ConfigurationError, match=r"\$HTTPS_PROXY.*https://") as caught:
                await transport.send(get(f"https://{BATCH}/pools"))
    assert PASSWORD not in str(caught.value)


async def cli(folder: Path, env: dict[str, str], *args: str) -> Any:
    command = [sys.executable, "-m", "fleet_reimage", *args]
    return await anyio.run_process(command, cwd=folder, env=env, check=False)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
