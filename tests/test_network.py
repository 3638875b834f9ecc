"""What the environment says about the network (``batch/network.py``), as pure functions:
which proxy a URL takes, and that credentials in URLs are never shown."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.batch.errors import ConfigurationError
from fleet_reimage.batch.network import ca_bundle, proxy_for, redact_credentials

VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")


def test_no_proxy_variable_means_direct() -> None:
    assert proxy_for("https://acct.westeurope.batch.azure.com/pools") is None


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy"])
def test_the_proxy_for_https_and_its_credentials(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "http://op%40corp:p%3Ass@proxy.corp.example:3128")
    proxy = proxy_for("https://acct.westeurope.batch.azure.com/pools")
    assert proxy is not None
    assert str(proxy.url) == "http://proxy.corp.example:3128"
    assert proxy.headers == {
        "Proxy-Authorization": "Basic " + base64.b64encode(b"op@corp:p:ss").decode()
    }
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in proxy.display
    assert proxy.display == "http://proxy.corp.example:3128 (with credentials)"
    assert proxy.variable == "HTTPS_PROXY"


def test_http_proxy_is_not_used_for_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    assert proxy_for("https://acct.westeurope.batch.azure.com/pools") is None


@pytest.mark.parametrize(
    ("no_proxy", "bypassed"),
    [
        ("batch.azure.com", True),
        (".batch.azure.com", True),
        ("*", True),
        ("other.example,acct.westeurope.batch.azure.com", True),
        ("login.microsoftonline.com", False),
        ("", False),
    ],
)
def test_no_proxy(monkeypatch: pytest.MonkeyPatch, no_proxy: str, bypassed: bool) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    found = proxy_for("https://acct.westeurope.batch.azure.com/pools")
    assert (found is None) is bypassed


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/pools", "http://localhost:8080/pools", "http://[::1]:80/x"]
)
def test_loopback_is_never_proxied(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp.example:3128")
    assert proxy_for(url) is None


@pytest.mark.parametrize("scheme", ["https", "socks5"])
def test_a_proxy_aiohttp_cannot_use_is_refused(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"{scheme}://op:hunter2@proxy.corp.example:3128")
    with pytest.raises(ConfigurationError) as caught:
        proxy_for("https://acct.westeurope.batch.azure.com/pools")
    assert "hunter2" not in str(caught.value) and "$HTTPS_PROXY" in str(caught.value)


def test_the_ca_bundle_variables_in_order() -> None:
    assert ca_bundle({}) is None
    assert ca_bundle({"REQUESTS_CA_BUNDLE": "/b.pem"}) == ("REQUESTS_CA_BUNDLE", "/b.pem")
    both = {"REQUESTS_CA_BUNDLE": "/b.pem", "SSL_CERT_FILE": "/a.pem"}
    assert ca_bundle(both) == ("SSL_CERT_FILE", "/a.pem")
    assert ca_bundle({"SSL_CERT_FILE": " ", "REQUESTS_CA_BUNDLE": "/b.pem"}) == (
        "REQUESTS_CA_BUNDLE",
        "/b.pem",
    )


secrets = st.text(
    st.characters(blacklist_categories=["Cs", "Cc", "Zs"], blacklist_characters="/@"),
    min_size=1,
)


@given(user=secrets, password=secrets, before=st.text(max_size=20), path=st.text(max_size=20))
def test_redaction_hides_user_and_password(
    user: str, password: str, before: str, path: str
) -> None:
    text = f"{before} http://{user}:{password}@proxy.example:3128/{path}"
    shown = redact_credentials(text)
    assert f"{user}:{password}@" not in shown
    assert "http://***@proxy.example:3128/" in shown


def test_redaction_leaves_urls_without_credentials_alone() -> None:
    text = "Cannot connect to host proxy.example:3128 ssl:default; url='http://h:1/p?a=b@c'"
    assert redact_credentials(text) == text
    assert redact_credentials("http://u:p@ss@h/x") == "http://***@h/x"


@pytest.mark.parametrize(
    "value", ["op:hunter2@proxy.corp.example:3128", "http://op:hunter2@[proxy.corp.example:3128"]
)
def test_a_proxy_variable_that_is_not_a_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigurationError, match=r"^\$HTTPS_PROXY=") as caught:
        proxy_for("https://acct.westeurope.batch.azure.com/pools")
    assert "hunter2" not in str(caught.value)
