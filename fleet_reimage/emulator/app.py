"""The Batch data-plane endpoints, as an aiohttp application over one ``EmulatorState``:
the request pipeline is ``pipeline.py``, the operations ``operations.py``."""

from __future__ import annotations

from aiohttp import web

from .clock import Clock
from .operations import add_routes
from .pipeline import Emulator, Pipeline
from .spec import FleetSpec
from .state import EmulatorState

__all__ = ["EMULATOR_KEY", "Emulator", "create_app", "emulator_of"]

EMULATOR_KEY = web.AppKey("emulator", Emulator)


def create_app(
    spec: FleetSpec, *, clock: Clock | None = None, state: EmulatorState | None = None
) -> web.Application:
    """The aiohttp application answering as ``spec``'s account (``emulator_of`` finds it)."""
    emulator = Emulator(spec, clock=clock, state=state)
    app = web.Application()
    app[EMULATOR_KEY] = emulator
    pipeline = Pipeline(emulator)
    add_routes(app, pipeline)
    app.router.add_route("GET", "/_emulator/stats", pipeline.stats)
    app.router.add_route("*", "/{tail:.*}", pipeline.unknown)
    return app


def emulator_of(app: web.Application) -> Emulator:
    return app[EMULATOR_KEY]
