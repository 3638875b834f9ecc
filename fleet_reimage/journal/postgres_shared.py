"""Several runners sharing one run of a PostgreSQL journal: registrations, leases, claims.

This is the PostgreSQL side of :class:`~fleet_reimage.journal.shared.SharedRuns`; the claim
itself is in ``postgres_shared_claim``. The rules:

* A runner *registers* (a ``runners`` row with a lease) and renews that lease with each
  *heartbeat*, which also renews ``lease_until`` of every target it owns that is not terminal.
  ``register_runner(..., exclusive=True)`` is how a run gets one runner only (unless joined):
  the journal itself no longer has a single writer (see ``postgres_lock``).
* A target is owned by the runner that claimed it (``targets.owner``) while its lease holds.
  Once terminal it keeps its owner, so the report can say who did it, but no query counts it
  any more: every rule below looks at pending, in-flight and accepted targets only.
* A target whose lease ran out is free: the next claim in its pool takes it (a pending one as
  a claim, an in-flight or accepted one as a takeover). A runner whose own lease ran out is
  told ``LeaseLost`` by its next heartbeat (and claim), since it cannot know which of its
  targets were taken, and must stop rather than carry on with work that may be another's.
  ``attempt_started`` is fenced (see ``postgres_sql``): a runner that lost a target can never
  record (so never send) a request for it.
* Every time is the database's clock (``clock_timestamp()``, epoch seconds): leases, the
  fence, pauses, registrations. A runner's own clock is never compared with another's, so a
  runner whose clock runs ahead cannot take over live runners' work (it is warned about its
  clock when it joins, see ``engine/sharedrun``). Pauses cross the wire as durations.

Nothing here waits on a target row: target rows are only taken ``FOR NO KEY UPDATE SKIP
LOCKED``, so no transaction here can deadlock with a group-writer batch (which locks many
target rows) or with another runner's claim. (``NO KEY``: the key is never changed, and the
weaker lock lets the writer's foreign-key checks on a claimed row through without waiting.)
The waits that remain are on one row each, never in a cycle: a claim on the pool's
``run_pools`` row, a heartbeat on its own ``runners`` row, a registration on the run's
advisory lock.

None of this is on the hot path: each operation is one short transaction on a small pool of
writable connections, opened on first use (a journal that never shares a run never opens it),
beside the group writer rather than through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from fleet_reimage.journal import postgres_conn as pgconn
from fleet_reimage.journal import postgres_gates as gates
from fleet_reimage.journal.model import JournalBusy, JournalError, LeaseLost
from fleet_reimage.journal.postgres_schema import OPEN, RUN_LOCK_CLASS, run_lock_key
from fleet_reimage.journal.postgres_shared_claim import DB_NOW, ClaimRequest, claim_in
from fleet_reimage.journal.postgres_writer import Conn
from fleet_reimage.journal.shared import A, Claim, ClaimPolicy, GateKey, GateTurn, RunnerInfo

POOL_SIZE = 2  # heartbeat and claims; they are short and not concurrent for long
WAIT_S = 30.0  # for a pooled connection: a server that stays away turns into an error
# Registrations expired this long ago are deleted by the next heartbeat of the run: their
# runner, should it come back, is told LeaseLost instead of finding its old claims.
FORGET_AFTER_S = 3600.0
GIVE_BACK_TRIES = 5  # leave/release: rows the writer holds are retried after this pause
GIVE_BACK_PAUSE_S = 0.02


class SharedStore:
    """The shared-run operations of one writable journal, on a pool opened on first use."""

    def __init__(self, url: str, schema: str, location: str) -> None:
        self._url = url  # for libpq only (may hold the password): never shown
        self.schema = schema
        self.location = location
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._opening = anyio.Lock()

    async def close(self) -> None:
        """Close the pool, if it was ever opened (safe to call again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _get_pool(self) -> AsyncConnectionPool[Conn]:
        async with self._opening:  # two first callers at once must not open two pools
            if self._pool is None:
                self._pool = await _open_pool(self._url, self.schema, POOL_SIZE)
            return self._pool

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[Conn]:
        pool = await self._get_pool()
        try:
            async with pool.connection(timeout=WAIT_S) as conn, conn.transaction():
                yield conn
        except psycopg.errors.ForeignKeyViolation as exc:
            raise JournalError(f"{what}: no such run in the journal {self.location}") from exc
        except psycopg.Error as exc:
            raise JournalError(
                f"{what} failed in the journal {self.location} ({type(exc).__name__}: "
                f"{pgconn.describe(exc, self._url)})"
            ) from exc

    # --- runners -------------------------------------------------------------------------

    async def register_runner(
        self, run_id: str, runner: RunnerInfo, *, lease: float, exclusive: bool
    ) -> list[RunnerInfo]:
        """Join the run's live runners; ``exclusive``: JournalBusy if another one is alive."""
        async with self._transaction(f"registering runner {runner.runner_id}") as conn:
            # Two registrations of one run at once must not both see "nobody else here".
            key = run_lock_key(self.schema, run_id)
            await conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)",
                               (RUN_LOCK_CLASS, key))  # fmt: skip
            if not await _fetch(conn, "SELECT 1 FROM runs WHERE run_id = %s", (run_id,)):
                raise JournalError(f"no run {run_id} in the journal {self.location}")
            now = await _db_now(conn)
            others = await _live(conn, run_id, now, but=runner.runner_id)
            if exclusive and others:
                raise JournalBusy(self._busy_message(run_id, others, now))
            await conn.execute(
                "INSERT INTO runners (run_id, runner_id, host, pid, joined_at, heartbeat_at,"
                " lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (run_id, runner_id) DO UPDATE SET host = excluded.host,"
                " pid = excluded.pid, heartbeat_at = excluded.heartbeat_at,"
                " lease_until = excluded.lease_until",
                (run_id, runner.runner_id, runner.host, runner.pid, now, now, now + lease),
            )
            return [info for info, _ in await _live(conn, run_id, now)]

    def _busy_message(self, run_id: str, others: list[tuple[RunnerInfo, float]], now: float) -> str:
        who = ", ".join(
            f"{info.host} pid {info.pid} (its lease ends in {max(0.0, until - now):.0f} s "
            "unless renewed)"
            for info, until in others
        )
        return (
            f"run {run_id} of the journal {self.location} is being run by {who}; wait for that "
            "run to end, or stop it, then try again (or join it to share the work)"
        )

    async def heartbeat(self, run_id: str, runner_id: str, *, lease: float) -> list[RunnerInfo]:
        """Renew the runner's lease and its targets'; LeaseLost once the lease has run out."""
        async with self._transaction(f"heartbeat of runner {runner_id}") as conn:
            now = await _db_now(conn)
            rows = await _fetch(
                conn,
                "SELECT lease_until FROM runners WHERE run_id = %s AND runner_id = %s FOR UPDATE",
                (run_id, runner_id),
            )
            # Too late is too late: once the lease ran out, other runners may have taken any
            # of this runner's targets, and it cannot know which, so it must stop.
            if not rows or float(rows[0][0]) < now:
                raise LeaseLost(
                    f"runner {runner_id} lost its lease in run {run_id} (it expired or the "
                    "runner left); other runners may have taken over its targets, so it must stop"
                )
            await conn.execute(
                "UPDATE runners SET heartbeat_at = %s, lease_until = %s"
                " WHERE run_id = %s AND runner_id = %s",
                (now, now + lease, run_id, runner_id),
            )
            await conn.execute(
                _locked_targets("SET lease_until = %(until)s", "AND owner = %(me)s"),
                {"run": run_id, "me": runner_id, "until": now + lease},
            )
            await conn.execute(
                "DELETE FROM runners WHERE (run_id, runner_id) IN (SELECT run_id, runner_id"
                " FROM runners WHERE run_id = %s AND lease_until < %s FOR UPDATE SKIP LOCKED)",
                (run_id, now - FORGET_AFTER_S),
            )
            return [info for info, _ in await _live(conn, run_id, now)]

    async def leave(self, run_id: str, runner_id: str) -> None:
        """Give back every target the runner owns that is not terminal; unregister it."""
        await self._give_back(run_id, runner_id, None)
        async with self._transaction(f"runner {runner_id} leaving") as conn:
            await conn.execute(
                "DELETE FROM runners WHERE run_id = %s AND runner_id = %s", (run_id, runner_id)
            )

    async def release(self, run_id: str, runner_id: str, target_ids: Sequence[int]) -> None:
        """Give back claimed targets (those the runner still owns and are not terminal)."""
        if target_ids:
            await self._give_back(run_id, runner_id, list(target_ids))

    async def _give_back(self, run_id: str, runner_id: str, ids: list[int] | None) -> None:
        """Clear the owner of the runner's targets (``ids``, or all) that are not terminal.

        A row the group writer has locked at that instant is skipped (see ``_locked_targets``)
        and tried again a moment later, when that batch has committed; one still locked after
        that keeps its lease until it runs out, which only delays its next claim.
        """
        only = "" if ids is None else " AND target_id = ANY(%(ids)s::bigint[])"
        params = {"run": run_id, "me": runner_id, "ids": ids}
        for _ in range(GIVE_BACK_TRIES):
            async with self._transaction(f"runner {runner_id} giving targets back") as conn:
                await conn.execute(
                    _locked_targets("SET owner = NULL, lease_until = NULL",
                                    f"AND owner = %(me)s{only}"),
                    params,
                )  # fmt: skip
                left = await _fetch(
                    conn,
                    f"SELECT EXISTS (SELECT 1 FROM targets WHERE run_id = %(run)s AND {OPEN}"
                    f" AND owner = %(me)s{only})",
                    params,
                )
            if not left[0][0]:
                return
            await anyio.sleep(GIVE_BACK_PAUSE_S)

    # --- pools and accounts ------------------------------------------------------------

    async def server_time(self) -> float:
        """The database's clock (epoch seconds)."""
        async with self._transaction("reading the database's clock") as conn:
            return await _db_now(conn)

    async def claim(self, request: ClaimRequest, policy: ClaimPolicy[A]) -> Claim[A]:
        """See ``postgres_shared_claim``: one transaction with the pool's row locked."""
        what = f"claim of runner {request.runner_id} in pool {request.pool} ({request.account})"
        async with self._transaction(what) as conn:
            return await claim_in(conn, request, policy)

    async def set_pool_baseline(
        self,
        run_id: str,
        account: str,
        pool: str,
        baseline: int,
        down_targets: Sequence[str] | None = None,
    ) -> None:
        """Record the pool's nodes unavailable for other reasons, and the node ids of its
        targets seen not ready (None: leave them as they are); later claims use both."""
        down = None if down_targets is None else sorted(set(down_targets))
        async with self._transaction(f"baseline of pool {pool} ({account})") as conn:
            await conn.execute(
                "INSERT INTO run_pools (run_id, account, pool, baseline, down_targets)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (run_id, account, pool) DO UPDATE SET baseline = excluded.baseline,"
                "  down_targets = COALESCE(excluded.down_targets, run_pools.down_targets)",
                (run_id, account, pool, max(0, baseline), down),
            )

    async def share_pause(self, run_id: str, account: str, pause_for: float) -> float:
        """Make the account's shared pause last ``pause_for`` seconds more at least; returns
        how many seconds it lasts now (0 when it is over)."""
        async with self._transaction(f"pause of account {account}") as conn:
            now = await _db_now(conn)
            until = now + pause_for if pause_for > 0 else 0.0
            rows = await _fetch(
                conn,
                "INSERT INTO run_accounts (run_id, account, paused_until) VALUES (%s, %s, %s)"
                " ON CONFLICT (run_id, account) DO UPDATE"
                " SET paused_until = GREATEST(run_accounts.paused_until, excluded.paused_until)"
                " RETURNING paused_until",
                (run_id, account, until),
            )
            return max(0.0, float(rows[0][0]) - now)

    async def resume_pools(self, run_id: str) -> None:
        """Release every pool's checkpoint and pause (a resume is the operator's go-ahead)."""
        async with self._transaction(f"resuming the pools of run {run_id}") as conn:
            await conn.execute(
                "UPDATE run_pools SET held = false, opens_at = NULL"
                " WHERE run_id = %s AND (held OR opens_at IS NOT NULL)",
                (run_id,),
            )

    # --- gates (see postgres_gates) ----------------------------------------------------

    async def event_mark(self, run_id: str) -> int:
        """The id of the run's latest event (0: none)."""
        async with self._transaction(f"reading the events of run {run_id}") as conn:
            return await gates.event_mark(conn, run_id)

    def gate_turn(self, run_id: str, key: GateKey) -> AbstractAsyncContextManager[GateTurn]:
        """This runner's turn at a gate, on a connection of its own (see postgres_gates)."""
        return gates.gate_turn(self._url, self.schema, self.location, run_id, key)


def _locked_targets(assignments: str, condition: str) -> str:
    """An UPDATE of the run's targets that are not terminal and match ``condition``, skipping
    rows locked right now: outside the group writer nothing waits on a target row, so nothing
    here can deadlock with a batch (a row skipped keeps its lease until that runs out)."""
    return (
        "WITH c AS MATERIALIZED (SELECT target_id FROM targets WHERE run_id = %(run)s"
        f" AND {OPEN} {condition} FOR NO KEY UPDATE SKIP LOCKED)"
        f" UPDATE targets t {assignments} FROM c WHERE t.target_id = c.target_id"
    )


async def _db_now(conn: Conn) -> float:
    """The database's clock, epoch seconds (``clock_timestamp()``: not the transaction's start)."""
    rows = await _fetch(conn, f"SELECT {DB_NOW}", ())
    return float(rows[0][0])


async def _fetch(
    conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


async def _live(
    conn: Conn, run_id: str, now: float, *, but: str | None = None
) -> list[tuple[RunnerInfo, float]]:
    """The run's runners whose lease holds at ``now`` (except ``but``), with their leases."""
    rows = await _fetch(
        conn,
        "SELECT runner_id, host, pid, lease_until FROM runners"
        " WHERE run_id = %s AND lease_until >= %s AND runner_id IS DISTINCT FROM %s::text"
        " ORDER BY joined_at, runner_id",
        (run_id, now, but),
    )
    return [(RunnerInfo(str(r), str(h), int(p)), float(until)) for r, h, p, until in rows]


async def _open_pool(url: str, schema: str, size: int) -> AsyncConnectionPool[Conn]:
    async def configure(conn: Conn) -> None:
        await pgconn.prepare(conn, schema)
        await pgconn.prepare_writer(conn)  # a claim reported done must be on the server's disk

    pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max(1, size),
        kwargs={"autocommit": True, **pgconn.connect_options(url)},
        configure=configure,
        check=AsyncConnectionPool.check_connection,
        name="fleet-reimage-shared",
        open=False,
    )
    await pool.open(wait=False)
    return pool
