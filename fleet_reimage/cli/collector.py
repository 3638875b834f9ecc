"""The process's cycle collector during a command: a process-wide setting, so the command
line's business and never the library's (``fleet_reimage.api`` leaves it alone).

* While a run's state is built (listing, selection, the journal's records, one object per
  node before the first request), the collector is paused: each full collection would walk
  them all again (~60 ms before the first request with 20,000 nodes).
* Once the run's state is built (``tune_for_run``, when the executor is ready), everything
  built so far lives as long as the run: it is frozen out of the collector (with 100,000
  targets a full collection would pause the loop for ~100 ms), and young collections are
  made rarer (requests churn short-lived objects). No collection first: it would cost as
  much once, before the first request, and the little cyclic garbage of start-up is only
  kept until the run ends.
* After the command, the settings are as they were.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

RUN_THRESHOLDS = (50_000, 20, 100)
BUILDING_COMMANDS = ("run", "resume", "plan")


@contextmanager
def collector_for(command: str) -> Iterator[None]:
    """The collector paused while ``command`` builds its state, and restored afterwards."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    if command in BUILDING_COMMANDS:
        gc.disable()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()


def tune_for_run() -> None:
    """The run's state is built: freeze it out of the collector, collect young objects less
    often, and turn the collector back on for the run itself."""
    gc.freeze()
    gc.set_threshold(*RUN_THRESHOLDS)
    gc.enable()
