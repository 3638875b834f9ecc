"""``run --dry-run``: resolve the plan and show the schedule; nothing that changes is sent."""

from __future__ import annotations

from . import api
from .plan.model import Plan
from .plan.schedule import render_schedule


async def dry_run(plan: Plan) -> int:
    resolution = await api.resolve_plan(plan)
    print(render_schedule(resolution))
    print("dry run: no reimage or reboot request was sent")
    return 0
