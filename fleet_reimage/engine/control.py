"""``RunControl``: the one narrow interface through which a run's parts reach the run itself.

The executor (``executor.py``) owns the task loop; the parts it is composed of (a node's work,
the health gate, a shared run's coordinator, the run's ledger) never see it whole. What they
may ask of it is this and nothing more: is the run stopping, stop it, wake the dispatcher,
and run a coroutine beside the run. Everything else they share is data (``runstate``) and the
ledger of the run's state (``ledger.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class RunControl(Protocol):
    @property
    def stopping(self) -> bool:
        """The run is stopping: nothing new may start or be sent."""

    def request_stop(self, kind: str, reason: str) -> None:
        """Stop dispatching (requests in flight finish); the first reason wins."""

    def wake(self) -> None:
        """Something changed: let the dispatcher look again."""

    def start_background(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``func(*args)`` beside the run (e.g. a journal write nobody waits for)."""
