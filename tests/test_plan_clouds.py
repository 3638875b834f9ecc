"""Entra credentials go only where the plan's cloud says: a known sign-in host, the Batch
resource of the endpoint's cloud, an endpoint under that cloud's Batch suffix. Anything else
is a validation error with its line, unless the account says ``custom_cloud: true``, and
then every run warns, naming the hosts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from clihelpers import cli_env, fleet_reimage

from fleet_reimage.engine.connect import connect
from fleet_reimage.errors import InputError, Problem
from fleet_reimage.plan import EntraAuth, Plan, parse_plan

PUBLIC = "https://acct.westus2.batch.azure.com"
CHINA = "https://acct.chinanorth3.batch.chinacloudapi.cn"
USGOV = "https://acct.usgovvirginia.batch.usgovcloudapi.net"


def plan_text(endpoint: str, auth: str, extra: str = "") -> str:
    return (
        "version: 1\n"
        "name: clouds\n"
        "accounts:\n"
        "  - name: a\n"
        f"    endpoint: {endpoint}\n"
        f"    auth: {auth}\n"
        f"{extra}"
        "    pools: [{match: '*'}]\n"
    )


def parse(text: str, folder: Path) -> Plan:
    return parse_plan(text, folder / "plan.yaml")


def problems(text: str, folder: Path) -> list[Problem]:
    with pytest.raises(InputError) as caught:
        parse(text, folder)
    return caught.value.errors


@pytest.mark.parametrize(
    ("endpoint", "authority", "audience"),
    [
        (PUBLIC, "login.microsoftonline.com", "https://batch.core.windows.net/"),
        (PUBLIC, "https://login.microsoftonline.com/", "https://batch.core.windows.net"),
        (CHINA, "login.chinacloudapi.cn", "https://batch.chinacloudapi.cn/"),
        (USGOV, "https://login.microsoftonline.us", "https://batch.core.usgovcloudapi.net/"),
    ],
)
def test_the_clouds_own_hosts_are_accepted(
    tmp_path: Path, endpoint: str, authority: str, audience: str
) -> None:
    text = plan_text(endpoint, f"{{type: entra, authority: '{authority}', audience: '{audience}'}}")
    plan = parse(text, tmp_path)
    assert plan.warnings == ()
    auth = plan.accounts[0].auth
    assert isinstance(auth, EntraAuth)
    assert auth.audience is not None and auth.audience.endswith("/")  # the resource id as-is
    assert plan.accounts[0].custom_cloud is False


@pytest.mark.parametrize(
    ("endpoint", "auth", "path", "says"),
    [
        # The review's three reproductions.
        (
            PUBLIC,
            "{type: entra, audience: 'https://management.azure.com/'}",
            "accounts[0].auth.audience",
            "https://batch.core.windows.net/",
        ),
        (
            PUBLIC,
            "{type: entra, credential: environment, authority: 'https://localhost:8443'}",
            "accounts[0].auth.authority",
            "not a Microsoft Entra sign-in host",
        ),
        (
            "https://localhost:8443",
            "{type: entra}",
            "accounts[0].endpoint",
            "*.batch.azure.com",
        ),
        # And their neighbours.
        ("https://batch.example.com", "{type: entra}", "accounts[0].endpoint", "custom_cloud"),
        ("https://batch.azure.com.evil.example", "{type: entra}", "accounts[0].endpoint", ""),
        (
            CHINA,
            "{type: entra, authority: login.microsoftonline.com}",
            "accounts[0].auth.authority",
            "login.chinacloudapi.cn",
        ),
        (
            PUBLIC,
            "{type: entra, audience: 'https://batch.chinacloudapi.cn/'}",
            "accounts[0].auth.audience",
            "https://batch.core.windows.net/",
        ),
        (
            PUBLIC,
            "{type: entra, authority: 'https://login.microsoftonline.com/contoso'}",
            "accounts[0].auth.authority",
            "tenant_id",
        ),
    ],
)
def test_tokens_for_elsewhere_are_validation_errors(
    tmp_path: Path, endpoint: str, auth: str, path: str, says: str
) -> None:
    (problem,) = problems(plan_text(endpoint, auth), tmp_path)
    assert problem.path == path, problem.render()
    assert problem.line is not None and problem.column is not None
    assert says in problem.message, problem.message
    assert "custom_cloud: true" in problem.message, problem.message


def test_an_emulator_account_with_entra_needs_a_custom_cloud(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("account: {name: emu}\n")
    text = (
        "version: 1\nname: e\naccounts:\n  - name: a\n    emulator: fleet.yaml\n"
        "    auth: {type: entra}\n    pools: [{match: '*'}]\n"
    )
    (problem,) = problems(text, tmp_path)
    assert problem.path == "accounts[0].auth" and "custom_cloud" in problem.message


def test_custom_cloud_needs_the_hosts_it_cannot_infer(tmp_path: Path) -> None:
    text = plan_text(
        "https://batch.local.azurestack.external", "{type: entra}", "    custom_cloud: true\n"
    )
    found = problems(text, tmp_path)
    assert [p.path for p in found] == ["accounts[0].auth"]
    assert "authority" in found[0].message and "audience" in found[0].message


STACK_AUTH = (
    "{type: entra, authority: 'https://login.local.azurestack.external',"
    " audience: 'https://batch.local.azurestack.external/'}"
)


def test_custom_cloud_accepts_other_hosts_and_warns_naming_them(tmp_path: Path) -> None:
    text = plan_text(
        "https://acct.local.azurestack.external", STACK_AUTH, "    custom_cloud: true\n"
    )
    plan = parse(text, tmp_path)
    assert plan.accounts[0].custom_cloud is True
    (warning,) = plan.warnings
    assert warning.path == "accounts[0].custom_cloud" and warning.line == 7
    for host in ("acct.local.azurestack.external", "login.local.azurestack.external"):
        assert host in warning.message
    assert "https://batch.local.azurestack.external/" in warning.message


def test_custom_cloud_must_be_a_boolean_and_means_nothing_without_entra(tmp_path: Path) -> None:
    (problem,) = problems(
        plan_text(PUBLIC, "{type: entra}", "    custom_cloud: 'true'\n"), tmp_path
    )
    assert problem.path == "accounts[0].custom_cloud"
    shared = "{type: shared-key, account: acct, key_env: K}"
    plan = parse(plan_text(PUBLIC, shared, "    custom_cloud: true\n"), tmp_path)
    (warning,) = plan.warnings
    assert warning.path == "accounts[0].custom_cloud" and "Entra" in warning.message


def test_every_run_of_a_custom_cloud_warns_naming_the_hosts(tmp_path: Path) -> None:
    """connect() (what plan, run and resume go through) logs the hosts tokens go to."""
    text = plan_text(
        "https://acct.local.azurestack.external", STACK_AUTH, "    custom_cloud: true\n"
    )
    plan = parse(text, tmp_path)

    async def open_connections() -> None:
        async with connect(plan):
            pass

    with structlog.testing.capture_logs() as logs:
        anyio.run(open_connections)
    (event,) = [e for e in logs if e["event"] == "custom cloud"]
    assert event["log_level"] == "warning" and event["account"] == "a"
    assert event["endpoint_host"] == "acct.local.azurestack.external"
    assert event["authority_host"] == "login.local.azurestack.external"
    assert event["audience"] == "https://batch.local.azurestack.external/"


@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP port that counts the connections made to it (a stand-in sign-in host)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_client_secret_is_never_sent_to_a_host_the_plan_names(
    tmp_path: Path, listener: tuple[int, list[int]]
) -> None:
    """The review's reproduction, end to end: nothing even connects to the named host."""
    port, accepted = listener
    auth = f"{{type: entra, credential: environment, authority: 'https://127.0.0.1:{port}'}}"
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(PUBLIC, auth), encoding="utf-8")
    env = cli_env(
        AZURE_TENANT_ID="00000000-0000-0000-0000-000000000001",
        AZURE_CLIENT_ID="00000000-0000-0000-0000-000000000002",
        AZURE_CLIENT_SECRET="not-a-real-secret~0123456789",
    )
    result = fleet_reimage("plan", str(plan), cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{plan}:6:" in result.stderr and "auth.authority" in result.stderr
    assert accepted == [], "the sign-in host named by the plan was contacted"
