"""The emulator's Shared Key check, against oracles independent of it: the documented
example string to sign, the official SDK's signing policy, and the SDK variants the
service accepts; and it never borrows the client's signer."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from emulator_helpers import TEST_KEY

from fleet_reimage.emulator import AccountSpec, BatchOperationError
from fleet_reimage.emulator.auth import Authenticator, strings_to_sign

EMULATOR = Path(__file__).resolve().parent.parent / "fleet_reimage" / "emulator"
DATE = "Tue, 29 Jul 2014 21:49:13 GMT"


class Tokens:
    def __init__(self) -> None:
        self.accepted_tokens: set[str] = set()


def test_the_documented_example_string_to_sign() -> None:
    # batch-rest.md / the REST reference: GET, no body, ocp-date set, two query parameters.
    documented = (
        "GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:Tue, 29 Jul 2014 21:49:13 GMT\n/myaccount/jobs"
        "\napi-version:2014-01-01.1.0\ntimeout:20"
    )
    texts = list(
        strings_to_sign(
            "GET", "/jobs?timeout=20&api-version=2014-01-01.1.0", {"ocp-date": DATE}, "myaccount"
        )
    )
    assert texts[0] == documented


def test_variants_for_zero_length_and_lower_cased_query_names() -> None:
    headers = {"ocp-date": DATE, "Content-Type": "application/json; odata=minimalmetadata"}
    texts = list(strings_to_sign("POST", "/pools/p/nodes/n/reboot?API-Version=1", headers, "a"))
    lengths = {text.split("\n")[3] for text in texts}
    assert lengths == {"0", ""}  # Content-Length signed as 0 (Python) or empty (.NET)
    assert any("\napi-version:1" in text for text in texts)  # .NET lower-cases query names
    assert any("\nAPI-Version:1" in text for text in texts)  # the Python SDK keeps them


def _sdk_signed(method: str, url: str, body: bytes | None = None) -> dict[str, str]:
    """Headers as the official SDK's Shared Key policy signs the request."""
    request = HttpRequest(method, url, content=body, headers={"ocp-date": DATE})
    if body is not None:
        request.headers["Content-Type"] = "application/json; odata=minimalmetadata"
        request.headers["Content-Length"] = str(len(body))
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential("emu", TEST_KEY))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))  # type: ignore[arg-type]
    return dict(request.headers)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "http://h/pools?api-version=2025-06-01&$select=id,state&maxresults=10", None),
        ("POST", "http://h/pools/p/nodes/n%2F1/reimage?api-version=2025-06-01&timeOut=30", None),
        ("POST", "http://h/pools/p/nodes/n/reboot?api-version=2025-06-01", b'{"a":"b"}'),
        ("PATCH", "http://h/pools/p?api-version=2024-07-01.20.0", b'{"metadata":[]}'),
    ],
)
def test_the_sdk_signature_is_accepted_and_a_changed_request_is_not(
    method: str, url: str, body: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleet_reimage.emulator.auth.time.time", lambda: 1_406_670_553.0)
    auth = Authenticator(AccountSpec("emu", TEST_KEY), Tokens())
    headers = _sdk_signed(method, url, body)
    raw_path = url[len("http://h") :]
    auth.check(method, raw_path, headers)  # accepted
    with pytest.raises(BatchOperationError) as changed:
        auth.check(method, raw_path.replace("api-version", "api-versio"), headers)
    assert (changed.value.status, changed.value.code) == (403, "AuthenticationFailed")
    tampered = {**headers, "If-Match": "0x8D1"}
    with pytest.raises(BatchOperationError):
        auth.check(method, raw_path, tampered)


def test_a_signature_built_by_hand_from_the_description(monkeypatch: pytest.MonkeyPatch) -> None:
    """The string written out field by field as documented, signed with HMAC-SHA256."""
    monkeypatch.setattr("fleet_reimage.emulator.auth.time.time", lambda: 1_406_670_553.0)
    body = b'{"nodeRebootOption":"requeue"}'
    text = "\n".join(
        [
            "POST",
            "",  # Content-Encoding
            "",  # Content-Language
            str(len(body)),  # Content-Length
            "",  # Content-MD5
            "application/json; odata=minimalmetadata",  # Content-Type
            "",  # Date: empty, ocp-date is sent
            "",  # If-Modified-Since
            "",  # If-Match
            "",  # If-None-Match
            "",  # If-Unmodified-Since
            "",  # Range
            f"ocp-custom:x\nocp-date:{DATE}",  # ocp-* headers, sorted
            "/emu/pools/p/nodes/n/reboot",
            "api-version:2024-07-01.20.0",
            "timeout:30",
        ]
    )
    key = base64.b64decode(TEST_KEY)
    signature = base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()
    headers = {
        "ocp-date": DATE,
        "Ocp-Custom": "x",
        "Date": "Mon, 01 Jan 2001 00:00:00 GMT",  # ignored: ocp-date wins
        "Content-Type": "application/json; odata=minimalmetadata",
        "Content-Length": str(len(body)),
        "Authorization": f"SharedKey emu:{signature}",
    }
    auth = Authenticator(AccountSpec("emu", TEST_KEY), Tokens())
    auth.check("POST", "/pools/p/nodes/n/reboot?timeout=30&api-version=2024-07-01.20.0", headers)
    with pytest.raises(BatchOperationError) as wrong:
        auth.check(
            "POST", "/pools/p/nodes/n/reboot?timeout=31&api-version=2024-07-01.20.0", headers
        )
    detail = dict(wrong.value.values)["AuthenticationErrorDetail"]
    assert "timeout:31" in detail and TEST_KEY not in detail


def test_the_emulator_never_imports_the_clients_signer() -> None:
    for path in EMULATOR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any("sharedkey" in name for name in names), (path.name, names)
