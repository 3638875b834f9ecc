"""A local Azure Batch emulator: the data-plane calls fleet-reimage makes, served faithfully.

Modules, one idea each:

- ``spec``: what a fleet describes (frozen data); ``fleet`` (+ ``fleetpools``,
  ``fleetcheck``) parses YAML.
- ``population``: the initial nodes (ids, states, times, tasks) from the seed; ``ids``.
- ``resources``: nodes and pools as records; ``rules``: the service's rules, pure.
- ``state``: node operations and the timed transitions on an injectable ``clock``;
  ``pools``: resize, remove nodes, metadata, auto-scale.
- ``odata``: ``$filter`` / ``$select``; ``listing``: pages and next links.
- ``faults``: seeded fault draws and the rate limit; ``auth``: Shared Key and bearer.
- ``render``: JSON shapes; ``bodies``: request bodies; ``stats``: counters and the stats.
- ``app``: the request pipeline; ``operations``: the endpoints; ``server``: running it
  in-process or from the CLI.
"""

from __future__ import annotations

from .app import Emulator, create_app, emulator_of
from .clock import Clock, ManualClock, RealClock
from .fleet import load_fleet, parse_fleet
from .population import build_state
from .server import RunningEmulator, emulator_main, running_emulator, serve_forever
from .spec import (
    AccountSpec,
    AutoScaleSpec,
    CoreQuota,
    FaultSpec,
    FaultsSpec,
    FleetSpec,
    Outcomes,
    PoolSpec,
    RateLimitSpec,
    TaskDuration,
    Timings,
)
from .state import BatchOperationError, EmulatorState, Node, Pool

__all__ = [
    "AccountSpec",
    "AutoScaleSpec",
    "BatchOperationError",
    "Clock",
    "CoreQuota",
    "Emulator",
    "EmulatorState",
    "FaultSpec",
    "FaultsSpec",
    "FleetSpec",
    "ManualClock",
    "Node",
    "Outcomes",
    "Pool",
    "PoolSpec",
    "RateLimitSpec",
    "RealClock",
    "RunningEmulator",
    "TaskDuration",
    "Timings",
    "build_state",
    "create_app",
    "emulator_main",
    "emulator_of",
    "load_fleet",
    "parse_fleet",
    "running_emulator",
    "serve_forever",
]
