"""Validating an account's ``auth`` block, and keeping secrets out of plans.

A plan is shared, reviewed, and stored verbatim in the journal, so it must never hold a
key, password or token. Before anything else, the auth block is scanned: a key named like a
secret, or a value that looks like an account key or client secret, is an error that points
at ``key_env``/``key_file``, and is never echoed. Values in this block are only shown when
they passed that scan (``shown`` redacts anything secret-looking as a second guard).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from fleet_reimage.yamlsafe import MarkedList, MarkedMap

from .model import AuthSpec, EntraAuth, SharedKeyAuth
from .reader import Checker, Node, join, looks_like_secret, secret_name, shown

AUTH_TYPES = ("shared-key", "entra")
CREDENTIALS = ("default", "azure-cli", "managed-identity", "environment", "workload-identity")
_SHARED_KEY_KEYS = ("type", "account", "key_env", "key_file")
_ENTRA_KEYS = ("type", "credential", "client_id", "tenant_id", "authority", "audience")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+")
_TENANT = re.compile(f"{_GUID.pattern}|{_DOMAIN.pattern}")
_AUTHORITY = re.compile(r"(?:https://)?[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[A-Za-z0-9._~-]*)*")

_USE_INSTEAD = (
    "never write a secret in the plan (plans are shared and stored in the journal): put the "
    "account key in an environment variable and name it with key_env, or in a file readable "
    "only by you (chmod 600) and name it with key_file"
)
_ENTRA_INSTEAD = "; for Entra, use credential: environment or workload-identity instead"


def scan_for_secrets(checker: Checker, at: Node) -> set[str]:
    """Report secrets anywhere in an auth block; return the top-level keys to leave alone.

    The returned set holds ``""`` when the whole block is a secret.
    """
    entra = isinstance(at.value, MarkedMap) and at.value.get("type") == "entra"
    message = _USE_INSTEAD + (_ENTRA_INSTEAD if entra else "")
    flagged: set[str] = set()

    def walk(node: Node, top: str) -> None:
        value = node.value
        if isinstance(value, MarkedMap):
            for key, child in value.items():
                here = key if node is at else top
                if secret_name(key):
                    checker.error(
                        Node(key, join(node.path, key), *value.key_positions[key]),
                        f"{shown(key)} would hold a secret; {message}",
                    )
                    flagged.add(here)
                    continue
                walk(Node(child, join(node.path, key), *value.value_positions[key]), here)
        elif isinstance(value, MarkedList):
            for index, item in enumerate(value):
                walk(Node(item, join(node.path, index), *value.item_positions[index]), top)
        elif isinstance(value, str) and looks_like_secret(value):
            checker.error(node, f"this looks like a key or secret written inline; {message}")
            flagged.add(top)

    walk(at, "")
    return flagged


def read_auth(
    checker: Checker, at: Node, plan_dir: Path, environ: Mapping[str, str] | None
) -> AuthSpec | None:
    flagged = scan_for_secrets(checker, at)
    if "" in flagged:
        return None
    raw = at.value
    kind = raw.get("type") if isinstance(raw, MarkedMap) else None
    allowed = _ENTRA_KEYS if kind == "entra" else _SHARED_KEY_KEYS
    fields = checker.mapping(at, allowed, required=("type",), ignore=flagged)
    if fields is None or "type" not in fields:
        return None
    if checker.choice(fields["type"], AUTH_TYPES) is None:
        return None
    if kind == "entra":
        return _read_entra(checker, at, fields)
    return _read_shared_key(checker, at, fields, plan_dir, environ, flagged)


def _read_shared_key(
    checker: Checker,
    at: Node,
    fields: dict[str, Node],
    plan_dir: Path,
    environ: Mapping[str, str] | None,
    flagged: set[str],
) -> SharedKeyAuth | None:
    errors = checker.error_count
    account = None
    if "account" not in fields:
        if "account" not in flagged:
            checker.error(at, "missing required key 'account' (the Batch account name)")
    else:
        account = checker.text(fields["account"], "the Batch account name")
        if account is not None and not _ACCOUNT_NAME.fullmatch(account):
            checker.error(
                fields["account"],
                f"{shown(account)} is not a Batch account name: "
                "3 to 24 lowercase letters and digits",
            )
    key_env = key_file = None
    given = [k for k in ("key_env", "key_file") if k in fields or k in flagged]
    # A flagged secret (key: ...) already says where the key should go.
    if len(given) > 1 or (not given and not flagged):
        what = "both are given" if given else "neither is given"
        checker.error(
            at,
            f"give exactly one of key_env (an environment variable holding the "
            f"key) or key_file (a file holding the key); {what}",
        )
    if "key_env" in fields:
        key_env = _read_key_env(checker, fields["key_env"], environ)
    if "key_file" in fields:
        key_file = _read_key_file(checker, fields["key_file"], plan_dir)
    if checker.error_count > errors or account is None:
        return None
    return SharedKeyAuth(account=account, key_env=key_env, key_file=key_file)


def _read_key_env(checker: Checker, at: Node, environ: Mapping[str, str] | None) -> str | None:
    name = checker.text(at, "the name of an environment variable")
    if name is None:
        return None
    if not _ENV_NAME.fullmatch(name):
        checker.error(
            at,
            f"{shown(name)} is not an environment variable name: letters, "
            "digits and _, not starting with a digit",
        )
        return None
    if environ is not None and not environ.get(name):
        state = "is empty" if name in environ else "is not set"
        checker.error(
            at,
            f"environment variable {name} {state}; export it with the account key before running",
        )
        return None
    return name


def resolve_path(raw: str, plan_dir: Path) -> Path:
    """A path as written in the plan: ``~`` expanded, relative to the plan's folder."""
    path = Path(raw).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else plan_dir / path))


def read_file_path(checker: Checker, at: Node, plan_dir: Path, what: str) -> Path | None:
    """A path that must name an existing regular file; returns it absolute."""
    raw = checker.text(at, f"the path of {what}")
    if raw is None:
        return None
    if not raw.strip() or "\x00" in raw:
        checker.error(at, f"expected the path of {what}, got {shown(raw)}")
        return None
    path = resolve_path(raw, plan_dir)
    try:
        info = path.stat()
    except FileNotFoundError:
        checker.error(
            at,
            f"{what} {path} does not exist (relative paths are resolved "
            "against the plan file's folder)",
        )
        return None
    except OSError as exc:
        checker.error(at, f"cannot read {what} {path}: {exc.strerror or exc}")
        return None
    if not stat.S_ISREG(info.st_mode):
        checker.error(at, f"{what} {path} is not a regular file")
        return None
    return path


def _read_key_file(checker: Checker, at: Node, plan_dir: Path) -> Path | None:
    path = read_file_path(checker, at, plan_dir, "the key file")
    if path is None:
        return None
    mode = path.stat().st_mode
    if os.name == "posix" and mode & 0o077:
        checker.warning(
            at,
            f"key file {path} can be read or changed by other users (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}",
        )
    return path


def _read_entra(checker: Checker, at: Node, fields: dict[str, Node]) -> EntraAuth | None:
    errors = checker.error_count
    credential = "default"
    if "credential" in fields:
        credential = checker.choice(fields["credential"], CREDENTIALS) or credential
    values: dict[str, str | None] = {}
    checks = {
        "client_id": (
            _GUID,
            "an application (client) ID, a GUID such as 00000000-0000-0000-0000-000000000000",
        ),
        "tenant_id": (_TENANT, "a tenant ID: a GUID or a domain such as contoso.onmicrosoft.com"),
        "authority": (
            _AUTHORITY,
            "an authority host such as login.microsoftonline.com or https://login.chinacloudapi.cn",
        ),
        "audience": (
            re.compile(r"\S+"),
            "a token audience such as https://batch.core.windows.net/",
        ),
    }
    for key, (pattern, what) in checks.items():
        node = fields.get(key)
        text = checker.text(node, what) if node is not None else None
        if node is not None and text is not None and not pattern.fullmatch(text):
            checker.error(node, f"expected {what}")
            text = None
        values[key] = text
    if checker.error_count > errors:
        return None
    return EntraAuth(
        credential=credential,
        client_id=values["client_id"],
        tenant_id=values["tenant_id"],
        authority=values["authority"],
        audience=values["audience"],
    )
