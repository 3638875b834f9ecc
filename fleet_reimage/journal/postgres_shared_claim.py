"""The claim of a shared run: one transaction that decides a pool's limits across all runners.

:func:`claim_in` runs inside a transaction (READ COMMITTED) of ``postgres_shared``:

1. The runner must be registered with a live lease, else ``LeaseLost``: a runner that lost its
   lease must not take more work.
2. The pool's ``run_pools`` row is created on first use (with the caller's baseline) and locked
   ``FOR UPDATE``: claims on one pool run one at a time, and each of the statements after it
   sees every claim committed before (each statement of a READ COMMITTED transaction takes a
   fresh snapshot). The stored baseline is used, as ``set_pool_baseline`` keeps it current.
3. One query reads the pool's state: the current wave (the lowest wave with a target that is
   not terminal; none: the pool is finished), the active targets (in flight or accepted, by
   anyone, plus pending ones claimed under a live lease) and the run's failures. When the
   lower waves' last target ended is read once per wave and kept in the pool's row.
4. Takeovers, whatever blocks new claims: the pool's in-flight and accepted targets that have
   no owner or whose owner's lease expired become this runner's.
5. The gates, in this order: failure budget (failures minus forgiven above the budget),
   pause (the current wave opens ``pause`` seconds after the lower waves' last target ended),
   room (``max_unavailable - baseline - active``).
6. Up to ``min(limit, room)`` pending targets of the current wave, free (no owner, or a lease
   expired), in dispatch order, become this runner's.
7. What blocks the next claim: ``unavailable`` when no room is left, else ``wave`` when the
   current wave has no free pending target left (the others hold or run the rest), else None.

Target rows are only ever taken ``FOR NO KEY UPDATE SKIP LOCKED`` (the key never changes; the
weaker lock lets the writer's foreign-key checks through): a claim never waits on a row that
the group writer (or another claim) has locked, so it can never deadlock with a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet_reimage.journal.model import Claim, LeaseLost, TargetRecord
from fleet_reimage.journal.postgres_schema import HELD, OPEN
from fleet_reimage.journal.postgres_sql import TARGET_COLUMNS, target_records
from fleet_reimage.journal.postgres_writer import Conn


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """The arguments of ``SharedRuns.claim``."""

    run_id: str
    runner_id: str
    account: str
    pool: str
    limit: int
    max_unavailable: int
    baseline: int
    pause: float
    failure_budget: int
    forgiven_failures: int
    lease: float
    now: float

    def params(self) -> dict[str, Any]:
        return {"run": self.run_id, "account": self.account, "pool": self.pool,
                "me": self.runner_id, "now": self.now, "until": self.now + self.lease,
                "baseline": max(0, self.baseline)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PoolState:
    wave: int | None  # the current wave; None: every target of the pool is terminal
    active: int
    failed: int  # in the whole run
    last_end: float | None = None  # when the last target of the lower waves ended


@dataclass(frozen=True, slots=True)
class PoolRow:
    baseline: int
    wave: int | None  # the wave ``wave_after`` was read for
    wave_after: float | None


_POOL = "run_id = %(run)s AND account = %(account)s AND pool = %(pool)s"
# A target nobody holds: no owner, or its owner's lease has run out.
_FREE = "(owner IS NULL OR lease_until IS NULL OR lease_until < %(now)s)"

_LIVE_RUNNER = (
    "SELECT 1 FROM runners WHERE run_id = %(run)s AND runner_id = %(me)s AND lease_until >= %(now)s"
)

_LOCK_POOL = f"SELECT baseline, wave, wave_after FROM run_pools WHERE {_POOL} FOR UPDATE"

# Each sub-select has an index of its own: targets_open (its first entry), targets_held,
# targets_failed; none reads the pool's finished targets.
_STATE = (
    f"SELECT (SELECT min(wave) FROM targets WHERE {_POOL} AND {OPEN}),"
    f" (SELECT count(*) FROM targets WHERE {_POOL} AND {HELD}"
    "   AND (state <> 'pending' OR lease_until >= %(now)s)),"
    " (SELECT count(*) FROM targets WHERE run_id = %(run)s AND state = 'failed')"
)

_LAST_END = f"SELECT max(finished_at) FROM targets WHERE {_POOL} AND wave < %(wave)s"

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


def _take(select: str) -> str:
    """The statement that makes the rows ``select`` finds this runner's, returning them."""
    columns = ", ".join(f"t.{name}" for name in TARGET_COLUMNS)
    return (
        f"WITH c AS MATERIALIZED ({select} FOR NO KEY UPDATE SKIP LOCKED)"
        " UPDATE targets t SET owner = %(me)s, lease_until = %(until)s FROM c"
        f" WHERE t.target_id = c.target_id RETURNING {columns}"
    )


_TAKE_OVER = _take(_TAKEOVERS)
_TAKE_PENDING = _take(_PENDING)


async def claim_in(conn: Conn, request: ClaimRequest) -> Claim:
    """The claim (see the module docstring), inside the caller's transaction on ``conn``."""
    params = request.params()
    if not await _one(conn, _LIVE_RUNNER, params):
        raise LeaseLost(
            f"runner {request.runner_id} has no live registration in run {request.run_id} "
            "(its lease expired, it left, or it never registered); it must not claim"
        )
    pool = await _lock_pool(conn, params)
    state = await _pool_state(conn, params, pool)
    if state.wave is None:
        return Claim([], [], None, None, None, finished=True)
    params["wave"] = state.wave
    takeovers = await _take_rows(conn, _TAKE_OVER, params)
    blocked, retry_at = gate(request, state)
    if blocked is not None:
        return Claim([], takeovers, state.wave, blocked, retry_at, finished=False)
    room = request.max_unavailable - pool.baseline - state.active
    claimed: list[TargetRecord] = []
    if room > 0 and request.limit > 0:
        claimed = await _take_rows(conn, _TAKE_PENDING, {**params, "n": min(request.limit, room)})
    if room - len(claimed) <= 0:
        blocked = "unavailable"
    elif not await _one(conn, _ANY_FREE, params):
        blocked = "wave"
    return Claim(claimed, takeovers, state.wave, blocked, None, finished=False)


def gate(request: ClaimRequest, state: PoolState) -> tuple[str | None, float | None]:
    """(blocked, retry_at) from the failure budget and the pause, before room is looked at.

    The budget comes first: a run over its budget must stop, whether or not a pause runs.
    """
    if state.failed - request.forgiven_failures > request.failure_budget:
        return "budget", None
    if state.last_end is not None:
        retry_at = state.last_end + request.pause
        if request.now < retry_at:
            return "pause", retry_at
    return None, None


async def _lock_pool(conn: Conn, params: dict[str, Any]) -> PoolRow:
    """Create the pool's row if missing, lock it, and return what it holds."""
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
        return PoolRow(0, None, None)
    baseline, wave, wave_after = row
    return PoolRow(int(baseline), wave, wave_after)


async def _pool_state(conn: Conn, params: dict[str, Any], pool: PoolRow) -> PoolState:
    cursor = await conn.execute(_STATE, params)
    row = await cursor.fetchone()
    if row is None or row[0] is None:  # no open target left: finished
        return PoolState(None, 0, 0)
    wave, active, failed = int(row[0]), int(row[1]), int(row[2])
    last_end = pool.wave_after
    if pool.wave != wave:  # a new current wave (or the first claim): read its pause anchor
        cursor = await conn.execute(_LAST_END, {**params, "wave": wave})
        found = await cursor.fetchone()
        last_end = None if found is None or found[0] is None else float(found[0])
        await conn.execute(
            f"UPDATE run_pools SET wave = %(wave)s, wave_after = %(after)s WHERE {_POOL}",
            {**params, "wave": wave, "after": last_end},
        )
    return PoolState(wave, active, failed, last_end)


async def _take_rows(conn: Conn, query: str, params: dict[str, Any]) -> list[TargetRecord]:
    cursor = await conn.execute(query, params)
    records = target_records(await cursor.fetchall())
    records.sort(key=lambda r: (r.position, r.target_id))  # RETURNING has no order
    return records


async def _one(conn: Conn, query: str, params: dict[str, Any]) -> bool:
    """True when ``query`` returns a row whose first value is true (or any row at all)."""
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return row is not None and row[0] is not False
