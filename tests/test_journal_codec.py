"""The journal's mapping codec: what round-trips, and what is refused as a possible secret."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.journal.codec import (
    _SECRET_VALUE,
    check_mapping,
    decode_mapping,
    encode_mapping,
    secret_like_key,
)

SAFE_KEYS = st.text(alphabet="abcdfghilmnoqruvwxz_", min_size=1, max_size=12)  # no e,j,p,s,t,y
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    # Text that looks like a credential (``bearer ...``, ``sig=``) is refused by design:
    # tested below, and kept out of the round trip here.
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=20).filter(
        lambda text: _SECRET_VALUE.search(text) is None
    )
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SAFE_KEYS, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(SAFE_KEYS, VALUES, max_size=6))
def test_mappings_round_trip(value: dict[str, Any]) -> None:
    assert decode_mapping(encode_mapping(value, "options")) == value


def test_equal_mappings_encode_equally() -> None:
    assert encode_mapping({"b": 1, "a": [1.5]}, "o") == encode_mapping({"a": [1.5], "b": 1}, "o")
    assert decode_mapping(encode_mapping({"t": (1, 2)}, "o")) == {"t": [1, 2]}
    assert decode_mapping(None) == {}


@pytest.mark.parametrize(
    "name",
    ["key", "token", "password", "secret", "apiKey", "ACCOUNT_KEY", "sas-token", "client_secret",
     "db_passwd", "Credentials", "refreshToken"],
)  # fmt: skip
def test_secret_looking_keys(name: str) -> None:
    assert secret_like_key(name)
    with pytest.raises(ValueError, match="looks like a secret"):
        check_mapping({"outer": {name: "x"}}, "options")


@pytest.mark.parametrize("name", ["deadline", "wave_size", "max_failures", "health", "pool"])
def test_ordinary_keys(name: str) -> None:
    assert not secret_like_key(name)


@pytest.mark.parametrize(
    "value",
    [
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc==",
        "https://a.blob.core.windows.net/c?sp=r&sig=abc%3D",
        "Bearer eyJ0eXAiOiJKV1Qi",
    ],
)
def test_credential_looking_values(value: str) -> None:
    with pytest.raises(ValueError, match="looks like a credential"):
        check_mapping({"notes": [value]}, "options")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "x"}, "is not a string"),
        ({"a": math.inf}, "only finite numbers"),
        ({"a": {1, 2}}, "a set cannot be stored"),
        ({"a": b"bytes"}, "a bytes cannot be stored"),
    ],
)
def test_unstorable_values(value: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_mapping(value, "options")
