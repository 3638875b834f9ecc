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
lines it printed.

In a shared run (PostgreSQL journal, several runners) each runner's claims wait for the
gates this runner knows passed; a runner whose claim is held by a gate takes its turn at it
(``SharedRuns.gate_turn``: one runner at a time per gate, pool and wave in the whole run).
If the gate's latest answer, read in that turn, is a pass, the runner takes it without
asking again; if it is a failure recorded since this runner joined, the runner stops too
(exit 3); otherwise (never asked, or failed before a resume) it asks the gate and records
the answer before its turn ends. So a gate is asked once per pool (or step) and wave for
the whole run, and a failure stops every runner. A gate that passed before a resume is not
asked again on resume unless it failed last.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog

from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.gaterun import GateOutcome, run_gate
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import PoolKey, PoolRun
from fleet_reimage.journal.model import JournalError, RunEvent
from fleet_reimage.journal.shared import GateKey, SharedRuns
from fleet_reimage.plan.gates import GatePer, GateSpec, GateWhen
from fleet_reimage.plan.model import Plan, SharedKeyAuth
from fleet_reimage.rollout.nextwave import NextWaveWaits
from fleet_reimage.rollout.pool import PoolRollout

log = structlog.get_logger("fleet_reimage.gates")


def waits_of(pool: PoolRun) -> NextWaveWaits | None:
    """The pool's soak and gate state (it has one when the plan asks)."""
    return pool.rollout.waits


class SharedGates(Protocol):
    """What a shared run's gates need of its coordinator (``engine/sharedrun.py``)."""

    @property
    def store(self) -> SharedRuns: ...

    @property
    def event_mark(self) -> int: ...

    def wake(self) -> None: ...


@dataclass(slots=True)
class _StepAnswer:
    done: anyio.Event
    passed: bool = False


class GateKeeper:
    def __init__(
        self, ledger: RunLedger, control: RunControl, plan: Plan, shared: SharedGates | None = None
    ) -> None:
        self.ledger = ledger
        self.shared = shared
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
        if waits is None or self.control.stopping or rollout.done:
            return
        wave = rollout.wave
        key = (*pool.key, wave)
        if key in self._asking or not waits.gate_due(wave):
            return
        if isinstance(rollout, PoolRollout):
            blocked = rollout.decision(now).blocked
        else:  # a shared run's: as its last claim decided
            blocked = rollout.blocked
        if blocked != "gate":
            return
        self._asking.add(key)
        self.control.start_background(self._before_wave, pool, wave)

    async def _before_wave(self, pool: PoolRun, wave: int) -> None:
        passed = await self._step(wave) if self.step_gates else True
        for gate in self.pool_gates if passed else ():
            nodes = self._pool_nodes(pool, wave)
            if not await self._ask(gate, wave, nodes, pool):
                passed = False
                break
        self._asking.discard((*pool.key, wave))
        waits = waits_of(pool)
        if passed and waits is not None:
            waits.gate_passed(wave)
        self.control.wake()
        if self.shared is not None:  # claim again now: the wave may start
            self.shared.wake()

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
                if not await self._ask(gate, wave, nodes, None):
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
        by_pool: dict[PoolKey, list[str]] = {pool.key: [] for pool in self.ledger.pools}
        for target in self.ledger.targets.values():  # one pass, not one per pool
            if (ids := by_pool.get(target.pool.key)) is not None:
                ids.append(target.record.node_id)
        nodes = [f"{account}/{pool}/{node}" for (account, pool), ids in by_pool.items()
                 for node in ids]  # fmt: skip
        for gate in self.after_gates:
            if not await self._ask(gate, None, nodes, None):
                return False
        return True

    def _pool_nodes(self, pool: PoolRun, wave: int) -> list[str]:
        targets = self.ledger.targets
        if isinstance(pool.rollout, PoolRollout):
            return [targets[t].record.node_id for t in pool.rollout.wave_targets(wave)]
        ours = (t.record for t in targets.values() if t.pool is pool and t.record.wave == wave)
        return [r.node_id for r in sorted(ours, key=lambda r: r.position)]

    async def _ask(
        self, gate: GateSpec, wave: int | None, nodes: Sequence[str], pool: PoolRun | None
    ) -> bool:
        """Ask ``gate`` (in a shared run: unless another runner's answer stands); True: go on."""
        if self.shared is None:
            outcome = await self._run(gate, wave, nodes, pool)
            event = self._event(outcome, gate, wave, pool)
            self.ledger.record_event(event.kind, account=event.account, pool=event.pool,
                                     data=event.data)  # fmt: skip
            self._announce(outcome, event, gate, wave, pool)
            return outcome.passed
        try:
            return await self._ask_shared(self.shared, gate, wave, nodes, pool)
        except JournalError as error:  # its answer could not be shared: go no further
            self.control.request_stop("journal", f"gate {gate.name!r}: {error}")
            return False

    async def _ask_shared(
        self,
        shared: SharedGates,
        gate: GateSpec,
        wave: int | None,
        nodes: Sequence[str],
        pool: PoolRun | None,
    ) -> bool:
        """``_ask`` in a shared run: in this runner's turn at the gate (module docstring)."""
        account, pool_id = (None, None) if pool is None else pool.key
        key = GateKey(gate.name, gate.when.value, None if wave is None else wave + 1,
                      account, pool_id)  # fmt: skip
        async with shared.store.gate_turn(self.ledger.run_id, key) as turn:
            last = turn.last
            if last is not None and last.passed:
                log.info("gate passed on another runner", gate=gate.name, wave=key.wave,
                         pool=pool_id)  # fmt: skip
                return True
            if last is not None and last.event_id > shared.event_mark:
                self._stop(gate, wave, pool, "failed on another runner of this run")
                return False
            if self.control.stopping:  # it stopped while waiting for its turn: ask nothing
                return False
            outcome = await self._run(gate, wave, nodes, pool)
            event = self._event(outcome, gate, wave, pool)
            await turn.record(event)  # before the turn ends: the next runner reads it
        self._announce(outcome, event, gate, wave, pool)
        return outcome.passed

    async def _run(
        self, gate: GateSpec, wave: int | None, nodes: Sequence[str], pool: PoolRun | None
    ) -> GateOutcome:
        values = {"run": self.ledger.run_id}
        if wave is not None:
            values["wave"] = str(wave + 1)
        if pool is not None:
            values.update(account=pool.account.name, pool=pool.pool_id)
        log.info("gate started", gate=gate.name, wave=values.get("wave"), pool=values.get("pool"))
        return await run_gate(gate, values, nodes, cwd=self.cwd, hidden_env=self.hidden_env)

    def _event(
        self, outcome: GateOutcome, gate: GateSpec, wave: int | None, pool: PoolRun | None
    ) -> RunEvent:
        data: dict[str, object] = {**outcome.event_data(), "when": gate.when.value}
        if wave is not None:
            data["wave"] = wave + 1
        kind = "gate_passed" if outcome.passed else "gate_failed"
        account, pool_id = (None, None) if pool is None else pool.key
        return RunEvent(self.ledger.run_id, time.time(), kind, account, pool_id, data)

    def _announce(
        self,
        outcome: GateOutcome,
        event: RunEvent,
        gate: GateSpec,
        wave: int | None,
        pool: PoolRun | None,
    ) -> None:
        """Tell ``--events`` (the journal has it already); a failure stops the run."""
        where = {} if pool is None else {"account": pool.account.name, "pool": pool.pool_id}
        self.ledger.observer.event(event.kind, {**where, **event.data})
        if outcome.passed:
            return
        # The whole tail is in the journal and status; the log line stays one line of words.
        log.warning(
            "gate failed",
            gate=gate.name,
            where=_where(wave, pool),
            why=outcome.summary(),
            last_output=outcome.tail[-1] if outcome.tail else "",
        )
        last = f"; last output: {outcome.tail[-1]}" if outcome.tail else ""
        self._stop(gate, wave, pool, f"({outcome.summary()}){last}")

    def _stop(self, gate: GateSpec, wave: int | None, pool: PoolRun | None, why: str) -> None:
        where = _where(wave, pool)
        self.control.request_stop(
            "gate", f"gate {gate.name!r} failed {where} {why}; resume to ask it again"
        )


def _where(wave: int | None, pool: PoolRun | None) -> str:
    """Which ask of a gate, in words: ``before wave 2 of acct/p``, ``after the run``."""
    where = "after the run" if wave is None else f"before wave {wave + 1}"
    if pool is not None:
        where += f" of {pool.account.name}/{pool.pool_id}"
    return where
