"""The claim of a shared run: one transaction in which the rollout policy decides for a pool.

:func:`claim_in` runs inside a transaction (READ COMMITTED) of ``postgres_shared``. The
journal decides nothing here; it supplies what the policy needs and applies what it decides:

1. The pool's ``run_pools`` row is created on first use (with the caller's baseline) and locked
   ``FOR UPDATE``: claims on one pool run one at a time, and each statement after it sees
   every claim committed before (each statement of a READ COMMITTED transaction takes a fresh
   snapshot). The row holds the pool's baseline (kept current by ``set_pool_baseline``) and
   the policy's memory of the pool (``PoolProgress``).
2. One query reads the database's clock and the pool's state: its open wave (the lowest wave
   with a target that is not terminal), its active targets (in flight or accepted, by anyone,
   plus pending ones claimed under a live lease), the run's failures, the pool's targets that
   failed after the action (``accepted_at`` set) whose nodes the latest health poll saw not
   ready (``run_pools.down_targets``; all of them before any poll), and whether this runner
   is still registered with a live lease (else ``LeaseLost``: it must not take more work).
3. Takeovers, whatever the policy decides: the pool's in-flight and accepted targets that have
   no owner or whose owner's lease expired become this runner's.
4. The policy (``rollout/policy.py``, given by the caller) decides on that state.
5. Up to ``min(limit, admit)`` pending targets of the open wave, free (no owner, or a lease
   expired), in dispatch order, become this runner's; the new progress is stored.

Every time is the database's (``clock_timestamp()``), never the runner's.

Target rows are only ever taken ``FOR NO KEY UPDATE SKIP LOCKED`` (the key never changes; the
weaker lock lets the writer's foreign-key checks through): a claim never waits on a row that
the group writer (or another claim) has locked, so it can never deadlock with a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleet_reimage.journal.model import LeaseLost, TargetRecord
from fleet_reimage.journal.postgres_schema import HELD, OPEN
from fleet_reimage.journal.postgres_sql import TARGET_COLUMNS, target_records
from fleet_reimage.journal.postgres_writer import Conn
from fleet_reimage.journal.shared import A, Claim, ClaimPolicy, PoolProgress, PoolState

# The database's clock as epoch seconds, the unit of every time in the journal.
DB_NOW = "extract(epoch FROM clock_timestamp())::float8"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """The arguments of ``SharedRuns.claim`` (but the policy)."""

    run_id: str
    runner_id: str
    account: str
    pool: str
    limit: int
    baseline: int
    lease: float
    now: float | None = None  # tests only: the policy's clock instead of the database's

    def params(self) -> dict[str, Any]:
        return {"run": self.run_id, "account": self.account, "pool": self.pool,
                "me": self.runner_id, "lease": self.lease, "clock": self.now,
                "baseline": max(0, self.baseline)}  # fmt: skip


_POOL = "run_id = %(run)s AND account = %(account)s AND pool = %(pool)s"
# A target nobody holds: no owner, or its owner's lease has run out.
_FREE = "(owner IS NULL OR lease_until IS NULL OR lease_until < %(now)s)"

_LOCK_POOL = (
    "SELECT baseline, wave, opens_at, held, finished, down_targets FROM run_pools"
    f" WHERE {_POOL} FOR UPDATE"
)

# Each sub-select has an index of its own: targets_open (its first entry), targets_held,
# targets_failed; none reads the pool's finished targets.
_STATE = (
    f"WITH c AS MATERIALIZED (SELECT COALESCE(%(clock)s::float8, {DB_NOW}) AS now)"
    " SELECT c.now,"
    "  EXISTS (SELECT 1 FROM runners WHERE run_id = %(run)s AND runner_id = %(me)s"
    "   AND lease_until >= c.now),"
    f" (SELECT min(wave) FROM targets WHERE {_POOL} AND {OPEN}),"
    f" (SELECT count(*) FROM targets WHERE {_POOL} AND {HELD}"
    "   AND (state <> 'pending' OR lease_until >= c.now)),"
    " (SELECT count(*) FROM targets WHERE run_id = %(run)s AND state = 'failed'),"
    f" (SELECT count(*) FROM targets WHERE {_POOL} AND state = 'failed'"
    "   AND accepted_at IS NOT NULL"
    "   AND (%(down)s::text[] IS NULL OR node_id = ANY(%(down)s::text[])))"
    " FROM c"
)

_TAKEOVERS = (
    f"SELECT target_id FROM targets WHERE {_POOL} AND {HELD} AND state <> 'pending' AND {_FREE}"
)

_PENDING = (
    f"SELECT target_id FROM targets WHERE {_POOL} AND wave = %(wave)s AND state = 'pending'"
    f" AND {_FREE} ORDER BY position, target_id LIMIT %(n)s"
)

_ANY_FREE = (
    f"SELECT EXISTS (SELECT 1 FROM targets WHERE {_POOL} AND wave = %(wave)s"
    f" AND state = 'pending' AND {_FREE})"
)

_STORE_PROGRESS = (
    "UPDATE run_pools SET wave = %(wave)s, opens_at = %(opens_at)s, held = %(held)s,"
    f" finished = %(finished)s WHERE {_POOL}"
)


def _take(select: str) -> str:
    """The statement that makes the rows ``select`` finds this runner's, returning them."""
    columns = ", ".join(f"t.{name}" for name in TARGET_COLUMNS)
    return (
        f"WITH c AS MATERIALIZED ({select} FOR NO KEY UPDATE SKIP LOCKED)"
        " UPDATE targets t SET owner = %(me)s, lease_until = %(now)s + %(lease)s FROM c"
        f" WHERE t.target_id = c.target_id RETURNING {columns}"
    )


_TAKE_OVER = _take(_TAKEOVERS)
_TAKE_PENDING = _take(_PENDING)


async def claim_in(conn: Conn, request: ClaimRequest, policy: ClaimPolicy[A]) -> Claim[A]:
    """The claim (see the module docstring), inside the caller's transaction on ``conn``."""
    params = request.params()
    baseline, progress, params["down"] = await _lock_pool(conn, params)
    state = await _pool_state(conn, params, request, baseline, progress)
    params["now"] = state.now
    takeovers: list[TargetRecord] = []
    if state.open_wave is not None:
        takeovers = await _take_rows(conn, _TAKE_OVER, params)
    decision = policy(state)
    claimed: list[TargetRecord] = []
    more_pending = True
    if state.open_wave is not None and decision.admit > 0:
        params["wave"] = state.open_wave
        n = min(request.limit, decision.admit)
        if n > 0:
            claimed = await _take_rows(conn, _TAKE_PENDING, {**params, "n": n})
        if len(claimed) < decision.admit:  # room is left: is anything left to start?
            more_pending = await _one(conn, _ANY_FREE, params)
    if decision.progress != progress:
        await conn.execute(_STORE_PROGRESS, {**params, **_progress_row(decision.progress)})
    return Claim(claimed, takeovers, state, decision, more_pending)


async def _lock_pool(
    conn: Conn, params: dict[str, Any]
) -> tuple[int, PoolProgress, list[str] | None]:
    """Create the pool's row if missing, lock it, and return its baseline, progress and the
    targets its latest health poll saw down (None: no poll yet)."""
    # Not INSERT ... ON CONFLICT DO UPDATE: that would write a new row version every claim.
    await conn.execute(
        "INSERT INTO run_pools (run_id, account, pool, baseline)"
        " VALUES (%(run)s, %(account)s, %(pool)s, %(baseline)s)"
        " ON CONFLICT (run_id, account, pool) DO NOTHING",
        params,
    )
    cursor = await conn.execute(_LOCK_POOL, params)
    row = await cursor.fetchone()
    if row is None:  # pragma: no cover - inserted just above, and never deleted
        return 0, PoolProgress(), None
    baseline, wave, opens_at, held, finished, down = row
    opens = -math.inf if opens_at is None else float(opens_at)
    return int(baseline), PoolProgress(wave, opens, bool(held), bool(finished)), down


async def _pool_state(
    conn: Conn, params: dict[str, Any], request: ClaimRequest, baseline: int, progress: PoolProgress
) -> PoolState:
    cursor = await conn.execute(_STATE, params)
    row = await cursor.fetchone()
    assert row is not None  # one row, from the CTE
    now, live, open_wave, active, failures, failed_down = row
    if not live:
        raise LeaseLost(
            f"runner {request.runner_id} has no live registration in run {request.run_id} "
            "(its lease expired, it left, or it never registered); it must not claim"
        )
    wave = None if open_wave is None else int(open_wave)
    return PoolState(
        float(now), progress, wave, int(active), baseline, int(failures), int(failed_down)
    )


def _progress_row(progress: PoolProgress) -> dict[str, Any]:
    opens_at = progress.opens_at if math.isfinite(progress.opens_at) else None
    return {"wave": progress.wave, "opens_at": opens_at, "held": progress.held,
            "finished": progress.finished}  # fmt: skip


async def _take_rows(conn: Conn, query: str, params: dict[str, Any]) -> list[TargetRecord]:
    cursor = await conn.execute(query, params)
    records = target_records(await cursor.fetchall())
    records.sort(key=lambda r: (r.position, r.target_id))  # RETURNING has no order
    return records


async def _one(conn: Conn, query: str, params: dict[str, Any]) -> bool:
    """True when ``query`` returns a row whose first value is true."""
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return row is not None and row[0] is True
