"""What ``action: replace`` will do to each pool, for ``plan`` and ``run --dry-run`` (pure).

Per pool: T (the nodes it has now, what it returns to), the surge, each step's calls in
order, and the lowest ready capacity expected (``rollout/replace.py``), against the limit
T − max_unavailable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet_reimage.journal.model import RunEvent, TargetRecord
from fleet_reimage.plan.model import Plan
from fleet_reimage.plan.resolve import PoolResolution
from fleet_reimage.rollout.replace import Step, lowest_capacity, plan_steps, surge_nodes
from fleet_reimage.units import count

REPLACE_EVENTS = frozenset(
    {
        "replace_started",
        "pool_resized",
        "nodes_removed",
        "replace_judged",
        "pool_replaced",
        "replace_stopped",
    }
)
SHOWN_STEPS = 12  # a long ladder shows its first steps, then a count of the rest


def pool_steps(pool: PoolResolution, plan: Plan) -> tuple[int, int, list[Step]]:
    """(T, surge, steps) of the pool when nothing fails."""
    target = pool.node_count
    surge = surge_nodes(plan.rollout.surge, len(pool.selected))
    down = pool.baseline_unavailable
    return target, surge, plan_steps(pool.wave_sizes, target, pool.max_unavailable, surge, down)


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
    runs = _alike(steps)
    for first, last, step in runs[:SHOWN_STEPS]:
        numbers = f"step {first}" if first == last else f"steps {first}-{last}"
        lines.append(
            f"      {numbers} (wave {step.wave + 1}): {step.first}, then {step.then}; "
            f"lowest {step.lowest}"
        )
    if len(runs) > SHOWN_STEPS:
        lines.append(f"      ... and {count(len(steps) - runs[SHOWN_STEPS][0] + 1, 'more step')}")
    return lines


def _alike(steps: list[Step]) -> list[tuple[int, int, Step]]:
    """Consecutive equal steps as one (first and last 1-based step numbers)."""
    runs: list[tuple[int, int, Step]] = []
    for number, step in enumerate(steps, start=1):
        if runs and runs[-1][2] == step:
            runs[-1] = (runs[-1][0], number, step)
        else:
            runs.append((number, number, step))
    return runs


# --- status and report: what a replace did, from the journal's events ---


@dataclass(slots=True)
class ReplaceSummary:
    """One pool of a replace run: T, its target now (final once done), old and new nodes."""

    account: str
    pool: str
    target: tuple[int, int] | None = None  # T: (dedicated, low-priority)
    current: tuple[int, int] | None = None  # the latest target the run set or saw
    finished: bool = False
    old_removed: int = 0
    new_ready: int = 0
    new_failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "pool": self.pool,
            "target": None if self.target is None else list(self.target),
            "current_target": None if self.current is None else list(self.current),
            "finished": self.finished,
            "old_removed": self.old_removed,
            "new_ready": self.new_ready,
            "new_failed": self.new_failed,
        }


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def _apply(summary: ReplaceSummary, event: RunEvent) -> None:
    data = event.data
    if event.kind == "replace_started":
        summary.target = summary.current = _pair(data.get("target"))
    elif event.kind == "pool_resized":
        summary.current = _pair(data.get("target")) or summary.current
    elif event.kind == "nodes_removed":
        summary.current = _pair(data.get("target_after")) or summary.current
    elif event.kind == "replace_judged":
        verdicts = data.get("old", {})
        if isinstance(verdicts, dict):
            ready = sum(1 for v in verdicts.values() if v == "healthy")
            summary.new_ready += ready
            summary.new_failed += len(verdicts) - ready
    elif event.kind in ("pool_replaced", "replace_stopped"):
        summary.current = _pair(data.get("final_target")) or summary.current
        summary.finished = event.kind == "pool_replaced"


def replace_summaries(
    events: Sequence[RunEvent], targets: Sequence[TargetRecord]
) -> list[ReplaceSummary]:
    """Each replaced pool's summary (empty for a run of another action)."""
    pools: dict[tuple[str, str], ReplaceSummary] = {}
    for event in events:
        if event.kind not in REPLACE_EVENTS or event.account is None or event.pool is None:
            continue
        key = (event.account, event.pool)
        _apply(pools.setdefault(key, ReplaceSummary(*key)), event)
    for target in targets:
        summary = pools.get((target.account, target.pool))
        if summary is not None and target.accepted_at is not None:
            summary.old_removed += 1
    return list(pools.values())


def _kinds(pair: tuple[int, int] | None) -> str:
    return "?" if pair is None else f"{pair[0]} dedicated + {pair[1]} low-priority"


def summary_lines(summaries: Sequence[ReplaceSummary]) -> list[str]:
    return [
        f"{s.account}/{s.pool}: T {_kinds(s.target)}; target "
        f"{'final' if s.finished else 'now'} {_kinds(s.current)}; "
        f"old removed {s.old_removed}; new ready {s.new_ready}, failed {s.new_failed}"
        for s in summaries
    ]


def replace_section(events: Sequence[RunEvent], targets: Sequence[TargetRecord]) -> list[str]:
    """The "Replace per pool" lines of ``status`` and ``report`` text (none for other
    actions; the Markdown report lists ``summary_lines`` under a heading of its own)."""
    lines = summary_lines(replace_summaries(events, targets))
    return ["", "Replace per pool", *("  " + line for line in lines)] if lines else []


# A step's events (one resize, one removal, one verdict per step: hundreds in a long night)
# are summed up in the "Replace per pool" section, not listed one by one in the timeline.
REPLACE_STEP_KINDS = frozenset({"pool_resized", "nodes_removed", "replace_judged"})


def _capacity(value: object) -> str:
    pair = _pair(value)
    if pair is None:
        return "unknown"
    dedicated, low_priority = pair
    text = f"{dedicated} dedicated"
    return text + (f" + {low_priority} low-priority" if low_priority else "")


def replace_event_text(event: RunEvent) -> str:
    """A pool's replace milestone in words, for the timeline."""
    data = event.data
    target = _capacity(data.get("target"))
    if event.kind == "replace_started":
        return f"replace started: T {target}, surge {data.get('surge', 0)}"
    ended = "pool replaced" if event.kind == "pool_replaced" else "replace stopped"
    return (
        f"{ended}: {count(int(str(data.get('old_removed', 0))), 'old node')} removed, "
        f"{count(int(str(data.get('new_ready', 0))), 'new node')} ready, "
        f"{data.get('new_failed', 0)} failed; target {_capacity(data.get('final_target'))} "
        f"(T {target})"
    )
