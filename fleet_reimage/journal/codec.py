"""Backend-neutral encoding of the free-form mappings a journal stores (run options, event data).

Both backends store these as JSON text, so the rules live here and not in a backend:

* keys are strings; values are ``None``, ``bool``, ``int``, finite ``float``, ``str``, or lists,
  tuples and mappings of those (tuples come back as lists, mappings as ``dict``);
* no key may look like it names a secret (``key``, ``token``, ``password``, ``secret``, ...)
  and no string may look like a credential (a storage connection string, a SAS signature, a
  bearer header): the journal is copied around, attached to tickets and read by ``status``, so
  a secret must never reach it. Refusal is a ``ValueError`` raised before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# Lower-cased, separator-free fragments of option names that name a secret. Fragments rather
# than whole words so that "apiKey", "client_secret", "SAS_TOKEN" and "dbpasswd" are all caught;
# a false positive only costs the author a rename, a false negative leaks a credential.
SECRET_KEY_FRAGMENTS: tuple[str, ...] = (
    "key",
    "token",
    "password",
    "passwd",
    "secret",
    "credential",
)

# Values that are credentials whatever key they sit under.
_SECRET_VALUE = re.compile(r"(accountkey=|sharedaccesssignature=|[?&]sig=|\bbearer\s)", re.I)

_MAX_DEPTH = 32


def secret_like_key(name: str) -> bool:
    """True when an option or data key looks like it names a secret."""
    folded = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(fragment in folded for fragment in SECRET_KEY_FRAGMENTS)


def check_mapping(value: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` unless ``value`` is storable (see the module docstring)."""
    _check(value, what, 0)


def _check(value: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested too deeply to store in the journal")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} cannot be stored (only finite numbers)")
        return
    if isinstance(value, str):
        if _SECRET_VALUE.search(value):
            raise ValueError(f"{where}: looks like a credential; the journal never stores one")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            if secret_like_key(key):
                raise ValueError(
                    f"{where}.{key}: looks like a secret (key, token, password, secret); "
                    "the journal never stores one"
                )
            _check(item, f"{where}.{key}", depth + 1)
        return
    raise ValueError(f"{where}: a {type(value).__name__} cannot be stored in the journal")


def encode_mapping(value: Mapping[str, Any], what: str) -> str:
    """Check ``value`` and return its JSON text (keys sorted, so equal mappings give equal text)."""
    check_mapping(value, what)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_mapping(text: str | None) -> dict[str, Any]:
    """The mapping stored by :func:`encode_mapping` (an empty one for ``None``)."""
    if not text:
        return {}
    decoded = json.loads(text)
    if not isinstance(decoded, dict):
        raise ValueError("stored mapping is not a JSON object")
    return decoded
