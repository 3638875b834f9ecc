"""Credentials: Entra tokens (cached, refreshed ahead of expiry and once on 401, shared by
concurrent requests), sovereign clouds, plain-http refusal, and secrets never shown."""

from __future__ import annotations

import anyio
import pytest
from azure.identity import AzureAuthorityHosts
from clienthelpers import (
    ACCOUNT,
    TEST_KEY,
    FakeTokenSource,
    ManualTime,
    ScriptedTransport,
    emulated,
    node_counts,
    node_ids,
    response,
)

from fleet_reimage.batch.auth import (
    CHINA_CLOUD,
    PUBLIC_CLOUD,
    TOKEN_REFRESH_MARGIN,
    US_GOVERNMENT_CLOUD,
    Cloud,
    EntraCredential,
    SharedKeyCredential,
    azure_identity_source,
    cloud_for_endpoint,
)
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.errors import AuthFailed, ConfigurationError
from fleet_reimage.batch.transport import HttpRequest

pytestmark = pytest.mark.anyio
SECRET = "s3cr3t-token-"  # every fake token starts with this


def request() -> HttpRequest:
    return HttpRequest("GET", "https://a.westus.batch.azure.com/pools", {})


def bearer(req: HttpRequest) -> str:
    return req.headers["Authorization"].removeprefix("Bearer ")


# --- Entra: caching and refresh (no network) ------------------------------------------------


async def test_token_fetched_once_and_cached() -> None:
    clock = ManualTime()
    source = FakeTokenSource(clock=clock, prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD, clock=clock)
    requests = [request() for _ in range(5)]
    for req in requests:
        await credential.authorize(req)
        clock.now += 60
    assert {bearer(req) for req in requests} == {f"{SECRET}1"}
    assert source.calls == [("https://batch.core.windows.net//.default",)]


async def test_token_refreshed_within_the_margin_of_expiry() -> None:
    clock = ManualTime()
    source = FakeTokenSource(lifetime=3600, clock=clock, prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD, clock=clock)
    first = request()
    await credential.authorize(first)
    expires = clock.now + 3600
    clock.now = expires - TOKEN_REFRESH_MARGIN - 1  # just outside the margin: still cached
    still = request()
    await credential.authorize(still)
    clock.now = expires - TOKEN_REFRESH_MARGIN  # inside it: fetch a new one
    fresh = request()
    await credential.authorize(fresh)
    clock.now = expires + 10_000  # long expired
    late = request()
    await credential.authorize(late)
    assert [bearer(r) for r in (first, still, fresh, late)] == [
        f"{SECRET}1",
        f"{SECRET}1",
        f"{SECRET}2",
        f"{SECRET}3",
    ]
    assert len(source.calls) == 3


async def test_a_token_already_near_expiry_is_not_trusted() -> None:
    clock = ManualTime()
    source = FakeTokenSource(lifetime=TOKEN_REFRESH_MARGIN / 2, clock=clock, prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD, clock=clock)
    for _ in range(3):
        await credential.authorize(request())
    assert len(source.calls) == 3


async def test_refresh_forces_a_new_token() -> None:
    source = FakeTokenSource(prefix=SECRET)
    credential = EntraCredential(source, CHINA_CLOUD)
    await credential.authorize(request())
    assert await credential.refresh() is True
    after = request()
    await credential.authorize(after)
    assert bearer(after) == f"{SECRET}2"
    assert source.calls == [("https://batch.chinacloudapi.cn//.default",)] * 2


async def test_concurrent_requests_share_one_fetch() -> None:
    source = FakeTokenSource(delay=0.05, prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD)
    requests = [request() for _ in range(20)]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for req in requests:
                tg.start_soon(credential.authorize, req)
    assert len(source.calls) == 1
    assert {bearer(req) for req in requests} == {f"{SECRET}1"}


async def test_concurrent_refreshes_share_one_fetch() -> None:
    source = FakeTokenSource(delay=0.05, prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD)
    await credential.authorize(request())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(credential.refresh)
    assert len(source.calls) == 2  # the first token, then one refresh for all ten


async def test_token_source_failure_is_auth_failed() -> None:
    source = FakeTokenSource(fail_with=RuntimeError("no managed identity endpoint"))
    credential = EntraCredential(source, PUBLIC_CLOUD)
    with pytest.raises(AuthFailed) as caught:
        await credential.authorize(request())
    assert caught.value.status == 401 and caught.value.code == "CredentialUnavailable"
    assert "no managed identity endpoint" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    await credential.close()
    assert source.closed


# --- Entra against the emulator -----------------------------------------------------------


async def test_401_refreshes_once_then_succeeds_and_a_second_401_propagates() -> None:
    source = FakeTokenSource(prefix=SECRET)
    credential = EntraCredential(source, PUBLIC_CLOUD)
    async with emulated(credential=credential) as env:
        tokens = env.emu.state.accepted_tokens
        tokens.clear()
        tokens.add(f"{SECRET}1")
        assert [p.id async for p in env.client.list_pools()] == ["cs", "vm", "odd"]
        assert len(source.calls) == 1

        # The service stops accepting token 1 (expired early, revoked ...) and knows token 2.
        tokens.discard(f"{SECRET}1")
        tokens.add(f"{SECRET}2")
        pool = await env.client.get_pool("cs")
        assert pool.id == "cs" and len(source.calls) == 2
        statuses = env.emu.stats(include_nodes=False)["requests"]["by_status"]
        assert statuses == {"200": 2, "401": 1}

        # Now nothing is accepted: one refresh (token 3), then the 401 propagates.
        tokens.clear()
        with pytest.raises(AuthFailed) as on_read:
            await env.client.get_pool("cs")
        assert len(source.calls) == 3
        node_id = node_ids(env.emu, "cs", "idle")[0]
        with pytest.raises(AuthFailed) as on_write:
            await env.client.reimage_node("cs", node_id, option=None, client_request_id="c")
        assert len(source.calls) == 4
        assert node_counts(env.emu, "cs", node_id) == (0, 0)
        statuses = env.emu.stats(include_nodes=False)["requests"]["by_status"]
        assert statuses == {"200": 2, "401": 5}
        bearers = [bearer(r) for r in env.sent]
    assert bearers == [f"{SECRET}{n}" for n in (1, 1, 2, 2, 3, 3, 4)]
    for error in (on_read.value, on_write.value):
        assert (error.status, error.code) == (401, "AuthenticationFailed")
        assert SECRET not in str(error) and SECRET not in repr(error)
    assert on_write.value.client_request_id == "c"


async def test_concurrent_requests_against_the_emulator_share_one_fetch() -> None:
    source = FakeTokenSource(delay=0.05, prefix="tok")  # the fleet accepts "tok1"
    credential = EntraCredential(source, PUBLIC_CLOUD)
    async with emulated(credential=credential) as env:
        ids = node_ids(env.emu, "cs")[:12]
        results: list[str] = []

        async def get(node_id: str) -> None:
            results.append((await env.client.get_node("cs", node_id)).id)

        async with anyio.create_task_group() as tg:
            for node_id in ids:
                tg.start_soon(get, node_id)
    assert sorted(results) == sorted(ids)
    assert len(source.calls) == 1


async def test_concurrent_401s_share_one_refresh() -> None:
    """Requests in flight with the old token each get a 401, at slightly different times.

    Regression: a 401 arriving after another request's refresh had finished fetched yet
    another token (``refresh`` did not know which token had been rejected).
    """
    source = FakeTokenSource(prefix=SECRET)  # instant: refreshes do not overlap
    credential = EntraCredential(source, PUBLIC_CLOUD)
    async with emulated(credential=credential) as env:
        tokens = env.emu.state.accepted_tokens
        tokens.clear()
        tokens.add(f"{SECRET}1")
        await env.client.get_pool("cs")
        tokens.clear()
        tokens.update(f"{SECRET}{n}" for n in range(2, 50))
        ids = node_ids(env.emu, "cs")[:20]
        async with anyio.create_task_group() as tg:
            for node_id in ids:
                tg.start_soon(env.client.get_node, "cs", node_id)
        statuses = env.emu.stats(include_nodes=False)["requests"]["by_status"]
    assert statuses == {"200": 21, "401": 20}
    assert len(source.calls) == 2


async def test_key_rotated_mid_run_with_requests_in_flight() -> None:
    """Every request refused with the old key resends with the new one.

    Regression: only the first refused request resent; the others compared the re-read key
    with the one the first had just installed, saw "no change", and failed with AuthFailed.
    """
    from clienthelpers import OTHER_KEY

    reloads: list[int] = []

    def reload() -> str:
        reloads.append(1)
        return TEST_KEY

    credential = SharedKeyCredential(ACCOUNT, OTHER_KEY, reload=reload)
    async with emulated(credential=credential) as env:
        ids = node_ids(env.emu, "cs")[:20]
        found: list[str] = []

        async def get(node_id: str) -> None:
            found.append((await env.client.get_node("cs", node_id)).id)

        async with anyio.create_task_group() as tg:
            for node_id in ids:
                tg.start_soon(get, node_id)
        statuses = env.emu.stats(include_nodes=False)["requests"]["by_status"]
    assert sorted(found) == sorted(ids)
    assert statuses == {"403": 20, "200": 20}
    assert 1 <= len(reloads) <= 20


async def test_shared_key_refresh_for_a_request_signed_with_a_replaced_key() -> None:
    from clienthelpers import OTHER_KEY

    reloads: list[int] = []

    def reload() -> str:
        reloads.append(1)
        return TEST_KEY

    credential = SharedKeyCredential(ACCOUNT, OTHER_KEY, reload=reload)
    old = HttpRequest("GET", "https://a.westus.batch.azure.com/pools", {"ocp-date": "x"})
    await credential.authorize(old)
    assert await credential.refresh(old) is True and len(reloads) == 1  # new key read
    assert await credential.refresh(old) is True and len(reloads) == 1  # already replaced
    new = HttpRequest("GET", "https://a.westus.batch.azure.com/pools", {"ocp-date": "x"})
    await credential.authorize(new)
    assert await credential.refresh(new) is False and len(reloads) == 2  # key is current


async def test_shared_key_without_reload_does_not_resend_after_403() -> None:
    transport = ScriptedTransport([response(403, b"", {"request-id": "r"})])
    client = BatchClient(
        "https://a.westus.batch.azure.com", SharedKeyCredential(ACCOUNT, TEST_KEY), transport
    )
    with pytest.raises(AuthFailed):
        await client.get_pool("p")
    assert len(transport.sent) == 1


async def test_shared_key_reload_failure_is_quiet_and_keyless() -> None:
    def reload() -> str:
        raise OSError(f"cannot read key file containing {TEST_KEY}")

    credential = SharedKeyCredential(ACCOUNT, TEST_KEY, reload=reload)
    assert await credential.refresh() is False
    same = SharedKeyCredential(ACCOUNT, TEST_KEY, reload=lambda: TEST_KEY)
    assert await same.refresh() is False  # the same key again: not worth a resend


# --- clouds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "cloud"),
    [
        ("https://acct.westeurope.batch.azure.com", PUBLIC_CLOUD),
        ("https://ACCT.WestEurope.Batch.Azure.Com:443/", PUBLIC_CLOUD),
        ("https://acct.chinanorth2.batch.chinacloudapi.cn", CHINA_CLOUD),
        ("https://acct.usgovvirginia.batch.usgovcloudapi.net", US_GOVERNMENT_CLOUD),
        ("http://127.0.0.1:8080", PUBLIC_CLOUD),  # the emulator: public by default
        ("https://acct.batch.chinacloudapi.cn.example.com", PUBLIC_CLOUD),  # look-alike
        ("https://evilbatch.chinacloudapi.cn", PUBLIC_CLOUD),
    ],
)
def test_cloud_for_endpoint(endpoint: str, cloud: Cloud) -> None:
    assert cloud_for_endpoint(endpoint) == cloud


def test_cloud_constants_match_azure_identity_and_the_docs() -> None:
    assert PUBLIC_CLOUD.scope == "https://batch.core.windows.net//.default"
    assert PUBLIC_CLOUD.authority_host == AzureAuthorityHosts.AZURE_PUBLIC_CLOUD
    assert CHINA_CLOUD.audience == "https://batch.chinacloudapi.cn/"
    assert CHINA_CLOUD.authority_host == AzureAuthorityHosts.AZURE_CHINA == "login.chinacloudapi.cn"
    assert CHINA_CLOUD.scope == "https://batch.chinacloudapi.cn//.default"
    assert US_GOVERNMENT_CLOUD.audience == "https://batch.core.usgovcloudapi.net/"
    assert US_GOVERNMENT_CLOUD.authority_host == AzureAuthorityHosts.AZURE_GOVERNMENT
    assert US_GOVERNMENT_CLOUD.authority_host == "login.microsoftonline.us"
    assert US_GOVERNMENT_CLOUD.scope == "https://batch.core.usgovcloudapi.net//.default"


def test_cloud_overrides() -> None:
    china = "https://acct.chinanorth2.batch.chinacloudapi.cn"
    audience_only = cloud_for_endpoint(china, audience="https://batch.example/")
    assert audience_only == Cloud("custom", "https://batch.example/", "login.chinacloudapi.cn")
    assert audience_only.scope == "https://batch.example//.default"
    authority_only = cloud_for_endpoint(china, authority_host="login.example")
    assert authority_only == Cloud("custom", CHINA_CLOUD.audience, "login.example")
    assert cloud_for_endpoint(china, audience=None, authority_host=None) == CHINA_CLOUD


def test_unknown_entra_kind() -> None:
    with pytest.raises(ValueError, match="unknown Entra credential 'password'"):
        azure_identity_source("password", PUBLIC_CLOUD)


# --- endpoints: never credentials over plain http off this machine ----------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://acct.westus.batch.azure.com",
        "http://10.0.0.5:8080",
        "http://127.0.0.1.nip.io:8080",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
        "acct.westus.batch.azure.com",
        "https://",
    ],
)
def test_refused_endpoints(endpoint: str) -> None:
    transport = ScriptedTransport([])
    with pytest.raises(ConfigurationError):
        BatchClient(endpoint, SharedKeyCredential(ACCOUNT, TEST_KEY), transport)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:41234",
        "http://127.0.0.2:41234",
        "http://localhost:41234",
        "http://[::1]:41234/",
        "https://acct.westus.batch.azure.com/",
        "https://10.0.0.5",
    ],
)
def test_accepted_endpoints(endpoint: str) -> None:
    client = BatchClient(endpoint, SharedKeyCredential(ACCOUNT, TEST_KEY), ScriptedTransport([]))
    assert client.endpoint == endpoint.rstrip("/")


# --- secrets never shown --------------------------------------------------------------------


async def test_reprs_never_show_secrets() -> None:
    shared = SharedKeyCredential(ACCOUNT, TEST_KEY)
    source = FakeTokenSource(prefix=SECRET)
    entra = EntraCredential(source, US_GOVERNMENT_CLOUD)
    await entra.authorize(request())  # now it holds a token
    clients = [
        BatchClient("https://a.westus.batch.azure.com", cred, ScriptedTransport([]))
        for cred in (shared, entra)
    ]
    shown = [text for obj in (shared, entra, *clients) for text in (repr(obj), str(obj))]
    assert "redacted" in repr(shared) and "redacted" in repr(entra)
    assert "usgovernment" in repr(entra)
    for text in shown:
        assert TEST_KEY not in text and TEST_KEY.rstrip("=") not in text
        assert SECRET not in text
