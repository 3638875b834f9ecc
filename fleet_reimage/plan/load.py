"""Reading a plan file into a validated ``Plan``, reporting every problem at once.

``load_plan`` reads the file (UTF-8, at most ``MAX_DOCUMENT_BYTES``) and ``parse_plan``
validates the text. Either returns a ``Plan`` (whose ``warnings`` hold problems that do not
stop a run) or raises one ``InputError`` holding every error and warning found, each with
file, line, column and key path. Nothing here touches the network; the only file system
access is reading the plan and checking that the files it names (``key_file``,
``emulator``) exist.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from fleet_reimage.errors import InputError, Problem
from fleet_reimage.yamlsafe import MAX_DOCUMENT_BYTES, load_marked_yaml

from .accounts import read_accounts, read_name
from .drain import read_notify
from .model import Action, NodeOption, Plan, PlanSource
from .reader import Checker, Node, root_node
from .sections import read_execution, read_rollout

E = TypeVar("E", Action, NodeOption)

TOP_KEYS = (
    "version",
    "name",
    "action",
    "option",
    "accounts",
    "rollout",
    "execution",
    "notify",
)
SUPPORTED_VERSION = 1


def load_plan(path: Path, *, environ: Mapping[str, str] | None = None) -> Plan:
    """Read and validate the plan file at ``path``.

    With ``environ``, every ``key_env`` must name a variable set (and not empty) in it.
    """
    return parse_plan(read_plan_text(path), path, environ=environ)


def read_plan_text(path: Path) -> str:
    """The file's text; InputError (not OSError/UnicodeError) when it cannot be read."""
    file = str(path)

    def fail(message: str, line: int | None = None, column: int | None = None) -> InputError:
        return InputError([Problem(file, line, column, "", message)])

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise fail("not a regular file; give the path of a plan (.yaml) file")
        with path.open("rb") as handle:
            data = handle.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file") from None
    except PermissionError:
        raise fail("permission denied: cannot read the file") from None
    except OSError as exc:
        raise fail(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise fail(f"file is larger than {MAX_DOCUMENT_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise fail(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded); "
            "save the plan as UTF-8",
            line,
            column,
        ) from None


def parse_plan(text: str, path: Path, *, environ: Mapping[str, str] | None = None) -> Plan:
    """Validate plan ``text`` read from ``path`` (relative paths in it resolve against
    ``path``'s folder); InputError with every problem when it is not a valid plan."""
    file = str(path)
    absolute = Path(os.path.abspath(path))
    checker = Checker(file)
    fields = checker.mapping(
        root_node(load_marked_yaml(text, file)), TOP_KEYS, required=("version", "name", "accounts")
    )
    if fields is None:
        raise InputError(checker.problems)
    version = _read_version(checker, fields["version"]) if "version" in fields else None
    name = read_name(checker, fields["name"], "plan name") if "name" in fields else None
    action = _read_enum(checker, fields.get("action"), Action, Action.REIMAGE)
    option = _read_enum(checker, fields.get("option"), NodeOption, NodeOption.REQUEUE)
    accounts = None
    if "accounts" in fields:
        accounts = read_accounts(checker, fields["accounts"], absolute.parent, environ)
    rollout = read_rollout(checker, fields.get("rollout"), action is Action.REPLACE)
    execution = read_execution(checker, fields.get("execution"))
    notify = read_notify(checker, fields["notify"], environ) if "notify" in fields else ()
    if (
        checker.error_count
        or version is None
        or name is None
        or action is None
        or option is None
        or accounts is None
        or rollout is None
        or execution is None
        or notify is None
    ):
        # The fallback problem only guards against a validator that failed silently.
        raise InputError(checker.problems or [Problem(file, None, None, "", "invalid plan")])
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    warnings = sorted(checker.problems, key=lambda p: (p.line or 0, p.column or 0))
    return Plan(
        version=version,
        name=name,
        action=action,
        option=option,
        accounts=accounts,
        rollout=rollout,
        execution=execution,
        source=PlanSource(path=absolute, text=text, sha256=digest),
        warnings=tuple(warnings),
        notify=notify,
    )


def _read_version(checker: Checker, at: Node) -> int | None:
    value = at.value
    if isinstance(value, bool) or not isinstance(value, int):
        checker.expected(at, f"the number {SUPPORTED_VERSION}")
        return None
    if value != SUPPORTED_VERSION:
        checker.error(
            at,
            f"plan version {value if abs(value) < 10**6 else '(huge)'} is not "
            f"supported; this fleet-reimage reads version {SUPPORTED_VERSION}",
        )
        return None
    return value


def _read_enum(checker: Checker, at: Node | None, kind: type[E], default: E) -> E | None:
    if at is None:
        return default
    value = checker.choice(at, [member.value for member in kind])
    return None if value is None else kind(value)
