"""Validating ``rollout.drain`` (drain a busy node before its action) and ``notify``.

``rollout.drain: {timeout: 30m, then: requeue}``: before the action on a node that runs
tasks, disable its scheduling with ``taskcompletion``, wait up to ``timeout`` for its tasks
to end, then act: with the plan's option if it drained, with ``then`` if tasks still run.

``notify: [{url_env: TEAMS_WEBHOOK}]``: webhooks told of the run's milestones. A webhook URL
is a secret, so the plan names the environment variable that holds it, never the URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fleet_reimage.yamlsafe import MarkedMap

from .reader import Checker, Node, join

DRAIN_KEYS = ("timeout", "then")
DRAIN_THEN = ("requeue", "terminate")
NOTIFY_KEYS = ("url_env",)
MAX_DRAIN = 86400.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class DrainSpec:
    timeout: float  # seconds to wait for running tasks to end
    then: str  # requeue | terminate: the action's option when tasks still run at the timeout


@dataclass(frozen=True, slots=True)
class NotifySpec:
    url_env: str  # the environment variable holding the webhook URL (a secret)


def read_drain(checker: Checker, at: Node) -> DrainSpec | None:
    fields = checker.mapping(at, DRAIN_KEYS, required=DRAIN_KEYS)
    if fields is None or set(DRAIN_KEYS) - fields.keys():
        return None
    timeout = checker.duration(fields["timeout"], high=MAX_DRAIN, positive=True)
    then = checker.choice(fields["then"], DRAIN_THEN)
    if timeout is None or then is None:
        return None
    return DrainSpec(timeout=timeout, then=then)


def read_notify(
    checker: Checker, at: Node, environ: Mapping[str, str] | None
) -> tuple[NotifySpec, ...] | None:
    """The webhooks; with ``environ``, each ``url_env`` must be set there (and not empty)."""
    items = checker.sequence(at, "webhooks ({url_env: NAME})", "webhook")
    if items is None:
        return None
    errors = checker.error_count
    specs: list[NotifySpec] = []
    for item in items:
        fields = checker.mapping(item, NOTIFY_KEYS, ignore=("url",))
        if fields is None:
            continue
        if isinstance(item.value, MarkedMap) and "url" in item.value:
            line, column = item.value.key_positions["url"]
            checker.error(
                Node("url", join(item.path, "url"), line, column),
                "a webhook URL is a secret and never goes in the plan: put it in an "
                "environment variable and name the variable with url_env",
            )
            continue
        if "url_env" not in fields:
            checker.error(item, "missing required key 'url_env'")
            continue
        name = checker.text(fields["url_env"], "the name of an environment variable")
        if name is None:
            continue
        if not _ENV_NAME.match(name):
            checker.error(
                fields["url_env"],
                "not an environment variable name: letters, digits and _ (a webhook URL is a "
                "secret: put it in a variable and name the variable here)",
            )
            continue
        if environ is not None and not environ.get(name):
            state = "is empty" if name in environ else "is not set"
            checker.error(
                fields["url_env"],
                f"environment variable {name} {state}; export it with the webhook URL",
            )
            continue
        specs.append(NotifySpec(url_env=name))
    return tuple(specs) if checker.error_count == errors else None
