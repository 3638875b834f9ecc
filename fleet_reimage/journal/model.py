"""What the journal stores, and the storage interface every backend implements.

A journal holds many runs. For each run: the run itself (plan text and hash, options,
status), one row per target node with its state machine, one row per HTTP attempt, the
nodes that the plan's selection excluded (and why), and a log of run events (wave
boundaries, pauses, budget decisions, throttle changes, stops).

Target states::

    pending ──► in_flight ──► accepted ──► healthy
                   │  ▲           │
                   │  └─(retry)   └──► failed
                   ├──► failed / gone / skipped
                   └──► done_unverified  (accepted and the plan does not wait for health)

Times are UTC epoch seconds (float). No record ever holds a key, token or password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from fleet_reimage.errors import FleetReimageError
from fleet_reimage.journal.poolops import PoolOpEnd, PoolOpRecord, PoolOpStart

W = TypeVar("W")


class TargetState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"  # a request was (or is about to be) sent; not yet known accepted
    ACCEPTED = "accepted"  # 202 seen (or in-doubt reconciled as applied); awaiting health
    HEALTHY = "healthy"  # back in a ready state with a lastBootTime after our request
    DONE_UNVERIFIED = "done_unverified"  # accepted, and the plan does not wait for health
    FAILED = "failed"
    GONE = "gone"  # the node left the pool (404)
    SKIPPED = "skipped"  # not done, for a reason that is not the node's failure

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        TargetState.HEALTHY,
        TargetState.DONE_UNVERIFIED,
        TargetState.FAILED,
        TargetState.GONE,
        TargetState.SKIPPED,
    }
)


class RunStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"  # stopped on purpose (budget, auth, deadline, checkpoint): resumable
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: resumable
    FINISHED = "finished"  # every target terminal

    @property
    def resumable(self) -> bool:
        return self is not RunStatus.FINISHED


class AttemptOutcome(StrEnum):
    ACCEPTED = "accepted"  # 202
    REJECTED = "rejected"  # an HTTP error status (see status/code)
    NOT_SENT = "not_sent"  # connect failure: the server never saw it
    IN_DOUBT = "in_doubt"  # timeout / connection lost after sending
    RECONCILED_APPLIED = "reconciled_applied"  # in doubt, then the node showed it took effect
    RECONCILED_NOT_APPLIED = "reconciled_not_applied"


@dataclass(frozen=True, slots=True)
class NewRun:
    run_id: str
    name: str
    action: str  # reimage | reboot
    plan_path: str
    plan_text: str
    plan_sha256: str
    options: Mapping[str, Any]  # command-line options that shape the run (deadline, ...)
    created_at: float
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    name: str
    action: str
    plan_path: str
    plan_text: str
    plan_sha256: str
    options: Mapping[str, Any]
    created_at: float
    updated_at: float
    ended_at: float | None
    status: RunStatus
    reason: str | None
    host: str
    pid: int


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class NewTarget(NamedTuple):
    account: str
    pool: str
    node_id: str
    wave: int  # 0-based wave index within its pool
    position: int  # dispatch order within the pool


@dataclass(slots=True)
class TargetRecord:
    target_id: int
    run_id: str
    account: str
    pool: str
    node_id: str
    wave: int
    position: int
    state: TargetState
    reason: str | None = None
    updated_at: float = 0.0
    first_sent_at: float | None = None
    last_sent_at: float | None = None  # of the latest attempt: compare with lastBootTime
    accepted_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    last_code: str | None = None


@dataclass(frozen=True, slots=True)
class Exclusion:
    account: str
    pool: str
    node_id: str | None  # None when a whole pool is excluded
    reason: str


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class AttemptStart(NamedTuple):
    """Written and made durable *before* the request is sent."""

    run_id: str
    target_id: int
    attempt_no: int  # 1-based, per target
    operation: str  # reimage | reboot
    client_request_id: str
    sent_at: float
    # In a shared run, the runner that claimed the target: the write is refused (LeaseLost)
    # unless that runner still owns it, so a runner that lost its lease never sends.
    runner_id: str | None = None


# Immutable like a frozen dataclass, built in a third of the time: one is made per node.
class AttemptEnd(NamedTuple):
    """Written after the answer (or its absence); also moves the target's state."""

    run_id: str
    target_id: int
    client_request_id: str
    finished_at: float
    outcome: AttemptOutcome
    target_state: TargetState
    status: int | None = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    reason: str | None = None  # why the target is in target_state, for failed/skipped/gone


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    run_id: str
    target_id: int
    attempt_no: int
    operation: str
    client_request_id: str
    sent_at: float
    finished_at: float | None
    outcome: AttemptOutcome | None  # None: no answer recorded (crash while in flight)
    status: int | None
    request_id: str | None
    error_code: str | None
    error_message: str | None
    latency_ms: float | None


@dataclass(frozen=True, slots=True)
class TargetChange:
    """A state change that is not tied to an HTTP attempt (health, reconcile, skip)."""

    run_id: str
    target_id: int
    state: TargetState
    at: float
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunEvent:
    run_id: str
    at: float
    kind: str  # wave_started, wave_completed, paused, budget_exceeded, throttle_changed, ...
    account: str | None = None
    pool: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What a backend's group-commit writer has done (for tests and benchmarks)."""

    transactions: int  # committed transactions
    units: int  # writes committed
    largest_batch: int


class QueuedWrite(Generic[W]):
    """One write waiting for a backend's group-commit writer: the work, and who waits on it."""

    __slots__ = ("at", "future", "run_id", "what", "work")

    def __init__(
        self, work: W, future: asyncio.Future[Any], what: str, run_id: str | None, at: float
    ) -> None:
        self.work = work
        self.future = future
        self.what = what  # for error messages: "start of attempt ..."
        self.run_id = run_id
        self.at = at  # the write's time, for the run's updated_at


# Record fields as stored (text) back to their types, for every backend.
STATES_BY_VALUE = {state.value: state for state in TargetState}
OUTCOMES_BY_VALUE = {outcome.value: outcome for outcome in AttemptOutcome}
ACCEPTED_STATES = (TargetState.ACCEPTED, TargetState.DONE_UNVERIFIED)


class JournalError(FleetReimageError):
    """The journal cannot be used (damaged, newer schema, unreachable); message says what to do."""


class LeaseLost(JournalError):
    """A shared run's target (or the runner itself) is no longer this runner's: do not send."""


class JournalBusy(JournalError):
    """Another runner holds the journal (or the run); message names it."""


class UnfinishedRun(JournalError):
    """``create_run(..., unless_unfinished_of=sha)`` found a run of that plan not finished
    yet, and created nothing; ``run_id`` names it (the message says its status and runner)."""

    def __init__(self, message: str, run_id: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id


def unfinished_run(run_id: str, status: str, host: str, pid: int) -> UnfinishedRun:
    """The refusal both backends raise when a plan already has an unfinished run."""
    return UnfinishedRun(
        f"run {run_id} of this plan is unfinished ({status}, last run by {host} pid {pid})",
        run_id,
    )


class Journal(Protocol):
    """Storage interface. Every write returns only once it is durable.

    Errors: ``JournalError`` when the journal cannot be used or a write was not recorded.
    After a write fails for a storage reason (disk full, I/O error) every later write fails
    too and the run must stop; nothing is ever reported durable that is not. ``ValueError``
    for input that may not be stored (see ``create_run``). Writes are applied in the order
    they were called.
    """

    location: str  # file path or redacted URL, for messages

    async def close(self) -> None:
        """Finish queued writes, release the writer lock; safe to call more than once."""

    async def lock_for_writing(self, owner: str) -> None:
        """Record ``owner`` ("host pid run") as this journal's writer, for messages.

        SQLite: the file has one writer; the lock is taken when it is opened for writing and a
        second writer gets JournalBusy naming the first. PostgreSQL: writers share the journal;
        who may drive a run is decided per run by ``SharedRuns.register_runner``.
        """

    async def create_run(
        self,
        run: NewRun,
        targets: Sequence[NewTarget],
        exclusions: Sequence[Exclusion],
        *,
        unless_unfinished_of: str | None = None,
    ) -> list[TargetRecord]:
        """Record a new run (status RUNNING) with its targets (PENDING) and exclusions.

        Returns the targets as recorded (what ``targets(run_id)`` would read back).
        Target ids ascend in the order ``targets`` is given. ``ValueError`` when an options key
        looks like a secret (key, token, password, secret, ...) or a node is listed twice;
        ``JournalError`` when the run id exists.

        ``unless_unfinished_of`` (a plan's sha256): in the same atomic step, refuse with
        ``UnfinishedRun`` naming the newest run of that plan that is not FINISHED, if any;
        of several writers racing to create a run of one plan, exactly one succeeds.
        """

    async def runs(self) -> list[RunRecord]:
        """All runs, newest first."""

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def targets(self, run_id: str) -> list[TargetRecord]:
        """The run's targets, by target_id."""

    async def exclusions(self, run_id: str) -> list[Exclusion]:
        """In the order they were given to ``create_run``."""

    async def attempts(self, run_id: str) -> list[AttemptRecord]:
        """By sent_at, then in the order recorded."""

    async def events(self, run_id: str) -> list[RunEvent]:
        """By time, then in the order recorded."""

    # Hot path: group-committed; each call returns once its transaction is durable.
    async def attempt_started(self, start: AttemptStart) -> None:
        """Record the attempt; the target goes to IN_FLIGHT with attempts + 1, last_sent_at =
        sent_at, first_sent_at set if unset, reason and finished_at cleared."""

    async def attempt_finished(self, end: AttemptEnd) -> None:
        """Record the answer; the target goes to ``end.target_state`` with ``end.reason``.

        ``accepted_at`` is set when the target becomes ACCEPTED or DONE_UNVERIFIED from another
        state; ``finished_at`` is set for a terminal state and cleared otherwise; ``last_code``
        becomes the error code, else the HTTP status, else stays. May be called again for the
        same attempt (an in-doubt attempt later reconciled).
        """

    async def target_changed(self, change: TargetChange) -> None:
        """Move the target, with the same accepted_at/finished_at rules as attempt_finished."""

    async def record_event(self, event: RunEvent) -> None: ...

    async def pool_op_started(self, start: PoolOpStart) -> None:
        """A pool operation of ``action: replace``, before it is sent (``poolops.py``)."""

    async def pool_op_finished(self, end: PoolOpEnd) -> None: ...

    async def pool_ops(self, run_id: str) -> list[PoolOpRecord]: ...

    async def set_run_status(
        self,
        run_id: str,
        status: RunStatus,
        reason: str | None,
        at: float,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Set status and reason; ended_at = at, or cleared for RUNNING, which also records the
        calling process as the run's host and pid (resume). ``options`` replaces the stored
        options when given."""

    async def replace_plan(self, run_id: str, plan_text: str, plan_sha256: str) -> None:
        """After the operator accepted a changed plan (--force-plan) on resume."""
