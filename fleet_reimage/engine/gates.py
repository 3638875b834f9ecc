"""The plan's gates in a run: asked before each wave, and once after the run's nodes.

The rollout policy says when a pool's wave waits for its gates (``decide`` answers "gate",
see ``rollout/nextwave.py``); the dispatcher then calls ``GateKeeper.check``, which runs them
beside the run (``gaterun.py``), one at a time in plan order: first the ``per: step`` gates
of that ladder step (run once for every pool: the first pool to reach the step runs them and
the others wait for their answer), then the pool's own ``per: pool`` gates. When all pass,
the pool's wave may start. When one fails or times out, the run stops resumable (exit 3,
stop kind ``gate``): nothing new starts, requests in flight finish, the pool's nodes stay
pending; ``resume`` asks the gates again before that wave. ``after_run`` gates run once,
when every node of the run is finished; a failure stops the run the same way, and
``resume`` asks them again.

Each outcome is an event (``gate_passed`` / ``gate_failed``, for ``--events`` and the
journal's log) with the gate's name, its exit code or timeout, and on failure the last
lines it printed. A shared run (PostgreSQL journal) refuses gates and soaks: ``refuse_shared``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import structlog

from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.gaterun import GateOutcome, run_gate
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import PoolRun
from fleet_reimage.errors import RefusedError
from fleet_reimage.plan.gates import GatePer, GateSpec, GateWhen
from fleet_reimage.plan.model import Plan, SharedKeyAuth
from fleet_reimage.rollout.nextwave import NextWaveWaits
from fleet_reimage.rollout.pool import PoolRollout

log = structlog.get_logger("fleet_reimage.gates")


def refuse_shared(plan: Plan) -> None:
    """Gates and soaks are asked by one runner alone: a shared run refuses them."""
    used = [key for key, on in (("gates", plan.rollout.gates), ("soak", plan.rollout.soak)) if on]
    if used:
        raise RefusedError(
            f"rollout.{' and rollout.'.join(used)} cannot be used with a shared (PostgreSQL) "
            "journal yet: one runner must ask them for every pool; use a SQLite journal "
            "(--journal FILE) for this plan"
        )


def waits_of(pool: PoolRun) -> NextWaveWaits | None:
    """The pool's soak and gate state (a run alone's pools have one when the plan asks)."""
    return pool.rollout.waits if isinstance(pool.rollout, PoolRollout) else None


@dataclass(slots=True)
class _StepAnswer:
    done: anyio.Event
    passed: bool = False


class GateKeeper:
    def __init__(self, ledger: RunLedger, control: RunControl, plan: Plan) -> None:
        self.ledger = ledger
        self.control = control
        gates = plan.rollout.gates
        self.step_gates = [
            g for g in gates if g.when is GateWhen.BEFORE_WAVE and g.per is GatePer.STEP
        ]
        self.pool_gates = [
            g for g in gates if g.when is GateWhen.BEFORE_WAVE and g.per is GatePer.POOL
        ]
        self.after_gates = [g for g in gates if g.when is GateWhen.AFTER_RUN]
        self.cwd = plan.source.path.parent
        self.hidden_env = frozenset(
            a.auth.key_env
            for a in plan.accounts
            if isinstance(a.auth, SharedKeyAuth) and a.auth.key_env is not None
        )
        self._asking: set[tuple[str, str, int]] = set()  # (account, pool, wave) being asked
        self._steps: dict[int, _StepAnswer] = {}

    def check(self, pool: PoolRun, now: float) -> None:
        """The pool started nothing now: if its wave waits for its gates, ask them."""
        rollout = pool.rollout
        waits = waits_of(pool)
        if waits is None or not isinstance(rollout, PoolRollout):
            return
        if self.control.stopping or rollout.done:
            return
        wave = rollout.wave
        key = (*pool.key, wave)
        if key in self._asking or not waits.gate_due(wave):
            return
        if rollout.decision(now).blocked != "gate":
            return
        self._asking.add(key)
        self.control.start_background(self._before_wave, pool, wave)

    async def _before_wave(self, pool: PoolRun, wave: int) -> None:
        passed = await self._step(wave) if self.step_gates else True
        for gate in self.pool_gates if passed else ():
            nodes = self._pool_nodes(pool, wave)
            outcome = await self._ask(gate, wave, nodes, pool)
            if not outcome.passed:
                passed = False
                break
        self._asking.discard((*pool.key, wave))
        waits = waits_of(pool)
        if passed and waits is not None:
            waits.gate_passed(wave)
        self.control.wake()

    async def _step(self, wave: int) -> bool:
        """The step's gates, asked once for every pool (the others wait for the answer)."""
        answer = self._steps.get(wave)
        if answer is not None:
            await answer.done.wait()
            return answer.passed
        answer = self._steps[wave] = _StepAnswer(anyio.Event())
        try:
            nodes = [
                f"{pool.account.name}/{pool.pool_id}/{node}"
                for pool in self.ledger.pools
                for node in self._pool_nodes(pool, wave)
            ]
            answer.passed = True
            for gate in self.step_gates:
                if not (await self._ask(gate, wave, nodes, None)).passed:
                    answer.passed = False
                    break
        finally:
            answer.done.set()
        if not answer.passed:
            del self._steps[wave]  # asked again if the run goes on (it will not: it stops)
        return answer.passed

    async def after_run(self) -> bool:
        """The after_run gates, once every node is finished; False: one failed (the run
        stops, resumable)."""
        nodes = [
            f"{pool.account.name}/{pool.pool_id}/{t.record.node_id}"
            for pool in self.ledger.pools
            for t in self.ledger.targets.values()
            if t.pool is pool
        ]
        for gate in self.after_gates:
            if not (await self._ask(gate, None, nodes, None)).passed:
                return False
        return True

    def _pool_nodes(self, pool: PoolRun, wave: int) -> list[str]:
        targets = self.ledger.targets
        ids = pool.rollout.wave_targets(wave) if isinstance(pool.rollout, PoolRollout) else []
        return [targets[t].record.node_id for t in ids]

    async def _ask(
        self, gate: GateSpec, wave: int | None, nodes: Sequence[str], pool: PoolRun | None
    ) -> GateOutcome:
        values = {"run": self.ledger.run_id}
        if wave is not None:
            values["wave"] = str(wave + 1)
        if pool is not None:
            values.update(account=pool.account.name, pool=pool.pool_id)
        log.info("gate started", gate=gate.name, wave=values.get("wave"), pool=values.get("pool"))
        outcome = await run_gate(gate, values, nodes, cwd=self.cwd, hidden_env=self.hidden_env)
        self._announce(outcome, gate, wave, pool)
        return outcome

    def _announce(
        self, outcome: GateOutcome, gate: GateSpec, wave: int | None, pool: PoolRun | None
    ) -> None:
        data = {**outcome.event_data(), "when": gate.when.value}
        if wave is not None:
            data["wave"] = wave + 1
        kind = "gate_passed" if outcome.passed else "gate_failed"
        if pool is not None:
            self.ledger.pool_event(kind, pool, data)
        else:
            self.ledger.observer.event(kind, data)
            self.ledger.record_event(kind, data=data)
        if outcome.passed:
            return
        where = "after the run" if wave is None else f"before wave {wave + 1}"
        if pool is not None:
            where += f" of {pool.account.name}/{pool.pool_id}"
        last = f"; last output: {outcome.tail[-1]}" if outcome.tail else ""
        # The whole tail is in the journal and status; the log line stays one line of words.
        log.warning(
            "gate failed",
            gate=gate.name,
            where=where,
            why=outcome.summary(),
            last_output=outcome.tail[-1] if outcome.tail else "",
        )
        self.control.request_stop(
            "gate",
            f"gate {gate.name!r} failed {where} ({outcome.summary()}){last}; "
            "resume to ask it again",
        )
