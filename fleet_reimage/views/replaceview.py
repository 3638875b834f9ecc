"""What ``action: replace`` will do to each pool, for ``plan`` and ``run --dry-run`` (pure).

Per pool: T (the nodes it has now, what it returns to), the surge, each step's calls in
order, and the lowest ready capacity expected (``rollout/replace.py``), against the limit
T − max_unavailable.
"""

from __future__ import annotations

from typing import Any

from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.resolve import PoolResolution
from fleet_reimage.rollout.replace import Step, lowest_capacity, plan_steps, surge_nodes
from fleet_reimage.units import count

SHOWN_STEPS = 12  # a long ladder shows its first steps, then a count of the rest


def pool_steps(pool: PoolResolution, plan: Plan) -> tuple[int, int, list[Step]]:
    """(T, surge, steps) of the pool when nothing fails."""
    target = pool.node_count
    surge = surge_nodes(plan.rollout.surge, len(pool.selected))
    return target, surge, plan_steps(pool.wave_sizes, target, pool.max_unavailable, surge)


def replace_json(pool: PoolResolution, plan: Plan) -> dict[str, Any]:
    target, surge, steps = pool_steps(pool, plan)
    return {
        "target": target,
        "surge": surge,
        "lowest_capacity": lowest_capacity(steps, target),
        "limit": target - pool.max_unavailable,
        "steps": [
            {
                "wave": s.wave + 1,
                "nodes": s.count,
                "first": s.first,
                "then": s.then,
                "lowest": s.lowest,
            }
            for s in steps
        ],
    }


def replace_lines(pool: PoolResolution, plan: Plan) -> list[str]:
    if pool.skipped_reason or not pool.selected:
        return []
    target, surge, steps = pool_steps(pool, plan)
    lowest = lowest_capacity(steps, target)
    how = f"surge {surge}: new nodes first" if surge else "no surge: old nodes leave first"
    lines = [
        f"    replace: T = {target} (the pool returns to it); {how}; "
        f"{count(len(steps), 'step')}; lowest ready capacity {lowest} "
        f"(limit {target - pool.max_unavailable})"
    ]
    for number, step in enumerate(steps[:SHOWN_STEPS], start=1):
        lines.append(
            f"      step {number} (wave {step.wave + 1}): {step.first}, then {step.then}; "
            f"lowest {step.lowest}"
        )
    if len(steps) > SHOWN_STEPS:
        lines.append(f"      ... and {count(len(steps) - SHOWN_STEPS, 'more step')}")
    return lines
