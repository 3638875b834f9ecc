"""Showing a resolved plan: a readable schedule for people, JSON for machines (pure)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..units import format_duration
from .resolve import PoolResolution, Resolution

_REASON_GROUPS = (
    ("state", "state not eligible"),
    ("node id not selected", "excluded by pattern"),
    ("booted at", "already booted after the cutoff"),
)


def reason_group(reason: str) -> str:
    """A short category for an exclusion reason, for counting."""
    for prefix, group in _REASON_GROUPS:
        if reason.startswith(prefix):
            return group
    return reason


def _pool_json(pool: PoolResolution) -> dict[str, Any]:
    return {
        "account": pool.account,
        "pool": pool.pool_id,
        "configuration": pool.configuration,
        "nodes_in_pool": pool.node_count,
        "selected": len(pool.selected),
        "waves": [size for size in pool.wave_sizes if size],
        "max_unavailable": pool.max_unavailable,
        "already_unavailable": pool.baseline_unavailable,
        "targets": [
            {"node": node.id, "state": node.state, "wave": wave + 1}
            for node, wave in zip(pool.selected, pool.wave_of, strict=True)
        ],
        "excluded": [{"node": node_id, "reason": reason} for node_id, reason in pool.excluded],
        "excluded_counts": dict(Counter(reason_group(r) for _, r in pool.excluded)),
        "skipped_reason": pool.skipped_reason,
        "warnings": pool.warnings,
    }


def resolution_json(resolution: Resolution) -> dict[str, Any]:
    plan = resolution.plan
    return {
        "plan": plan.name,
        "file": str(plan.source.path),
        "sha256": plan.source.sha256,
        "action": plan.action.value,
        "option": plan.option.value,
        "selected": resolution.total_selected,
        "failure_budget": resolution.failure_budget(),
        "pools": [_pool_json(pool) for pool in resolution.pools],
        "warnings": [w.render() for w in resolution.warnings],
    }


def render_schedule(resolution: Resolution) -> str:
    """The schedule an operator reads before saying yes."""
    plan = resolution.plan
    rollout = plan.rollout
    lines = [
        f"Plan {plan.name!r} ({plan.source.path}): {plan.action.value} with option "
        f"{plan.option.value}",
        f"  {resolution.total_selected} nodes selected in {len(resolution.pools)} pools; "
        f"failure budget {resolution.failure_budget()} ({rollout.failure_budget}); "
        f"waves {', '.join(str(w) for w in rollout.waves)}; "
        f"pause {format_duration(rollout.pause_between_waves)}; "
        + (
            f"health gate {format_duration(rollout.health.timeout)}"
            if rollout.health.wait
            else "no health gate"
        ),
    ]
    current = None
    for pool in resolution.pools:
        if pool.account != current:
            current = pool.account
            lines.append(f"account {pool.account}")
        lines.extend(_pool_lines(pool))
    for warning in resolution.warnings:
        lines.append(warning.render())
    return "\n".join(lines)


def _pool_lines(pool: PoolResolution) -> list[str]:
    if pool.skipped_reason:
        return [f"  pool {pool.pool_id}: skipped: {pool.skipped_reason}"]
    waves = [size for size in pool.wave_sizes if size]
    excluded = Counter(reason_group(reason) for _, reason in pool.excluded)
    lines = [
        f"  pool {pool.pool_id} ({pool.configuration or 'unknown configuration'}): "
        f"{len(pool.selected)} of {pool.node_count} nodes selected",
        f"    waves: {' -> '.join(str(w) for w in waves) or 'none'}; "
        f"max unavailable {pool.max_unavailable} at any instant"
        + (
            f" ({pool.baseline_unavailable} already unavailable)"
            if pool.baseline_unavailable
            else ""
        ),
    ]
    if excluded:
        lines.append(
            "    excluded: "
            + ", ".join(f"{count} {group}" for group, count in sorted(excluded.items()))
        )
    lines.extend(f"    warning: {warning}" for warning in pool.warnings)
    return lines
