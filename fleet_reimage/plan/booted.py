"""Nodes booted moments ago (pure): a sign that another run may have just reimaged them.

A run's journal knows only its own runs: a ``run`` with another ``--journal`` (another folder's
``./fleet-reimage.db``, another machine) does not see what a live run did minutes before.
What every run can see is the nodes' ``lastBootTime``. So:

* ``plan`` and ``run`` warn about selected nodes that booted within the last hour
  (``RECENT``), with their count per pool;
* ``nodes.skip_booted_within: DURATION`` (per pool entry) leaves them out, as an exclusion
  with its reason, like ``booted_before`` does for a fixed instant.

A node with no ``lastBootTime`` never booted since it was allocated: it is not "recent".
The stronger guard, across journals and machines, is ``rollout.claim_pools``
(``engine/poolclaim.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from fleet_reimage.errors import Problem
from fleet_reimage.units import count, format_duration

RECENT = 3600.0  # seconds: "within the last hour"
REASON_PREFIX = "booted within"  # how a skip_booted_within exclusion's reason begins


def booted_within_reason(last_boot: float | None, within: float | None, now: float) -> str | None:
    """Why ``skip_booted_within`` leaves a node out, or None when it does not."""
    if within is None or last_boot is None or last_boot < now - within:
        return None
    ago = format_duration(float(max(0, round(now - last_boot))))
    return (
        f"{REASON_PREFIX} the last {format_duration(within)} ({ago} ago; "
        "nodes.skip_booted_within): another run may have just reimaged it"
    )


def booted_lately(boot_times: Iterable[float | None], now: float) -> int:
    """How many of these nodes booted within the last hour."""
    since = now - RECENT
    return sum(1 for boot in boot_times if boot is not None and boot >= since)


def recent_boot_warning(counts: dict[str, int], plan_file: str) -> Problem | None:
    """The warning for selected nodes booted within the last hour (``counts``: per pool,
    "account/pool" -> how many), or None when there are none."""
    found = {pool: n for pool, n in counts.items() if n}
    if not found:
        return None
    total = sum(found.values())
    pools = ", ".join(f"{pool} {n}" for pool, n in found.items())
    return Problem(
        plan_file,
        None,
        None,
        "",
        f"{count(total, 'selected node')} booted within the last hour ({pools}): another run "
        "(with another journal, or on another machine) may have just reimaged "
        f"{'it' if total == 1 else 'them'}; `nodes.skip_booted_within: 1h` leaves such nodes "
        "out, and `rollout.claim_pools: true` keeps two runs off one pool",
        "warning",
    )
