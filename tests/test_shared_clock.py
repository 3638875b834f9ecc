"""One clock for shared runs: leases, the fence and pauses follow the database's clock, so a
runner whose own clock is wrong can neither take over live runners' work nor outlive its
lease; and it is warned when it joins. Runners' clocks are injected functions here (nothing
patches ``time`` globally)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pgserver
import pytest
import structlog
from test_journal_pg_support import (
    all_closed,
    claim,
    ended,
    fenced,
    pool_targets,
    runner,
    shared_run,
)
from test_journal_support import RUN_ID

from fleet_reimage.engine.sharedrun import MAX_CLOCK_SKEW, clock_skew
from fleet_reimage.journal import TargetState
from fleet_reimage.journal.model import LeaseLost

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

A, B = runner("host-a", 1), runner("host-b", 2)
LEASE = 5.0


def ahead(seconds: float) -> Callable[[], float]:
    """A runner's clock, ``seconds`` ahead of this machine's (behind when negative)."""
    return lambda: time.time() + seconds


async def test_a_runner_whose_clock_is_off_is_warned_when_it_joins(pg: pgserver.PgSchema) -> None:
    with anyio.fail_after(20):
        (a,) = await shared_run(pg, pool_targets("p", [2]), journals=1)
        async with a:
            with structlog.testing.capture_logs() as quiet:
                in_step = await clock_skew(a, time.time)
            with structlog.testing.capture_logs() as ahead_logs:
                fast = await clock_skew(a, ahead(3 * LEASE))
            with structlog.testing.capture_logs() as behind_logs:
                slow = await clock_skew(a, ahead(-2.5))
    # The test's clock and the server's are this machine's: they agree.
    assert abs(in_step) < MAX_CLOCK_SKEW and quiet == []
    assert fast == pytest.approx(-3 * LEASE, abs=MAX_CLOCK_SKEW)
    assert slow == pytest.approx(2.5, abs=MAX_CLOCK_SKEW)
    for logs, skew in ((ahead_logs, fast), (behind_logs, slow)):
        (warning,) = logs
        assert warning["log_level"] == "warning"
        assert "clock differs from the database's" in warning["event"]
        assert warning["skew_s"] == round(skew, 3)


async def test_a_runner_with_its_clock_ahead_takes_nothing_from_live_runners(
    pg: pgserver.PgSchema,
) -> None:
    """Before, a claim compared leases with the claiming runner's clock: a runner whose clock
    ran more than a lease ahead took over live runners' work. Now no runner's clock enters a
    claim, the fence or a heartbeat; only its records' own times are its."""
    fast = ahead(3 * LEASE)
    with anyio.fail_after(30):
        a, b = await shared_run(pg, pool_targets("p", [6]))
        async with all_closed([a, b]):
            await a.register_runner(RUN_ID, A, lease=LEASE, exclusive=True)
            with structlog.testing.capture_logs() as logs:
                await clock_skew(b, fast)  # as B joins
            await b.register_runner(RUN_ID, B, lease=LEASE, exclusive=False)
            mine = [t.target_id for t in (await claim(a, A, limit=3, lease=LEASE)).targets]
            sent = fenced(mine[0], A)
            await a.attempt_started(sent)  # in flight: A is alive, its lease holds
            accepted = fenced(mine[1], A)
            await a.attempt_started(accepted)
            await a.attempt_finished(ended(accepted, TargetState.ACCEPTED))
            theirs = await claim(b, B, lease=LEASE)
            # B's own start, stamped by its clock, is fenced by the database's.
            late_stamp = fenced(theirs.targets[0].target_id, B, sent_at=fast())
            await b.attempt_started(late_stamp)
            with pytest.raises(LeaseLost):  # and A's unsent claim is still A's, not B's
                await b.attempt_started(fenced(mine[2], B, sent_at=fast()))
            records = {t.target_id: t for t in await a.targets(RUN_ID)}
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert theirs.takeovers == []  # nothing of A's in flight or accepted
    assert {t.target_id for t in theirs.targets} == set(records) - set(mine)
    assert records[late_stamp.target_id].state is TargetState.IN_FLIGHT
    assert records[late_stamp.target_id].last_sent_at == late_stamp.sent_at  # its record, its time
