"""The environment a plan needs at run time: its ``key_env`` variables (reads no file).

``validate`` is offline and may run on another machine than the run, so an unset variable
is a **warning** there (the plan is valid; the run would stop). Commands that talk to the
service (``plan``, ``run``, ``resume``) need the key now: for them it is an **error**, with
the file, line, column and key path (``accounts[0].auth.key_env``) like every other plan
problem, found by the plan's own validator given the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from fleet_reimage.errors import InputError, Problem

from .load import parse_plan


def environment_problems(text: str, path: Path, environ: Mapping[str, str]) -> list[Problem]:
    """What a plan that is valid offline lacks in ``environ`` (unset or empty ``key_env``)."""
    try:
        parse_plan(text, path, environ=environ)
    except InputError as error:
        return error.errors
    return []


def as_warnings(problems: list[Problem]) -> list[Problem]:
    return [dataclasses.replace(p, severity="warning") for p in problems]
