"""The emulated account's nodes and their life cycle (pure: no aiohttp, no I/O).

Time only moves through the injected ``Clock``. Transitions are lazy: an operation pushes
what happens next onto one heap (a node's next state, its earliest task end, a removed
node leaving, a pool's allocation or auto-scale evaluation), and every public entry point
first pops whatever is due, in time order, each stamped with the time it was due. Idle
fleets therefore cost nothing, whatever their size, and the counters (``peak_unavailable``,
``min_ready``) are exact: they move only at an operation or a transition, and every
transition due by "now" is applied before an operation is.

Node operations live here; pool operations (resize, remove nodes, auto-scale) in
``pools.py``; the rules that refuse an operation in ``rules.py``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import rules
from .clock import Clock
from .pools import Handler, PoolOperations
from .resources import BatchOperationError, Node, Pool
from .seeded import uniform
from .spec import NODE_STATES, Outcomes, Timings
from .timefmt import ticks_from_seconds as ticks_of

__all__ = ["BatchOperationError", "EmulatorState", "Node", "Pool", "PoolSummary"]

# Heap event kinds that are not node states (those are transitions into that state).
TASK_ENDS = "@task"  # the node's earliest running task ends
BEGIN = "@begin"  # an operation that waited for the tasks (and retention) begins
GONE = "@gone"  # a leaving node is out of the pool
_STATE_KINDS = frozenset(NODE_STATES)
# Operation name -> (state it enters, Timings attribute of how long that lasts).
_BOOTING = {"reimage": ("reimaging", "reimaging"), "reboot": ("rebooting", "rebooting")}


@dataclass(frozen=True, slots=True)
class PoolSummary:
    peak_unavailable: int
    current_unavailable: int
    nodes: int
    states: dict[str, int]


class EmulatorState:
    """Every pool and node of the account, and the transitions still to come.

    ``accepted_tokens`` is the live set of bearer tokens the HTTP layer accepts; tests
    change it at run time to simulate expiry.
    """

    def __init__(
        self,
        pools: Iterable[Pool],
        clock: Clock,
        *,
        timings: Timings | None = None,
        outcomes: Outcomes | None = None,
        seed: int = 0,
        accepted_tokens: Iterable[str] = (),
    ) -> None:
        self.clock = clock
        self.timings = timings or Timings()
        self.outcomes = outcomes or Outcomes()
        self.seed = seed
        self.accepted_tokens: set[str] = set(accepted_tokens)
        self.pools: dict[str, Pool] = {}
        for pool in pools:
            if pool.id in self.pools:
                raise ValueError(f"duplicate pool id {pool.id!r}")
            self.pools[pool.id] = pool
        # (due monotonic time, sequence, subject, kind, generation): the sequence keeps
        # equal due times in push order and keeps tuples from comparing subjects.
        self._due: list[tuple[float, int, Any, str, int]] = []
        self._sequence = 0
        self.pool_ops = PoolOperations(self)
        self._handlers: dict[str, Handler] = {
            BEGIN: self._begin_pending,
            GONE: self._gone,
            **self.pool_ops.handlers(),
        }
        now = self.clock.monotonic()
        for pool in self.pools.values():
            for node in pool.nodes:
                self._refresh_ready(node)
                if node.task_ends:
                    self._schedule(node, node.task_ends[0], TASK_ENDS, node.task_epoch)
            pool.min_ready = pool.ready_count
            self.pool_ops.start(pool, now)

    # -- time ---------------------------------------------------------------------------
    def advance(self) -> None:
        """Apply every transition due by now, oldest first."""
        due = self._due
        if not due:
            return
        now = self.clock.monotonic()
        if due[0][0] > now:
            return
        # Wall time of a monotonic instant, so a transition processed late is still
        # stamped with the time it was due, not the time somebody looked.
        wall_offset = self.clock.wall() - now
        while due and due[0][0] <= now:
            at, _, subject, kind, generation = heapq.heappop(due)
            if kind in _STATE_KINDS:
                if generation == subject.generation:
                    self._enter(subject, kind, at, ticks_of(at + wall_offset))
            elif kind == TASK_ENDS:
                if generation == subject.task_epoch:
                    self._task_ends(subject, at, ticks_of(at + wall_offset))
            elif generation in (subject.generation, -1):
                self._handlers[kind](subject, at, ticks_of(at + wall_offset))

    def pending_transitions(self) -> int:
        return len(self._due)

    def now_ticks(self) -> int:
        return ticks_of(self.clock.wall())

    def now(self) -> tuple[float, int]:
        """(monotonic seconds, wall ticks) of this instant."""
        return self.clock.monotonic(), ticks_of(self.clock.wall())

    def schedule(self, subject: Node | Pool, at: float, kind: str, *, always: bool = False) -> None:
        """Run ``kind`` for ``subject`` at monotonic ``at``, unless its generation moves
        first (or in any case, ``always``)."""
        self._schedule(subject, at, kind, -1 if always else subject.generation)

    def _schedule(self, subject: Node | Pool, at: float, kind: str, generation: int) -> None:
        self._sequence += 1
        heapq.heappush(self._due, (at, self._sequence, subject, kind, generation))

    # -- lookups ------------------------------------------------------------------------
    def pool(self, pool_id: str) -> Pool:
        self.advance()
        pool = self.pools.get(pool_id)
        if pool is None:
            raise BatchOperationError(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def node(self, pool_id: str, node_id: str) -> Node:
        node = self.pool(pool_id).by_id.get(node_id)
        if node is None:
            raise BatchOperationError(404, "NodeNotFound", "The specified node does not exist.")
        return node

    def iter_nodes(self) -> Iterator[Node]:
        self.advance()
        for pool in self.pools.values():
            yield from pool.nodes

    # -- node operations ------------------------------------------------------------------
    def reimage(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        """Start a reimage (or wait for the tasks first), or raise the service's error."""
        return self._act(pool_id, node_id, "reimage", option)

    def reboot(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._act(pool_id, node_id, "reboot", option)

    def deallocate(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        return self._act(pool_id, node_id, "deallocate", option)

    def _act(self, pool_id: str, node_id: str, operation: str, option: str) -> Node:
        """Reimage, reboot or deallocate: the state checks first, then (reimage) the pool's
        policy; counted once accepted."""
        node = self.node(pool_id, node_id)
        error = rules.action_conflict(node.state, node.pending)
        if error is None and operation == "reimage" and node.pool.reimage_refused:
            error = rules.reimage_refused()
        if error is not None:
            raise error
        if operation == "reimage":
            node.reimages += 1
        elif operation == "reboot":
            node.reboots += 1
        else:
            node.deallocations += 1
        self._request(node, operation, option)
        return node

    def start(self, pool_id: str, node_id: str) -> Node:
        """A deallocated node boots again (keeping its disk): starting, then ready."""
        node = self.node(pool_id, node_id)
        error = rules.start_conflict(node.state)
        if error is not None:
            raise error
        node.starts += 1
        at, ticks = self.now()
        self._boot(node, at, ticks)
        return node

    def disable_scheduling(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        """No new tasks; ``requeue``/``terminate`` end the running ones at once."""
        node = self.node(pool_id, node_id)
        error = rules.scheduling_conflict(node.state, node.scheduling_state, "disabled")
        if error is not None:
            raise error
        node.scheduling_disables += 1
        node.scheduling_state = "disabled"
        at, ticks = self.now()
        if option != "taskcompletion" and node.running_tasks:
            self.stop_tasks(node, option)
            self._tasks_done(node, at, ticks)
        self.touch(node, ticks)
        return node

    def enable_scheduling(self, pool_id: str, node_id: str) -> Node:
        node = self.node(pool_id, node_id)
        error = rules.scheduling_conflict(node.state, node.scheduling_state, "enabled")
        if error is not None:
            raise error
        node.scheduling_enables += 1
        node.scheduling_state = "enabled"
        self.touch(node, self.now_ticks())
        return node

    # -- what operations share -------------------------------------------------------------
    def _request(self, node: Node, operation: str, option: str) -> None:
        """Begin ``operation`` now, or once the running tasks are done (taskcompletion,
        retaineddata): meanwhile the node stays ``running`` and answers 409."""
        at, ticks = self.now()
        if option in rules.WAITING_OPTIONS and node.running_tasks:
            node.pending, node.pending_option = operation, option
            self.touch(node, ticks)
            return
        self.stop_tasks(node, option)
        self._begin(node, operation, at, ticks)

    def request_removal(self, node: Node, option: str, at: float, ticks: int) -> None:
        """The node leaves its pool (remove nodes, a shrinking resize), now or after its
        tasks; whatever it was doing is cancelled."""
        self._release(node)
        node.pending = None
        if option in rules.WAITING_OPTIONS and node.running_tasks:
            node.pending, node.pending_option = "remove", option
            self.touch(node, ticks)
            return
        self.stop_tasks(node, option)
        self._begin(node, "remove", at, ticks)

    def cancel_pending(self, node: Node, ticks: int) -> None:
        """A waiting operation is dropped (a stopped or timed-out resize): the node stays."""
        node.pending = None
        self.touch(node, ticks)

    def _begin(self, node: Node, operation: str, at: float, ticks: int) -> None:
        node.pending = None
        booting = _BOOTING.get(operation)
        if booting is not None:
            state, timing = booting
            node.operations += 1
            node.outcome = self._outcome(node)
            self._set_state(node, state, ticks)
            self._mark_busy(node)
            self._schedule(node, at + getattr(self.timings, timing), "starting", node.generation)
        elif operation == "deallocate":
            self._mark_busy(node)
            self._enter(node, "deallocating", at, ticks)
        else:  # remove
            node.removals += 1
            self._set_state(node, "leavingpool", ticks)
            self._schedule(node, at + self.timings.leavingpool, GONE, node.generation)

    def _boot(self, node: Node, at: float, ticks: int) -> None:
        """Power on (a start, a new node): starting, then the start task, then the outcome."""
        node.operations += 1
        node.outcome = self._outcome(node)
        self._enter(node, "starting", at, ticks)

    @staticmethod
    def _mark_busy(node: Node) -> None:
        if not node.busy:
            node.busy = True
            pool = node.pool
            pool.current_unavailable += 1
            pool.peak_unavailable = max(pool.peak_unavailable, pool.current_unavailable)

    def _outcome(self, node: Node) -> str:
        """The state this boot ends in: a pure function of (seed, pool, node, n)."""
        outcomes = self.outcomes
        if not (outcomes.starttaskfailed or outcomes.unusable):
            return "idle"
        draw = uniform(self.seed, "outcome", node.pool.id, node.id, node.operations)
        if draw < outcomes.starttaskfailed:
            return "starttaskfailed"
        if draw < outcomes.starttaskfailed + outcomes.unusable:
            return "unusable"
        return "idle"

    def _enter(self, node: Node, target: str, at: float, ticks: int) -> None:
        self._set_state(node, target, ticks)
        timings = self.timings
        if target == "starting":
            node.last_boot_ticks = ticks  # the boot itself
            if timings.waitingforstarttask > 0:
                self._schedule(node, at + timings.starting, "waitingforstarttask", node.generation)
            else:
                self._schedule(node, at + timings.starting, node.outcome, node.generation)
        elif target == "waitingforstarttask":
            self._schedule(node, at + timings.waitingforstarttask, node.outcome, node.generation)
        elif target == "creating":
            self._schedule(node, at + timings.creating, "starting", node.generation)
        elif target == "deallocating":
            self._schedule(node, at + timings.deallocating, "deallocated", node.generation)
        elif target != "deallocated" and node.busy:  # a boot ended: available again
            node.busy = False
            node.pool.current_unavailable -= 1

    def _set_state(self, node: Node, state: str, ticks: int) -> None:
        counts = node.pool.state_counts
        counts[node.state] -= 1
        counts[state] = counts.get(state, 0) + 1
        node.state = state
        node.transition_ticks = ticks
        self.touch(node, ticks)

    def touch(self, node: Node, ticks: int) -> None:
        """The node changed: its version and modified time move, its readiness is rechecked."""
        node.version += 1
        node.modified_ticks = ticks if ticks > node.modified_ticks else node.modified_ticks + 1
        self._refresh_ready(node)

    @staticmethod
    def _refresh_ready(node: Node) -> None:
        ready = (
            not node.removed
            and node.pending is None
            and node.state in rules.READY_STATES
            and node.scheduling_state == "enabled"
        )
        if ready != node.ready:
            node.ready = ready
            pool = node.pool
            if ready:
                pool.ready_count += 1
            else:
                pool.ready_count -= 1
                pool.min_ready = min(pool.min_ready, pool.ready_count)

    # -- running tasks ----------------------------------------------------------------------
    def _task_ends(self, node: Node, at: float, ticks: int) -> None:
        ends = node.task_ends
        ends.pop(0)
        node.running_tasks = len(ends)
        node.total_tasks_run += 1
        node.total_tasks_succeeded += 1
        node.pool.tasks_completed += 1
        if ends:
            self.touch(node, ticks)
            self._schedule(node, ends[0], TASK_ENDS, node.task_epoch)
        else:
            self._tasks_done(node, at, ticks)

    def _tasks_done(self, node: Node, at: float, ticks: int) -> None:
        """No task runs any more: a waiting operation begins, or a running node is idle."""
        waits = node.pending_option == "retaineddata" and self.timings.retention > 0
        if node.pending is not None and not waits:
            self._begin(node, node.pending, at, ticks)
            return
        if node.pending is not None:  # idle (not ready) until the task data expires
            self._schedule(node, at + self.timings.retention, BEGIN, node.generation)
        if node.state == "running":
            self._set_state(node, "idle", ticks)
        else:
            self.touch(node, ticks)

    def _begin_pending(self, node: Node, at: float, ticks: int) -> None:
        if node.pending is not None:
            self._begin(node, node.pending, at, ticks)

    def stop_tasks(self, node: Node, option: str) -> None:
        """``requeue`` puts the running tasks back in their queue, ``terminate`` ends them
        (completed, failed); either way they stop now."""
        count = node.running_tasks
        if not count:
            return
        if option == "terminate":
            node.pool.tasks_terminated += count
            node.total_tasks_run += count
        else:
            node.pool.tasks_requeued += count
        node.task_ends.clear()
        node.running_tasks = 0
        node.task_epoch += 1

    # -- nodes joining and leaving -----------------------------------------------------------
    def add_node(self, pool: Pool, node: Node, at: float, ticks: int) -> None:
        """A new node allocated by a resize: creating, then it boots."""
        pool.add(node)
        pool.nodes_added += 1
        node.added = True
        node.operations += 1
        node.outcome = self._outcome(node)
        self._enter(node, "creating", at, ticks)

    def _gone(self, node: Node, at: float, ticks: int) -> None:
        pool = node.pool
        pool.discard(node)
        self._refresh_ready(node)
        self.pool_ops.node_gone(node, at, ticks)

    @staticmethod
    def _release(node: Node) -> None:
        node.generation += 1  # its queued transitions no longer apply
        if node.busy:
            node.busy = False
            node.pool.current_unavailable -= 1

    # -- what tests and demos do behind the service's back ---------------------------------
    def force_state(self, pool_id: str, node_id: str, state: str) -> Node:
        """Put a node in ``state`` now (e.g. ``offline``), cancelling its pending transitions."""
        node = self.node(pool_id, node_id)
        self._release(node)
        node.pending = None
        self._set_state(node, state, self.now_ticks())
        if state == "creating":
            node.last_boot_ticks = None
        return node

    def remove_node(self, pool_id: str, node_id: str) -> None:
        """The node leaves the pool at once: later calls about it answer 404 NodeNotFound."""
        node = self.node(pool_id, node_id)
        self._release(node)
        node.removals += 1
        at, ticks = self.now()
        self._gone(node, at, ticks)

    # -- reports ------------------------------------------------------------------------
    def summary(self, pool_id: str) -> PoolSummary:
        pool = self.pool(pool_id)
        states = {state: n for state, n in pool.state_counts.items() if n}
        return PoolSummary(pool.peak_unavailable, pool.current_unavailable, len(pool.nodes), states)
