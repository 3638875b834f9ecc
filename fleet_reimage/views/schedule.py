"""Showing a resolved plan: a readable schedule for people, JSON for machines (pure).

Per pool, the waves are shown as the plan means them, cumulative ("done after": nodes of the
pool done once the wave is), beside their sizes, and with the work they stop: the running
nodes, their running tasks, and what the plan's ``option`` does to those tasks (requeue,
terminate, or wait for them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fleet_reimage.plan.model import Action, NodeOption, Plan
from fleet_reimage.plan.narrow import describe
from fleet_reimage.plan.resolve import PoolResolution, Resolution
from fleet_reimage.plan.schedule import reason_group
from fleet_reimage.units import Amount, count, format_duration
from fleet_reimage.views.dryrun import blocked_reason
from fleet_reimage.views.replaceview import replace_json, replace_lines
from fleet_reimage.views.textgrid import grid


@dataclass(frozen=True, slots=True)
class WaveWork:
    """One non-empty wave of a pool: its size, the cumulative target, the work it stops."""

    wave: int  # 1-based ladder step (the run's numbering)
    nodes: int
    done_after: int  # the cumulative target: nodes of the pool done once this wave is
    running_nodes: int
    running_tasks: int


# What each option does to the tasks running on a node (Batch's node*Option).
TASK_EFFECTS = {
    NodeOption.REQUEUE: ("requeue", "stopped and put back in the job's queue"),
    NodeOption.TERMINATE: ("terminate", "stopped and marked completed (failed)"),
    NodeOption.TASKCOMPLETION: ("wait for", "left to finish; the node takes no new task"),
    NodeOption.RETAINEDDATA: (
        "wait for",
        "left to finish, and their data retention to expire; the node takes no new task",
    ),
}


def waves_of(pool: PoolResolution) -> list[WaveWork]:
    """The pool's non-empty waves, in order, with the running work each one holds (pure)."""
    nodes = [0] * len(pool.wave_sizes)
    running = [0] * len(pool.wave_sizes)
    tasks = [0] * len(pool.wave_sizes)
    for node, wave in zip(pool.selected, pool.wave_of, strict=True):
        nodes[wave] += 1
        if node.state == "running" or node.running_tasks:
            running[wave] += 1
            tasks[wave] += node.running_tasks
    out = []
    done = 0
    for step, size in enumerate(nodes):
        if size:
            done += size
            out.append(WaveWork(step + 1, size, done, running[step], tasks[step]))
    return out


def task_effect(option: NodeOption, tasks: int) -> str:
    """What the option does to ``tasks`` running tasks: "requeue 12 tasks", "-" for none."""
    if not tasks:
        return "-"
    verb, _ = TASK_EFFECTS[option]
    return f"{verb} {count(tasks, 'task')}"


def _pool_json(pool: PoolResolution, option: NodeOption) -> dict[str, Any]:
    waves = waves_of(pool)
    running_tasks = sum(w.running_tasks for w in waves)
    return {
        "account": pool.account,
        "pool": pool.pool_id,
        "configuration": pool.configuration,
        "nodes_in_pool": pool.node_count,
        "selected": len(pool.selected),
        "wave_sizes": [w.nodes for w in waves],
        "wave_targets": [w.done_after for w in waves],
        "waves": [
            {
                "wave": w.wave,
                "nodes": w.nodes,
                "done_after": w.done_after,
                "running_nodes": w.running_nodes,
                "running_tasks": w.running_tasks,
                "tasks": _tasks_json(option, w.running_tasks),
            }
            for w in waves
        ],
        "running_nodes": sum(w.running_nodes for w in waves),
        "running_tasks": running_tasks,
        "tasks": _tasks_json(option, running_tasks),
        "max_unavailable": pool.max_unavailable,
        "already_unavailable": pool.baseline_unavailable,
        "booted_within_the_hour": pool.booted_lately,
        "targets": [
            {
                "node": node.id,
                "state": node.state,
                "running_tasks": node.running_tasks,
                "wave": wave + 1,
            }
            for node, wave in zip(pool.selected, pool.wave_of, strict=True)
        ],
        "excluded": [{"node": node_id, "reason": reason} for node_id, reason in pool.excluded],
        "excluded_counts": dict(Counter(reason_group(r) for _, r in pool.excluded)),
        "skipped_reason": pool.skipped_reason,
        "warnings": pool.warnings,
    }


def _tasks_json(option: NodeOption, tasks: int) -> dict[str, Any]:
    """``{"effect": "requeue", "tasks": 12}``: what the option does, to how many tasks."""
    verb, _ = TASK_EFFECTS[option]
    return {"effect": verb.replace(" ", "_"), "tasks": tasks}


def resolution_json(resolution: Resolution) -> dict[str, Any]:
    plan = resolution.plan
    pools = [_pool_json(pool, plan.option) for pool in resolution.pools]
    if plan.action is Action.REPLACE:
        for shown, pool in zip(pools, resolution.pools, strict=True):
            shown["replace"] = replace_json(pool, plan)
    running_tasks = sum(p["running_tasks"] for p in pools)
    drain = plan.rollout.drain
    return {
        "plan": plan.name,
        "file": str(plan.source.path),
        "sha256": plan.source.sha256,
        "action": plan.action.value,
        "option": plan.option.value,
        "selected": resolution.total_selected,
        "running_nodes": sum(p["running_nodes"] for p in pools),
        "running_tasks": running_tasks,
        "tasks": _tasks_json(plan.option, running_tasks),
        "failure_budget": resolution.failure_budget(),
        "soak": plan.rollout.soak,
        "gates": gates_json(plan),
        "narrowing": resolution.narrowing.as_options() if resolution.narrowing else None,
        "drain": None if drain is None else {"timeout_s": drain.timeout, "then": drain.then},
        "notify": [n.url_env for n in plan.notify],
        "pools": pools,
        "warnings": [w.render() for w in resolution.warnings],
    }


def _budget(nodes: int, written: Amount) -> str:
    """``21 (3%)`` for a percent; a count is said once (``0``, not ``0 (0)``)."""
    return f"{nodes} ({written})" if written.percent else str(nodes)


def render_schedule(resolution: Resolution) -> str:
    """The schedule an operator reads before saying yes."""
    plan = resolution.plan
    rollout = plan.rollout
    _, meaning = TASK_EFFECTS[plan.option]
    selected = resolution.total_selected
    lines = [
        f"Plan {plan.name} ({plan.source.path}): {plan.action.value} with option "
        f"{plan.option.value} (running tasks are {meaning})",
        f"  {count(selected, 'node')} selected in {count(len(resolution.pools), 'pool')}; "
        f"failure budget {_budget(resolution.failure_budget(), rollout.failure_budget)}; "
        f"waves (cumulative) {', '.join(str(w) for w in rollout.waves)}; "
        f"pause {format_duration(rollout.pause_between_waves)}; "
        + (
            f"health gate {format_duration(rollout.health.timeout)}"
            if rollout.health.wait
            else "no health gate"
        ),
    ]
    lines.extend(waits_lines(plan))
    if resolution.narrowing:
        narrowed = describe(resolution.narrowing.as_options())
        lines.append(f"  narrowed from the command line (never more than the plan): {narrowed}")
    running = [waves_of(pool) for pool in resolution.pools]
    tasks = sum(w.running_tasks for waves in running for w in waves)
    nodes = sum(w.running_nodes for waves in running for w in waves)
    if tasks or nodes:
        work = f"{count(tasks, 'task')} on {count(nodes, 'running node')}: "
        lines.append(f"  running work: {work}{task_effect(plan.option, tasks)}")
    else:
        lines.append("  running work: none (no selected node is running a task)")
    lines += _drain_and_notify_lines(plan)
    current = None
    for pool, waves in zip(resolution.pools, running, strict=True):
        if pool.account != current:
            current = pool.account
            lines.append(f"account {pool.account}")
        lines.extend(_pool_lines(pool, waves, plan.option))
        if plan.action is Action.REPLACE:
            lines.extend(replace_lines(pool, plan))
        if cannot_start(pool, plan):
            lines.append(f"    {blocked_reason(pool, plan)}")
    for warning in resolution.warnings:
        lines.append(warning.render())
    return "\n".join(lines)


def _drain_and_notify_lines(plan: Plan) -> list[str]:
    lines = []
    drain = plan.rollout.drain
    if drain is not None:
        lines.append(
            "  drain: a node running tasks when its turn comes is drained first (scheduling "
            f"disabled, up to {format_duration(drain.timeout)} for its tasks), then acted on "
            f"with option {plan.option.value}"
            + ("" if drain.then == plan.option.value else f" ({drain.then} if tasks still run)")
        )
    if plan.notify:
        names = ", ".join(f"${n.url_env}" for n in plan.notify)
        lines.append(f"  notify: {count(len(plan.notify), 'webhook')} from {names}")
    return lines


def cannot_start(pool: PoolResolution, plan: Plan) -> bool:
    """Nodes already down fill the pool's max_unavailable: not one of ours may start."""
    return (
        plan.rollout.health.wait
        and bool(pool.selected)
        and pool.baseline_unavailable >= pool.max_unavailable
    )


def waits_lines(plan: Plan) -> list[str]:
    """The soak and the gates, so that no gate runs without the operator having seen it."""
    rollout = plan.rollout
    lines = []
    if rollout.soak:
        lines.append(
            f"  soak {format_duration(rollout.soak)}: a wave's nodes must stay healthy this "
            "long before the pool's next wave starts"
        )
    if rollout.gates:
        folder = plan.source.path.parent
        lines.append(f"  gates (commands run with no shell, in {folder}):")
        lines.extend(f"    {gate.describe()}" for gate in rollout.gates)
    return lines


def gates_json(plan: Plan) -> list[dict[str, Any]]:
    return [
        {"name": g.name, "command": list(g.command), "timeout": g.timeout,
         "when": g.when.value, "per": g.per.value}
        for g in plan.rollout.gates
    ]  # fmt: skip


def _pool_lines(pool: PoolResolution, waves: list[WaveWork], option: NodeOption) -> list[str]:
    if pool.skipped_reason:
        return [f"  pool {pool.pool_id}: skipped: {pool.skipped_reason}"]
    excluded = Counter(reason_group(reason) for _, reason in pool.excluded)
    already = pool.baseline_unavailable
    lines = [
        f"  pool {pool.pool_id} ({pool.configuration or 'unknown configuration'}): "
        f"{len(pool.selected)} of {count(pool.node_count, 'node')} selected; "
        f"max unavailable {pool.max_unavailable} at any instant"
        + (f" ({already} already unavailable)" if already else "")
    ]
    if waves:
        rows = [
            (
                str(w.wave),
                str(w.nodes),
                str(w.done_after),
                str(w.running_nodes),
                str(w.running_tasks),
                task_effect(option, w.running_tasks),
            )
            for w in waves
        ]
        headers = ("wave", "nodes", "done after", "running nodes", "running tasks", "tasks")
        lines += ["    " + line for line in grid(headers, lambda: rows, right={0, 1, 2, 3, 4})]
    else:
        lines.append("    no wave: nothing selected")
    if excluded:
        lines.append(
            "    excluded: "
            + ", ".join(f"{number} {group}" for group, number in sorted(excluded.items()))
        )
    lines.extend(f"    warning: {warning}" for warning in pool.warnings)
    return lines
