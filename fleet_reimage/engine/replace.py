"""``action: replace``: each pool's old nodes removed and fresh ones resized in, step by step.

The executor runs this in place of its per-node dispatch loop when the plan's action is
``replace`` (``executor.py``). Every pool is one sequential task: one resize or removal at a
time (``poolcalls.py``: journaled before the call, reconciled when in doubt). A target is an
old node; its states say where its replacement stands::

    pending ──► in_flight (removal journaled) ──► accepted (removed) ──► healthy | failed
       └──────────────────────────────────────────────────────────► failed (kept: surge only)

How many targets a step takes, wave after wave, is the rollout policy's (``rollout/pool.py``
over ``rollout/policy.py``); the step arithmetic is ``rollout/replace.py``. New nodes are
health-gated like reimaged ones: ``starttaskfailed`` and ``unusable`` (and not ready within
``health.timeout``) fail the old target they replace, which counts against the failure
budget and, once removed, holds its room in max_unavailable.

The verdict on a step's new nodes is journaled (event ``replace_judged``: the new node ids
and each old target's outcome) before anything follows from it, so a resumed run knows the
new nodes already judged, and settles a removed target from its verdict instead of waiting
for a node that will never come. A stopped run leaves each pool at a target that is
journaled (the pool-operations rows) and stated (event ``replace_stopped``), never below
T − max_unavailable; ``resume`` continues it to T.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog

from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger, failed_after_action
from fleet_reimage.engine.poolcalls import PoolCallFailed, PoolCalls
from fleet_reimage.engine.replacepool import JUDGED, ReplacePool
from fleet_reimage.engine.runstate import Phase, PoolRun
from fleet_reimage.journal.model import RunEvent, TargetState
from fleet_reimage.journal.poolops import PoolOpRecord, PoolTurns
from fleet_reimage.plan.model import Plan
from fleet_reimage.rollout.pool import PoolRollout

log = structlog.get_logger("fleet_reimage.replace")
ACTIVE = frozenset({TargetState.IN_FLIGHT, TargetState.ACCEPTED})


class ReplaceDriver:
    """Runs every pool's replace to its end or the run's stop."""

    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        plan: Plan,
        *,
        deadline: Callable[[], None],
        checkpoint: Callable[[], None],
        gates: Callable[[PoolRun, float], None],
    ) -> None:
        self.ledger = ledger
        self.control = control
        self.plan = plan
        self.check_deadline = deadline
        self.checkpoint = checkpoint  # every pool held (or done): ask the operator, or stop
        self.gates = gates  # a pool's wave waits for its gates: ask them

    async def run(self) -> None:
        journal = self.ledger.journal
        ops: list[PoolOpRecord] = []
        judged: list[RunEvent] = []
        if not isinstance(journal, PoolTurns):  # a shared run reads them in each pool's turn
            ops, judged = await self._journaled()
        async with anyio.create_task_group() as group:
            group.start_soon(self._deadline_watch)
            async with anyio.create_task_group() as pools:
                for pool in self.ledger.pools:
                    if not pool.rollout.done:
                        pools.start_soon(self._pool, pool, ops, judged)
            group.cancel_scope.cancel()

    async def _journaled(self) -> tuple[list[PoolOpRecord], list[RunEvent]]:
        """The run's pool operations and its journaled verdicts (``JUDGED`` events)."""
        journal, run_id = self.ledger.journal, self.ledger.run_id
        ops = await journal.pool_ops(run_id)
        events = await journal.events(run_id)
        return ops, [e for e in events if e.kind == JUDGED]

    async def _deadline_watch(self) -> None:
        """The deadline, and the checkpoint once every pool is held at it (the executor's)."""
        while True:
            self.check_deadline()
            self.checkpoint()
            await anyio.sleep(0.25)

    async def _pool(self, pool: PoolRun, ops: list[PoolOpRecord], judged: list[RunEvent]) -> None:
        journal = self.ledger.journal
        if not isinstance(journal, PoolTurns):  # a SQLite journal: this runner alone
            await self._replace(pool, ops, judged)
            return
        async with journal.pool_turn(self.ledger.run_id, *pool.key):
            if self.control.stopping:
                return
            await self._adopt(pool)  # another runner may have moved the pool on
            if pool.rollout.done:
                return
            await self._replace(pool, *await self._journaled())

    async def _adopt(self, pool: PoolRun) -> None:
        """The pool's targets as the journal has them now."""
        ledger = self.ledger
        records = {
            r.target_id: r
            for r in await ledger.journal.targets(ledger.run_id)
            if (r.account, r.pool) == pool.key
        }
        mine = [t for t in ledger.targets.values() if t.pool is pool]
        for target in mine:
            ledger.refresh_record(target, records[target.id])
            if target.record.state.terminal:
                target.phase = Phase.DONE
        rollout = pool.rollout
        assert isinstance(rollout, PoolRollout)  # replace pools are local (runner.py)
        rollout.adopt(
            [t.id for t in mine if t.record.state.terminal],
            [t.id for t in mine if t.record.state in ACTIVE],
            [t.id for t in mine if failed_after_action(t.record)],
        )

    async def _replace(
        self, pool: PoolRun, ops: list[PoolOpRecord], judged: list[RunEvent]
    ) -> None:
        calls = PoolCalls(self.ledger.journal, self.ledger.run_id, pool, self.plan)
        mine = [e for e in judged if (e.account, e.pool) == pool.key]
        work = ReplacePool(self.ledger, self.control, self.plan, pool, calls, self.gates)
        try:
            await work.run(ops, mine)
        except PoolCallFailed as error:
            await work.stopped(str(error))
        if not self.control.stopping and pool.rollout.stopped is None:
            await work.finished()
        elif pool.rollout.stopped is None:
            await work.stated()
        log.info("pool replace ended", pool=pool.pool_id, calls=calls.calls)
