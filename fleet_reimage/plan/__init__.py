"""The plan: which nodes to reimage or reboot, how fast and how carefully.

``load_plan(path)`` / ``parse_plan(text, path)`` return a validated, frozen ``Plan`` or raise
one ``InputError`` listing every problem found; loading and validation are pure (no network).
``wave_sizes`` / ``cumulative_targets`` turn the plan's cumulative wave ladder into one
pool's waves. (``resolve`` applies a plan to what the service lists; it is not imported here.)
"""

from __future__ import annotations

from ..batch.models import NODE_STATES
from .load import load_plan, parse_plan, read_plan_text
from .model import (
    DEFAULT_STATES,
    AccountSpec,
    Action,
    AuthSpec,
    EntraAuth,
    ExecutionSpec,
    HealthSpec,
    NodeOption,
    NodeSelector,
    Plan,
    PlanSource,
    PoolSelector,
    RetrySpec,
    RolloutSpec,
    SharedKeyAuth,
)
from .waves import cumulative_targets, normalise_ladder, wave_sizes

__all__ = [
    "DEFAULT_STATES",
    "NODE_STATES",
    "AccountSpec",
    "Action",
    "AuthSpec",
    "EntraAuth",
    "ExecutionSpec",
    "HealthSpec",
    "NodeOption",
    "NodeSelector",
    "Plan",
    "PlanSource",
    "PoolSelector",
    "RetrySpec",
    "RolloutSpec",
    "SharedKeyAuth",
    "cumulative_targets",
    "load_plan",
    "normalise_ladder",
    "parse_plan",
    "read_plan_text",
    "wave_sizes",
]
