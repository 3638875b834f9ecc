"""Claiming pools in their metadata, against other runs (``rollout.claim_pools: true``).

Before the dispatcher sends its first change to any pool, the run claims every pool it has
work in (``start``): it reads the pool, judges the claim item it finds
(``rollout/poolclaim.py``), and writes its own with ``PATCH`` and ``If-Match`` on the pool's
ETag, keeping every other metadata item. A 412 (someone changed the pool in between) means
read again and decide again; an answer in doubt means read again and see whose claim is
there. A pool claimed by another live run is refused: it stops, resumable, naming that run
and its host, and its nodes stay pending. An expired claim is taken over with a warning.

While the run works (``run``), each claim is renewed every third of ``CLAIM_TTL``; a claim
found taken by another run on renewal stops the pool the same way. A pool is released (its
claim removed, again with ``If-Match``) once it is done, and every claim when the run
stops (``finish``). In a shared run the claim belongs to the run: every runner renews it,
and only the last runner to leave releases a pool that is not finished.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable

import anyio
import structlog

from fleet_reimage.batch.client import new_client_request_id
from fleet_reimage.batch.errors import (
    AuthFailed,
    BatchError,
    NotFound,
    PreconditionFailed,
    RequestInDoubt,
)
from fleet_reimage.batch.explain import describe
from fleet_reimage.batch.models import PoolInfo
from fleet_reimage.batch.retry import backoff_delay, is_retryable
from fleet_reimage.engine.control import RunControl
from fleet_reimage.engine.ledger import RunLedger
from fleet_reimage.engine.runstate import PoolRun
from fleet_reimage.rollout.poolclaim import CLAIM_KEY, CLAIM_TTL, PoolClaim, judge, with_claim

log = structlog.get_logger("fleet_reimage.claims")

TRIES = 6  # reads and writes of one claim before giving up (412s and transient errors)
CHECK_INTERVAL = 0.25  # seconds between looks for pools that are done
RELEASE_WITHIN = 15.0  # seconds a stopping run spends removing its claims (they expire anyway)


class ClaimLost(Exception):
    """Another run holds the pool (or the claim cannot be taken): the message says why."""


class PoolClaims:
    def __init__(
        self,
        ledger: RunLedger,
        control: RunControl,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        others_alive: Callable[[], bool] = lambda: False,
    ) -> None:
        """``ttl``: how long a claim holds unrenewed (default ``CLAIM_TTL``); ``others_alive``:
        other runners share the run now (they keep its claims)."""
        self.ledger = ledger
        self.control = control
        self.ttl = CLAIM_TTL if ttl is None else ttl
        self.clock = clock
        self.others_alive = others_alive
        self.host = socket.gethostname()
        self.held: set[PoolRun] = set()
        self._random = random.Random()

    # --- the run's life ---

    async def start(self) -> None:
        """Claim every pool with work left, at once; refuse (stop) those another run holds."""
        async with anyio.create_task_group() as group:
            for pool in self.ledger.pools:
                if not pool.rollout.done:
                    group.start_soon(self._take, pool)

    async def run(self) -> None:
        """Renew the claims in time, and release each pool once it is done (until cancelled)."""
        renew_at = time.monotonic() + self.ttl / 3
        while True:
            await anyio.sleep(CHECK_INTERVAL)
            for pool in [p for p in self.held if _finished(p)]:
                await self._release(pool)
            if time.monotonic() >= renew_at:
                renew_at = time.monotonic() + self.ttl / 3
                async with anyio.create_task_group() as group:
                    for pool in list(self.held):
                        group.start_soon(self._take, pool)

    async def finish(self) -> None:
        """The run ends: release every pool still held (a shared run's, if no runner is left
        or the pool is finished)."""
        keep = self.ledger.shared and self.others_alive()
        with anyio.move_on_after(RELEASE_WITHIN):  # a service that does not answer: they expire
            async with anyio.create_task_group() as group:
                for pool in list(self.held):
                    if not keep or _finished(pool):
                        group.start_soon(self._release, pool)

    # --- one pool ---

    async def _take(self, pool: PoolRun) -> None:
        """Claim (or renew) the pool; stop it when another run holds it."""
        try:
            await self._write(pool, claiming=True)
        except ClaimLost as lost:
            self.held.discard(pool)
            self.ledger.stop_pool(pool, str(lost), resumable=True)
        except AuthFailed as error:
            self.control.request_stop("auth", f"authentication failed: {describe(error)}")

    async def _release(self, pool: PoolRun) -> None:
        self.held.discard(pool)
        try:
            await self._write(pool, claiming=False)
        except (ClaimLost, BatchError) as error:  # it expires by itself
            log.warning("could not remove the pool's claim", pool=pool.pool_id, error=str(error))

    async def _write(self, pool: PoolRun, *, claiming: bool) -> None:
        """Read the pool, decide, write with If-Match; again on a 412 or an answer in doubt."""
        for attempt in range(1, TRIES + 1):
            info = await self._read(pool, attempt)
            if info is None:
                continue
            mine = PoolClaim(self.ledger.run_id, self.host, self.clock() + self.ttl)
            write, value = self._decide(pool, info, mine if claiming else None)
            if not write:
                return  # nothing to write (not ours to remove)
            try:
                await pool.account.client.patch_pool_metadata(
                    pool.pool_id,
                    with_claim(info.metadata, value),
                    if_match=info.e_tag,
                    client_request_id=new_client_request_id(),
                )
            except PreconditionFailed:
                continue  # changed since read: read again, decide again
            except AuthFailed:
                raise
            except BatchError as error:  # in doubt: the next read shows whose claim is there
                if not _retryable(error):
                    raise ClaimLost(f"could not claim the pool: {describe(error)}") from None
                await anyio.sleep(backoff_delay(attempt, 0.2, 5.0, self._random.random()))
                continue
            self._written(pool, claiming, mine)
            return
        raise ClaimLost(
            f"could not {'claim' if claiming else 'release'} the pool in {TRIES} tries "
            f"(its metadata kept changing, or the service kept failing)"
        )

    async def _read(self, pool: PoolRun, attempt: int) -> PoolInfo | None:
        try:
            return await pool.account.client.get_pool(pool.pool_id)
        except NotFound:
            raise ClaimLost("the pool no longer exists") from None
        except AuthFailed:
            raise
        except BatchError as error:
            if attempt == TRIES:
                raise ClaimLost(f"could not read the pool to claim it: {describe(error)}") from None
            await anyio.sleep(backoff_delay(attempt, 0.2, 5.0, self._random.random()))
            return None

    def _decide(
        self, pool: PoolRun, info: PoolInfo, mine: PoolClaim | None
    ) -> tuple[bool, str | None]:
        """Whether to write, and the claim value to write (None: remove the item)."""
        if info.e_tag is None:
            raise ClaimLost("the service gave no ETag for the pool: it cannot be claimed safely")
        verdict, found = judge(info.metadata_value(CLAIM_KEY), self.ledger.run_id, self.clock())
        if mine is None:  # releasing: only our own claim
            return verdict == "ours", None
        if verdict == "taken" and found is not None:
            raise ClaimLost(
                f"claimed by {found.describe()}: another run is working on this pool; "
                "its nodes stay pending (resume once that run is done)"
            )
        if verdict == "unreadable":
            raise ClaimLost(
                f"its metadata item {CLAIM_KEY} holds something this tool did not write "
                f"({info.metadata_value(CLAIM_KEY)!r}); remove it if no run uses the pool"
            )
        if verdict == "expired" and found is not None:
            log.warning("taking over an expired claim", pool=pool.pool_id, claim=found.describe())
            self.ledger.pool_event("pool_claim_taken_over", pool, {"from": found.describe()})
        return True, mine.value()

    def _written(self, pool: PoolRun, claiming: bool, mine: PoolClaim) -> None:
        if not claiming:
            self.ledger.pool_event("pool_released", pool, {})
            return
        if pool not in self.held:
            self.held.add(pool)
            self.ledger.pool_event("pool_claimed", pool, {"claim": mine.value()})
        else:  # for --events only: the journal need not keep every renewal
            where = {"account": pool.account.name, "pool": pool.pool_id}
            self.ledger.observer.event("pool_claim_renewed", {**where, "claim": mine.value()})


def _retryable(error: BatchError) -> bool:
    return isinstance(error, RequestInDoubt) or is_retryable(error)


def _finished(pool: PoolRun) -> bool:
    """Nothing of ours will touch the pool again (done, or stopped) in this process."""
    rollout = pool.rollout
    return rollout.done and not pool.awaiting and not pool.retry_heap
