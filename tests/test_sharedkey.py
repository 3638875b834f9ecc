"""Shared Key signing: the documented string-to-sign, parity with the official SDK's policy,
both signing variants, and the key never showing."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import anyio
import pytest
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest as SdkRequest
from clienthelpers import ACCOUNT, OTHER_KEY, TEST_KEY, ScriptedTransport, response
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_reimage.batch.auth import SharedKeyCredential
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.sharedkey import (
    SharedKeySigner,
    SigningVariant,
    decode_key,
    sign,
    string_to_sign,
)

ENDPOINT = "https://clienttest.westeurope.batch.azure.com"
OCP_DATE = "Tue, 29 Jul 2014 21:49:13 GMT"
JSON_TYPE = "application/json; odata=minimalmetadata"


def signer(key: str = TEST_KEY, account: str = ACCOUNT) -> SharedKeySigner:
    return SharedKeySigner(account, decode_key(key))


def sdk_authorization(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None = None,
    key: str = TEST_KEY,
    account: str = ACCOUNT,
) -> str:
    """The Authorization header azure-batch 15.1.0's own policy puts on this request."""
    request = SdkRequest(method, url, headers=dict(headers), content=body)
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(account, key))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return str(request.headers["Authorization"])


# --- the documented example ----------------------------------------------------------------


def test_documented_example_string_to_sign() -> None:
    text = string_to_sign(
        "GET",
        "https://myaccount.batch.core.windows.net/jobs?api-version=2014-01-01.1.0&timeout=20",
        {"ocp-date": OCP_DATE},
        "myaccount",
    )
    assert text == (
        "GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:Tue, 29 Jul 2014 21:49:13 GMT\n"
        "/myaccount/jobs\napi-version:2014-01-01.1.0\ntimeout:20"
    )


def test_signature_is_base64_hmac_sha256_of_the_string() -> None:
    url = f"{ENDPOINT}/pools?api-version=2024-07-01.20.0"
    headers = {"ocp-date": OCP_DATE}
    text = string_to_sign("GET", url, headers, ACCOUNT)
    digest = hmac.new(base64.b64decode(TEST_KEY), text.encode(), hashlib.sha256).digest()
    expected = f"SharedKey {ACCOUNT}:{base64.b64encode(digest).decode()}"
    assert signer().authorization("GET", url, headers) == expected


def test_canonical_headers_and_resource_rules() -> None:
    url = f"{ENDPOINT}/pools/p1/nodes?timeout=5&api-version=v&%24filter=state%20eq%20%27idle%27&e="
    headers = {
        "OCP-Date": OCP_DATE,
        "ocp-custom": "x",
        "ocp-empty": "",  # empty values are not signed
        "Content-Type": JSON_TYPE,
        "client-request-id": "not-signed",
        "If-Match": "etag",
    }
    text = string_to_sign("POST", url, headers, ACCOUNT)
    assert text == (
        f"POST\n\n\n0\n\n{JSON_TYPE}\n\n\netag\n\n\n\n"
        f"ocp-custom:x\nocp-date:{OCP_DATE}\n"
        f"/{ACCOUNT}/pools/p1/nodes\n$filter:state eq 'idle'\napi-version:v\ntimeout:5"
    )
    # Header names are case-insensitive.
    lowered = {name.lower(): value for name, value in headers.items()}
    assert string_to_sign("POST", url, lowered, ACCOUNT) == text


def test_dotnet_variant_string() -> None:
    url = f"{ENDPOINT}/pools/p/nodes/n/reimage?api-version=v&timeOut=30"
    headers = {"ocp-date": OCP_DATE, "Content-Length": "0"}
    python = string_to_sign("POST", url, headers, ACCOUNT, SigningVariant.PYTHON)
    dotnet = string_to_sign("POST", url, headers, ACCOUNT, SigningVariant.DOTNET)
    tail = f"ocp-date:{OCP_DATE}\n/{ACCOUNT}/pools/p/nodes/n/reimage\napi-version:v\n"
    assert python == "POST\n\n\n0\n" + "\n" * 8 + tail + "timeOut:30"
    assert dotnet == "POST\n\n\n\n" + "\n" * 8 + tail + "timeout:30"


# --- parity with the official SDK ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        (
            "GET",
            f"{ENDPOINT}/pools/render-a/nodes?api-version=2024-07-01.20.0"
            "&%24filter=state%20eq%20%27idle%27%20and%20runningTasksCount%20eq%200"
            "&%24select=id%2Cstate&maxresults=5",
            {"ocp-date": OCP_DATE, "client-request-id": "c1", "Accept": "application/json"},
            None,
        ),
        (
            "POST",
            f"{ENDPOINT}/pools/render-a/nodes/tvm-1_1-20250101t000000z/reimage"
            "?api-version=2024-07-01.20.0&timeout=30",
            {
                "ocp-date": OCP_DATE,
                "client-request-id": "c2",
                "return-client-request-id": "true",
                "Content-Type": JSON_TYPE,
                "Content-Length": "32",
            },
            b'{"nodeReimageOption":"requeue"}',
        ),
        (
            "POST",
            f"{ENDPOINT}/pools/render-a/nodes/n1/reboot?api-version=2024-07-01.20.0&timeout=10",
            {"ocp-date": OCP_DATE, "client-request-id": "c3"},
            None,
        ),
    ],
    ids=["get-filter-select", "post-json", "post-no-body"],
)
def test_matches_the_sdk_policy(
    method: str, url: str, headers: dict[str, str], body: bytes | None
) -> None:
    ours = signer().authorization(method, url, headers)
    assert ours == sdk_authorization(method, url, headers, body)
    assert ours.startswith(f"SharedKey {ACCOUNT}:")


def test_sdk_policy_and_ours_agree_on_requests_the_client_builds() -> None:
    """Capture what BatchClient would send, re-sign it with the SDK, compare."""
    accepted = response(202, headers={"request-id": "r"})
    page = response(200, b'{"value": []}')
    transport = ScriptedTransport([page, accepted, accepted, accepted])
    client = BatchClient(ENDPOINT, SharedKeyCredential(ACCOUNT, TEST_KEY), transport)

    async def drive() -> None:
        async for _ in client.list_node_pages(
            "p 1", filter="state eq 'idle' or state eq 'running'", select="id,state", max_results=7
        ):
            pass
        await client.reimage_node("p 1", "n/1", option="terminate", client_request_id="a")
        await client.reimage_node("p", "n", option=None, client_request_id="b")
        await client.reboot_node("p", "n", option="requeue", client_request_id="c", timeout=5)

    anyio.run(drive)
    assert len(transport.sent) == 4
    for request in transport.sent:
        headers = {k: v for k, v in request.headers.items() if k != "Authorization"}
        expected = sdk_authorization(request.method, request.url, headers, request.body)
        assert request.headers["Authorization"] == expected, request.url


_QUERY_NAMES = st.sampled_from(
    ["api-version", "$filter", "$select", "maxresults", "timeout", "timeOut", "$skiptoken"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ-_.$", min_size=1, max_size=12)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "DELETE"]),
    segments=st.lists(_TEXT.filter(bool), min_size=1, max_size=4),
    query=st.lists(st.tuples(_QUERY_NAMES, _TEXT), max_size=6),
    # Lower-case names only: the SDK matches "ocp-" case-sensitively (an SDK quirk; the
    # documented rule, which we follow, lower-cases names first; see the test below).
    ocp=st.dictionaries(
        st.sampled_from(["ocp-date", "ocp-foo", "ocp-bar"]), _TEXT.filter(str.strip), max_size=3
    ),
    content_type=st.sampled_from([None, JSON_TYPE, "text/plain"]),
    length=st.sampled_from([None, "0", "17"]),
)
def test_matches_the_sdk_for_any_request(
    method: str,
    segments: list[str],
    query: list[tuple[str, str]],
    ocp: dict[str, str],
    content_type: str | None,
    length: str | None,
) -> None:
    path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    encoded = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in query)
    url = f"{ENDPOINT}{path}" + (f"?{encoded}" if encoded else "")
    headers = {"ocp-date": OCP_DATE, **{k: v.strip() for k, v in ocp.items()}}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if length is not None:
        headers["Content-Length"] = length
    ours = signer().authorization(method, url, headers)
    assert ours == sdk_authorization(method, url, headers)


def test_mixed_case_ocp_headers_are_signed_lower_cased() -> None:
    url = f"{ENDPOINT}/pools?api-version=v"
    text = string_to_sign("GET", url, {"Ocp-Date": OCP_DATE, "OCP-Zed": "z"}, ACCOUNT)
    assert f"ocp-date:{OCP_DATE}\nocp-zed:z\n/{ACCOUNT}/pools" in text


# --- verification: both variants, nothing else ---------------------------------------------


def test_verify_accepts_both_variants_and_nothing_else() -> None:
    key = decode_key(TEST_KEY)
    url = f"{ENDPOINT}/pools/p/nodes/n/reimage?api-version=v&timeOut=30"
    headers = {"ocp-date": OCP_DATE, "Content-Length": "0"}
    ours = signer()
    python = sign(key, string_to_sign("POST", url, headers, ACCOUNT, SigningVariant.PYTHON))
    dotnet = sign(key, string_to_sign("POST", url, headers, ACCOUNT, SigningVariant.DOTNET))
    assert python != dotnet  # the variants really differ on this request
    assert ours.verify("POST", url, headers, python)
    assert ours.verify("POST", url, headers, dotnet)
    assert ours.authorization("POST", url, headers) == f"SharedKey {ACCOUNT}:{python}"
    other = sign(decode_key(OTHER_KEY), string_to_sign("POST", url, headers, ACCOUNT))
    assert not ours.verify("POST", url, headers, other)
    assert not ours.verify("POST", url, headers, "")
    assert not ours.verify("GET", url, headers, python)  # the verb is signed
    changed = {**headers, "ocp-date": "Tue, 29 Jul 2014 21:49:14 GMT"}
    assert not ours.verify("POST", url, changed, python)  # so is the date
    assert not ours.verify("POST", url.replace("n/reimage", "m/reimage"), headers, python)


@settings(max_examples=50, deadline=None)
@given(query=st.lists(st.tuples(_QUERY_NAMES, _TEXT), max_size=4), body=st.booleans())
def test_own_signatures_always_verify(query: list[tuple[str, str]], body: bool) -> None:
    encoded = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in query)
    url = f"{ENDPOINT}/pools/p/nodes/n/reboot?{encoded}"
    headers = {"ocp-date": OCP_DATE}
    if body:
        headers |= {"Content-Type": JSON_TYPE, "Content-Length": "30"}
    authorization = signer().authorization("POST", url, headers)
    signature = authorization.removeprefix(f"SharedKey {ACCOUNT}:")
    assert signer().verify("POST", url, headers, signature)
    assert not signer(OTHER_KEY).verify("POST", url, headers, signature)


# --- the key never shows -------------------------------------------------------------------


def _secret_forms(key: str) -> list[str]:
    raw = base64.b64decode(key)
    return [key, key.rstrip("="), repr(raw), raw.decode("latin-1"), raw.hex()]


def test_key_never_in_repr_or_str() -> None:
    ours = signer()
    credential = SharedKeyCredential(ACCOUNT, TEST_KEY)
    shown = [repr(ours), str(ours), repr(credential), str(credential)]
    for text in shown:
        assert ACCOUNT in text and "redacted" in text
        for secret in _secret_forms(TEST_KEY):
            assert secret not in text


def test_a_malformed_key_is_reported_without_the_key() -> None:
    bad = "not base64 at all: s3cr3t!"
    with pytest.raises(ValueError) as caught:
        decode_key(bad)
    assert bad not in str(caught.value) and "s3cr3t" not in str(caught.value)
    with pytest.raises(ValueError) as caught_again:
        SharedKeyCredential(ACCOUNT, bad)
    assert "s3cr3t" not in str(caught_again.value)
