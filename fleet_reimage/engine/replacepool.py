"""One pool's replace: its steps, its resume, its verdicts (see ``replace.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from fleet_reimage.batch.models import NodeInfo, PoolInfo
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.poolcalls import PoolCallFailed, PoolCalls, Targets
from fleet_reimage.engine.runstate import Phase, PoolRun, RunTarget
from fleet_reimage.journal import poolops
from fleet_reimage.journal.model import RunEvent, TargetState
from fleet_reimage.journal.poolops import PoolOpRecord
from fleet_reimage.plan.model import Plan
from fleet_reimage.rollout import replace as steps
from fleet_reimage.rollout.pool import PoolRollout
from fleet_reimage.units import count

log = structlog.get_logger("fleet_reimage.replace")

BROKEN = frozenset({"starttaskfailed", "unusable"})
HEALTHY, FAILED = "healthy", "failed"
JUDGED = "replace_judged"  # the event that journals a step's verdict
Verdicts = dict[str, str]  # old node id -> healthy | failed


class ReplacePool:
    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        plan: Plan,
        pool: PoolRun,
        calls: PoolCalls,
        gates: Callable[[PoolRun, float], None],
    ) -> None:
        self.ledger = ledger
        self.control = control
        self.plan = plan
        self.pool = pool
        self.calls = calls
        self.ask_gates = gates
        self.health = plan.rollout.health
        self.surge = steps.surge_nodes(plan.rollout.surge, pool.selected)
        self.autoscale = False
        self.target: Targets = (0, 0)  # T, per kind
        self.known: set[str] = set()  # node ids that are not new, or new and judged
        self.dedicated: dict[str, bool] = {}  # node id -> its kind
        self.verdicts: Verdicts = {}
        # The pool's targets (fixed for the run; their records change in place), not
        # filtered out of the whole run's again at every step.
        self.targets = [t for t in ledger.targets.values() if t.pool is pool]

    @property
    def surging(self) -> bool:
        """Steps add new nodes first (an auto-scaled pool cannot be resized by hand)."""
        return self.surge > 0 and not self.autoscale

    # --- start and resume ---

    async def run(self, ops: list[PoolOpRecord], judged: list[RunEvent]) -> None:
        info = await self.calls.steady()
        if info.enable_auto_scale and self.plan.rollout.autoscale != "allow":
            await self.stopped(
                "the pool is auto-scaled, and Batch refuses to resize it by hand; replace it "
                "with rollout.autoscale: allow (then its formula brings capacity back), or "
                "disable auto-scale first",
                resumable=False,
            )
            return
        self.autoscale = info.enable_auto_scale
        nodes = await self.calls.nodes()
        self._learn_kinds(nodes)
        await self._start(info, nodes, ops, judged)
        await self._resume(ops)
        await self._steps()

    def _learn_kinds(self, nodes: dict[str, NodeInfo]) -> None:
        for node in nodes.values():
            self.dedicated[node.id] = node.is_dedicated is not False

    async def _start(
        self,
        info: PoolInfo,
        nodes: dict[str, NodeInfo],
        ops: list[PoolOpRecord],
        judged: list[RunEvent],
    ) -> None:
        start = next(iter(poolops.of_pool(ops, self.pool.key, poolops.START)), None)
        if start is None:
            self.target = (info.target_dedicated or 0, info.target_low_priority or 0)
            self.known = set(nodes)
            await self.calls.record_start(self.target, sorted(nodes))
            await self._note("replace_started", {"target": list(self.target),
                                                 "surge": self.surge})  # fmt: skip
            return
        self.target = (start.target_dedicated, start.target_low_priority)
        self.known = set(start.node_ids)
        for event in judged:
            self.known.update(str(n) for n in event.data.get("new", []))
            self.verdicts.update({str(k): str(v) for k, v in event.data.get("old", {}).items()})

    async def _resume(self, ops: list[PoolOpRecord]) -> None:
        """Settle what a dead run left: removals in doubt, and targets between states."""
        removed: set[str] = set()
        for op in poolops.of_pool(ops, self.pool.key, poolops.REMOVE):
            if op.in_doubt:  # reconciled (and its outcome recorded) from the pool now
                after = (op.target_dedicated, op.target_low_priority)
                ids = list(op.node_ids)
                took = await self.calls.removal_applied(op.client_request_id, ids, after)
            else:
                took = op.outcome in (poolops.ACCEPTED, poolops.APPLIED)
            if took:
                removed.update(op.node_ids)
        for target in self.targets:
            state = target.record.state
            if state.terminal:
                continue
            if target.record.node_id in removed and state is not TargetState.ACCEPTED:
                await self._mark(target, TargetState.ACCEPTED, "removed")
            elif target.record.node_id not in removed and state is not TargetState.PENDING:
                await self.ledger.change(
                    target, TargetState.PENDING, "its removal did not take effect"
                )
                self.ledger.requeue(target)

    # --- the steps ---

    async def _steps(self) -> None:
        while not self.control.stopping and self.pool.rollout.stopped is None:
            carried = [t for t in self.targets if t.record.state is TargetState.ACCEPTED]
            if carried:
                await self._replace_removed(carried)
                continue
            batch = await self._take()
            if not batch:
                return
            if self.surging:
                await self._surge_step(batch)
            else:
                await self._remove(batch)

    async def _take(self) -> list[RunTarget] | None:
        """The next step's targets, once the policy allows one; None when the pool is done."""
        rollout = self.pool.rollout
        assert isinstance(rollout, PoolRollout)  # replace pools are local (runner.py)
        while True:
            if rollout.done or self.control.stopping:
                return None
            now = time.monotonic()
            decision = rollout.decision(now)
            limit = steps.step_limit(decision.admit, self.surge, self.surging)
            if decision.blocked in ("budget", "unavailable") or (
                decision.blocked is None and limit <= 0
            ):  # nothing of ours is in progress here: no room will come back by waiting
                await self.stopped(self._blocked_reason(decision.blocked), resumable=True)
                return None
            if decision.blocked == "gate":
                self.ask_gates(self.pool, now)
            if decision.blocked is not None:  # a pause, a checkpoint (the executor asks),
                wait = 0.1 if decision.opens_at is None else decision.opens_at - now
                await anyio.sleep(min(max(wait, 0.05), 1.0))  # or any other wave condition
                continue
            return self._take_targets(now, limit)

    def _take_targets(self, now: float, limit: int) -> list[RunTarget]:
        batch: list[RunTarget] = []
        while len(batch) < limit:
            target_id = self.pool.rollout.take_next(now)
            if target_id is None:
                break
            target = self.ledger.targets[target_id]
            target.started = now
            target.phase = Phase.REQUEST
            batch.append(target)
        if batch:
            self.ledger.wave_started(self.pool, now)
        return batch

    def _blocked_reason(self, blocked: str | None) -> str:
        if blocked == "budget":
            return "the failure budget is spent"
        held = self.pool.rollout.failed_down
        return (
            f"{count(held, 'new node')} that failed hold all of max_unavailable: no more old "
            "nodes may leave (fix or remove them, then resume)"
        )

    async def _surge_step(self, batch: list[RunTarget]) -> None:
        """Resize to T + b, gate the new nodes, then remove the old ones they replace."""
        extra = self._kinds(batch)
        base = self._base()
        await self._resize((base[0] + extra[0], base[1] + extra[1]))
        judged = await self._gate(len(batch))
        if judged is None:  # stopping while new nodes boot: the targets start over on resume
            for target in batch:
                self.ledger.requeue(target)
            return
        ready, failed = judged
        rollout = self.pool.rollout
        room = rollout.max_unavailable - self.surge - rollout.baseline - rollout.failed_down
        leaving = steps.removals_after_surge(len(batch), len(ready), room)
        verdicts = self._pair(batch[:leaving], len(ready))
        kept = {t.record.node_id: FAILED for t in batch[leaving:]}
        await self._judge(ready + failed, {**verdicts, **kept})
        for target in batch[leaving:]:
            await self._settle(target, FAILED, "its replacement failed; the old node was kept")
        await self._remove(batch[:leaving])
        for target in batch[:leaving]:
            await self._settle(target, self.verdicts[target.record.node_id], None)

    async def _remove(self, batch: list[RunTarget]) -> None:
        """Remove the batch's old nodes (≤ 100 ids a call); their targets become accepted."""
        by_node = {t.record.node_id: t for t in batch}
        for chunk in steps.chunks(list(by_node)):
            olds = [by_node[n] for n in chunk]
            await self._mark_all(olds, TargetState.IN_FLIGHT)
            after = self._after_removing(olds)
            await self.calls.remove(chunk, after)
            await self._note("nodes_removed", {"nodes": chunk, "target_after": list(after)})
            await self._mark_all(olds, TargetState.ACCEPTED)
        if batch:
            await self.calls.steady()

    async def _replace_removed(self, removed: list[RunTarget]) -> None:
        """Old nodes removed: settle those already judged; bring the rest back to T, gated."""
        waiting = []
        for target in removed:
            verdict = self.verdicts.get(target.record.node_id)
            if verdict is None:
                waiting.append(target)
            else:
                await self._settle(target, verdict, None)
        if not waiting:
            return
        if not self.autoscale:
            await self._resize(self._base())
        judged = await self._gate(len(waiting))
        if judged is None:
            return  # stopping: resume gates them
        ready, failed = judged
        await self._judge(ready + failed, self._pair(waiting, len(ready)))
        for target in waiting:
            await self._settle(target, self.verdicts[target.record.node_id], None)

    async def _resize(self, targets: Targets) -> None:
        await self.calls.resize(targets)
        await self._note("pool_resized", {"target": list(targets)})
        self._check(await self.calls.steady())

    async def _note(self, kind: str, data: dict[str, object]) -> None:
        """An event of the pool, journaled (durably, before what follows from it) and
        told to --events. The calls themselves are the pool-operations rows."""
        account, pool_id = self.pool.key
        event = RunEvent(self.ledger.run_id, time.time(), kind, account, pool_id, data)
        await self.ledger.journal.record_event(event)
        self.ledger.observer.event(kind, {"account": account, "pool": pool_id, **data})

    # --- new nodes ---

    async def _gate(self, expected: int) -> tuple[list[str], list[str]] | None:
        """The step's new nodes (ready, failed) once ``expected`` of them are judged (ready,
        or broken), or the health timeout passed (the missing count as failed); None when
        the run stops first."""
        if not self.health.wait:  # not waited for: whatever the pool added, unjudged
            nodes = await self.calls.nodes()
            return [n for n in nodes if n not in self.known][:expected], []
        deadline = time.monotonic() + self.health.timeout
        while True:
            nodes = await self.calls.nodes()
            self._learn_kinds(nodes)
            new = [n for n in nodes.values() if n.id not in self.known]
            ready = [n.id for n in new if n.state in self.health.ready_states]
            broken = [n.id for n in new if n.state in BROKEN]
            if len(ready) + len(broken) >= expected:
                return ready[:expected], broken[: expected - min(len(ready), expected)]
            if time.monotonic() >= deadline:
                late = [n.id for n in new if n.id not in ready and n.id not in broken]
                return ready, broken + late
            if self.control.stopping:
                return None
            await anyio.sleep(self.health.poll_interval)

    def _pair(self, olds: list[RunTarget], ready: int) -> Verdicts:
        return {t.record.node_id: HEALTHY if i < ready else FAILED for i, t in enumerate(olds)}

    async def _judge(self, new: list[str], verdicts: Verdicts) -> None:
        """Journal the verdict (durably) before anything follows from it."""
        self.known.update(new)
        self.verdicts.update(verdicts)
        await self._note(JUDGED, {"new": new, "old": verdicts})

    # --- targets ---

    async def _mark(self, target: RunTarget, state: TargetState, reason: str | None) -> None:
        await self.ledger.change(target, state, reason)
        self.ledger.set_state(target, state)
        if state is TargetState.ACCEPTED:
            target.record.accepted_at = time.time()
            target.phase = Phase.HEALTH

    async def _mark_all(self, targets: list[RunTarget], state: TargetState) -> None:
        async with anyio.create_task_group() as group:
            for target in targets:
                group.start_soon(self._mark, target, state, None)

    async def _settle(self, target: RunTarget, verdict: str, reason: str | None) -> None:
        state = TargetState.HEALTHY if verdict == HEALTHY else TargetState.FAILED
        if state is TargetState.FAILED and reason is None:
            reason = "its replacement did not come up ready (starttaskfailed, unusable or late)"
        elif not self.health.wait:
            state, reason = (
                TargetState.DONE_UNVERIFIED,
                "replaced; the plan does not wait for health",
            )
        elif reason is None:
            reason = "replaced: removed, and its new node is ready"
        await self.ledger.change(target, state, reason)
        self.ledger.settle(target, state, reason)

    def _kinds(self, batch: list[RunTarget]) -> Targets:
        dedicated = sum(1 for t in batch if self.dedicated.get(t.record.node_id, True))
        return dedicated, len(batch) - dedicated

    def _base(self) -> Targets:
        """What the pool returns to after a step: T, plus the old nodes a surge step kept in
        service because their replacements failed (their new nodes stay in the pool)."""
        kept = [
            t
            for t in self.targets
            if t.record.state is TargetState.FAILED and t.record.accepted_at is None
        ]
        extra = self._kinds(kept)
        return self.target[0] + extra[0], self.target[1] + extra[1]

    def _after_removing(self, olds: list[RunTarget]) -> Targets:
        """The pool's targets once ``olds`` left: T with surge (it stood at T + b), else
        T less them (informational: the service lowers each kind's target itself)."""
        if self.surging:
            return self._base()
        kinds, base = self._kinds(olds), self._base()
        return base[0] - kinds[0], base[1] - kinds[1]

    def _check(self, info: PoolInfo) -> None:
        """A resize that could not be met stops the pool, in the service's words."""
        wanted = (info.target_dedicated or 0, info.target_low_priority or 0)
        current = (info.current_dedicated, info.current_low_priority)
        if info.resize_errors and current != wanted:
            said = "; ".join(f"{e.code}: {e.message}" for e in info.resize_errors)
            raise PoolCallFailed(
                f"the pool could not be resized to {wanted[0]} dedicated + {wanted[1]} "
                f"low-priority nodes (it has {current[0]} + {current[1]}): {said}"
            )

    # --- the end ---

    async def stopped(self, reason: str, *, resumable: bool = True) -> None:
        """No more changes to this pool; what it reached is stated."""
        await self.stated()
        self.ledger.stop_pool(self.pool, reason, resumable=resumable)
        for target in self.targets:  # durably now: the run may end before the background
            if target.record.state is TargetState.SKIPPED:
                await self.ledger.change(target, TargetState.SKIPPED, reason)

    async def stated(self) -> None:
        await self._pool_event("replace_stopped")

    async def finished(self) -> None:
        await self._pool_event("pool_replaced")

    async def _pool_event(self, kind: str) -> None:
        try:
            info = await self.calls.info()
            final: list[int | None] = [info.target_dedicated, info.target_low_priority]
        except Exception:
            final = [None, None]
        removed = sum(1 for t in self.targets if t.record.accepted_at is not None)
        ready = sum(1 for verdict in self.verdicts.values() if verdict == HEALTHY)
        data = {
            "target": list(self.target),
            "final_target": final,
            "old_removed": removed,
            "new_ready": ready,
            "new_failed": len(self.verdicts) - ready,
            "surge": self.surge,
            "calls": self.calls.calls,
        }
        await self._note(kind, data)
