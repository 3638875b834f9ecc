"""``action: replace``: the step arithmetic, pure (the engine's ``engine/replace.py`` calls it).

A pool with target T (dedicated and low-priority counted apart, each kind returning to its
own target) replaces its selected nodes in steps, wave after wave:

* **surge** (s > 0): resize to T + b (b ≤ s), gate the b new nodes, then remove b old ones.
  Ready capacity stays at T, less the new nodes that failed (``removals_after_surge``
  keeps old nodes whose removal would take it below T − max_unavailable).
* **no surge**: remove k ≤ max_unavailable old nodes (target T − k), resize back to T, gate
  the k new nodes. Ready capacity dips to T − k at the lowest.

How many targets one step takes is the rollout policy's ``admit`` (``policy.py``: waves,
pauses, the failure budget, failed nodes holding room), capped by ``step_limit``: with
surge the policy's room is ``max_unavailable + s`` (an old node being replaced stays ready
until its new node is), so a step takes at most s, and new nodes that failed still eat
into it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_reimage.units import Amount

REMOVE_BATCH = 100  # node ids per removenodes call (the service's limit)


def surge_nodes(surge: Amount, selected: int) -> int:
    """The plan's ``rollout.surge`` for a pool with ``selected`` targets (0: no surge)."""
    return surge.of(selected)


def policy_room(max_unavailable: int, surge: int) -> int:
    """The max_unavailable the rollout policy gets for a replace pool (see the docstring)."""
    return max_unavailable + surge


def step_limit(admit: int, surge: int, use_surge: bool) -> int:
    """How many targets the next step takes, of the ``admit`` the policy allows (its room
    is ``policy_room``): at most s with surge; without it (s = 0, or an auto-scaled pool,
    which cannot be resized) the room max_unavailable leaves."""
    return min(admit, surge) if use_surge else admit - surge


def removals_after_surge(batch: int, ready_new: int, room: int) -> int:
    """Old nodes a surge step removes once its ``batch`` new nodes were judged: one for each
    new node ready, plus as many more as ``room`` (max_unavailable not yet used by failed
    nodes) allows; the rest stay in service."""
    return max(0, min(batch, ready_new + max(0, room)))


def chunks(node_ids: list[str], size: int = REMOVE_BATCH) -> list[list[str]]:
    """``node_ids`` in calls of at most ``size`` ids."""
    return [node_ids[i : i + size] for i in range(0, len(node_ids), size)]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a pool's replace, as the plan and the dry run show it."""

    wave: int  # 0-based
    count: int  # old nodes replaced in this step
    first: str  # the first call: "resize to T+b" or "remove k"
    then: str  # the second call
    lowest: int  # the lowest ready capacity expected during the step


def plan_steps(
    wave_sizes: list[int], target: int, max_unavailable: int, surge: int, down: int = 0
) -> list[Step]:
    """Every step of a pool's replace when nothing fails (``target``: T, the whole pool;
    ``down``: its nodes not ready now, for reasons of their own: they use up room)."""
    room = max(1, max_unavailable - down)
    ready = target - down
    steps: list[Step] = []
    for wave, size in enumerate(wave_sizes):
        left = size
        while left > 0:
            count = min(left, surge if surge > 0 else room)
            if surge > 0:
                steps.append(Step(wave, count, f"resize to {target + count}",
                                  f"remove {count} old", ready))  # fmt: skip
            else:
                steps.append(Step(wave, count, f"remove {count} old",
                                  f"resize to {target}", ready - count))  # fmt: skip
            left -= count
    return steps


def lowest_capacity(steps: list[Step], target: int) -> int:
    """The lowest ready capacity the steps expect (T when there are none)."""
    return min((step.lowest for step in steps), default=target)
