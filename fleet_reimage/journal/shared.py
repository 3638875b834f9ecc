"""Several runners sharing one run (PostgreSQL journals): the interface, and what a claim reads.

The journal supplies what sharing needs and nothing more: runner registrations and row leases,
a row per pool that keeps the rollout policy's memory (``PoolProgress``), and the atomicity of
a claim. It does not decide anything about waves, pauses, ``max_unavailable`` or the failure
budget: a claim locks the pool's row, reads the pool (``PoolState``), hands it to the policy it
was given (``rollout/policy.py``, the same one a run alone uses), then applies what the policy
decided (``Admission``): it takes that many pending targets and stores the new progress, all in
one transaction.

Every time here is the database's clock (epoch seconds), never a runner's: leases, fences,
pauses and the policy's ``now``. What a runner sends or receives is a duration where it can be
("pause for 3 s more", "the wave opens in 20 s"), so that a runner's own clock never matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fleet_reimage.journal.model import RunEvent, TargetRecord


@dataclass(frozen=True, slots=True)
class RunnerInfo:
    runner_id: str  # unique per process, e.g. "host:pid:random"
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class PoolProgress:
    """What the rollout policy remembers of a pool between two of its decisions.

    A run alone keeps it in memory; a shared run keeps it in the pool's row, so that each
    runner's claim goes on from the last one's, whoever made it.
    """

    wave: int | None = None  # the wave the pool is in (ladder step); None: never looked at
    opens_at: float = -math.inf  # the policy's clock: when ``wave`` may start (its pause)
    held: bool = False  # a checkpoint holds the pool until the operator confirms
    finished: bool = False  # the last wave was seen complete


@dataclass(frozen=True, slots=True)
class PoolState:
    """A pool at one instant, as the rollout policy is told it."""

    now: float  # the policy's clock: monotonic in a run alone, the database's in a shared run
    progress: PoolProgress  # what the policy decided last time
    open_wave: int | None  # the lowest wave with a target not yet terminal; None: none left
    active: int  # targets started and not terminal (in a shared run: by any runner)
    baseline: int  # nodes of the pool unavailable for reasons of their own
    failures: int  # failed targets of the whole run
    # Targets of the pool that failed after the action (they came back broken, or not in
    # time) whose nodes are still down: the policy's rule decides whether they hold room.
    failed_down: int = 0


class Admission(Protocol):
    """What the rollout policy decided about a pool, as far as the journal must apply it."""

    @property
    def progress(self) -> PoolProgress:
        """To be kept for the next decision."""

    @property
    def admit(self) -> int:
        """How many new targets may start now."""


A = TypeVar("A", bound=Admission)
ClaimPolicy = Callable[[PoolState], A]


@dataclass(frozen=True, slots=True)
class Claim(Generic[A]):
    """What one claim on a pool gave this runner (see ``SharedRuns.claim``)."""

    targets: list[TargetRecord]  # pending targets now owned by this runner, in dispatch order
    takeovers: list[TargetRecord]  # in_flight/accepted targets of a runner whose lease expired
    state: PoolState  # what the policy was told (its clock: the database's)
    decision: A  # what the policy decided
    more_pending: bool  # free pending targets of the current wave are left after this claim


@dataclass(frozen=True, slots=True)
class GateKey:
    """One ask of a gate in a run: its name and ``when``, the wave (1-based; None after the
    run) and the pool (None: a gate per ladder step, or after the run)."""

    gate: str
    when: str
    wave: int | None
    account: str | None = None
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    """The latest answer recorded for a ``GateKey`` (a ``gate_passed``/``gate_failed`` event)."""

    passed: bool
    event_id: int  # the event's id: later events have greater ids


class GateTurn(Protocol):
    """One runner's exclusive turn at a gate of a shared run (see ``SharedRuns.gate_turn``)."""

    @property
    def last(self) -> GateResult | None:
        """The gate's latest answer, whoever asked it (None: never asked in this run)."""

    async def record(self, event: RunEvent) -> None:
        """Record the answer (a ``gate_passed``/``gate_failed`` event) before the turn ends,
        so the next runner to take the turn sees it."""


class SharedRuns(Protocol):
    """Row leases that let several runners share one run (PostgreSQL only).

    Every limit holds across runners because it is decided inside one transaction per claim,
    with the pool's row locked (see the module docstring).
    """

    async def server_time(self) -> float:
        """The database's clock (epoch seconds): what every lease and pause is measured by."""

    async def register_runner(
        self, run_id: str, runner: RunnerInfo, *, lease: float, exclusive: bool
    ) -> list[RunnerInfo]:
        """Join the run's live runners (returns them). ``exclusive``: refuse with JournalBusy
        naming the live runner(s) if any other runner of this run is alive."""

    async def heartbeat(self, run_id: str, runner_id: str, *, lease: float) -> list[RunnerInfo]:
        """Renew this runner's lease and those of its targets; returns the live runners.
        Raises LeaseLost if this runner's registration expired and was removed meanwhile."""

    async def claim(
        self,
        run_id: str,
        runner_id: str,
        account: str,
        pool: str,
        *,
        limit: int,
        baseline: int,
        lease: float,
        policy: ClaimPolicy[A],
    ) -> Claim[A]:
        """Take over the pool's in_flight/accepted targets whose owner's lease expired; ask
        ``policy`` how many new targets may start, and claim up to ``limit`` of them (pending
        targets of the current wave, in dispatch order). ``baseline`` is the pool's until a
        health poll records one (``set_pool_baseline``)."""

    async def release(self, run_id: str, runner_id: str, target_ids: Sequence[int]) -> None:
        """Give back claimed targets that were never sent (owner cleared)."""

    async def set_pool_baseline(
        self,
        run_id: str,
        account: str,
        pool: str,
        baseline: int,
        down_targets: Sequence[str] | None = None,
    ) -> None:
        """Record the pool's nodes unavailable for other reasons (from a health poll), and
        ``down_targets``: the node ids of the pool's targets that poll saw not ready (a
        claim counts the failed ones among them as ``failed_down``; until a poll records
        them, every target that failed after the action counts as down)."""

    async def share_pause(self, run_id: str, account: str, pause_for: float) -> float:
        """Make the account's shared Retry-After pause last at least ``pause_for`` seconds
        more; returns how long it lasts now (seconds), so every runner waits the same."""

    async def resume_pools(self, run_id: str) -> None:
        """A resume is the operator's go-ahead: release every pool's checkpoint and pause."""

    async def leave(self, run_id: str, runner_id: str) -> None:
        """Release every target this runner owns that is not terminal, and unregister."""

    async def event_mark(self, run_id: str) -> int:
        """The id of the run's latest event (0: none): events recorded later have greater ids."""

    def gate_turn(self, run_id: str, key: GateKey) -> AbstractAsyncContextManager[GateTurn]:
        """Wait for this runner's turn at the gate ``key`` (one runner at a time in the whole
        run; a runner that dies mid-turn loses it with its connection), then hold it."""
