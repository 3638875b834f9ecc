"""Pools that max_unavailable blocks: said aloud while they wait, stopped resumable at the end.

A pool is *blocked* when it has nodes left to start, nothing of ours in progress, and no
room under ``max_unavailable``: nodes down for reasons of their own, and (under the plan's
``failed_holds_availability``) nodes of ours that failed after the action and are still
down, take all of it. Such a pool never skips its nodes silently. While it is blocked it is
polled (so that nodes coming back free the room), a ``pool_blocked`` event says why and until
when it waits (so do the live table, from ``blockage``, and ``status``, from the event);
``pool_unblocked`` says when it moves again. Blocked
for a whole health timeout, it stops **resumable**: its nodes stay pending, the run ends
stopped (exit 3), and ``resume`` continues them once the pool has room again.

In a shared run the blocking nodes may be other runners' own, so a runner never stops a
pool for being blocked there; it only says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import PoolRun
from fleet_reimage.rollout.policy import held_by_failures
from fleet_reimage.units import count, format_duration, plural


@dataclass(frozen=True, slots=True)
class Blockage:
    """Why a pool has no room: its counts against max_unavailable."""

    others: int  # down for reasons of their own
    failed_down: int  # ours, failed after the action and still down, holding room
    limit: int  # max_unavailable

    def reason(self) -> str:
        return f"{self.held()}: max_unavailable is {self.limit}"

    def held(self) -> str:
        """What holds the room, ours in progress aside: ``2 nodes down for other reasons``."""
        parts = []
        if self.others:
            parts.append(f"{count(self.others, 'node')} down for other reasons")
        if self.failed_down:
            parts.append(
                f"{count(self.failed_down, 'node')} of ours that failed after the action "
                f"{plural('is', self.failed_down)} still down"
            )
        return " and ".join(parts) or "nodes down"


def blockage(pool: PoolRun) -> Blockage:
    rollout = pool.rollout
    held = held_by_failures(rollout.rules, rollout.failed_down)
    return Blockage(rollout.baseline, held, rollout.max_unavailable)


def is_blocked(pool: PoolRun) -> bool:
    """Nodes to start, none of ours in progress, no room: only nodes coming back can help."""
    rollout = pool.rollout
    return (
        not rollout.done
        and rollout.stopped is None
        and rollout.blocked_by_unavailability()
        and rollout.active == 0
    )


class BlockWatch:
    """Follows each pool's blocking episodes (the health gate asks it before each poll)."""

    def __init__(self, ledger: RunLedger, timeout: float) -> None:
        self.ledger = ledger
        self.timeout = timeout  # the plan's health timeout: how long a pool may wait

    def wants_poll(self, pool: PoolRun, now: float) -> bool:
        """Is the pool blocked (so it must be polled)? Announces, and stops, as due."""
        if not is_blocked(pool):
            self._unblocked(pool, now)
            return False
        if pool.blocked_since is None:
            pool.blocked_since = now
            self._announce(pool)
        waited = now - pool.blocked_since
        if not self.ledger.shared and waited > self.timeout:
            self._stop(pool)
            return False
        return True

    # --- internals ---

    def _announce(self, pool: PoolRun) -> None:
        why = blockage(pool)
        data: dict[str, object] = {
            "reason": why.reason(),
            "others": why.others,
            "failed_down": why.failed_down,
            "max_unavailable": why.limit,
            "pending": len(pool.rollout.pending()),
        }
        if not self.ledger.shared:
            data["stops_at"] = round(time.time() + self.timeout, 3)
        self.ledger.pool_event("pool_blocked", pool, data)

    def _unblocked(self, pool: PoolRun, now: float) -> None:
        since, pool.blocked_since = pool.blocked_since, None
        if since is not None and pool.rollout.stopped is None:
            self.ledger.pool_event("pool_unblocked", pool, {"after_s": round(now - since, 3)})

    def _stop(self, pool: PoolRun) -> None:
        pending = len(pool.rollout.pending())
        reason = (
            f"blocked for {format_duration(self.timeout)}: {blockage(pool).reason()}; "
            f"{count(pending, 'node')} not started stay pending: resume when the pool has "
            "room again (or with a larger --max-unavailable)"
        )
        pool.blocked_since = None
        self.ledger.stop_pool(pool, reason, resumable=True)
