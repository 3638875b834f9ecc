"""Send slots: may this job send its HTTP request now? (a policy object, aiometer-style)

A job first makes its attempt durable in the journal, then asks for a slot and waits. The
dispatcher calls ``grant`` whenever something changed; a slot is granted while the run has
fewer than ``concurrency`` requests in flight and the job's account allows one more (its
``per_account_concurrency`` as cut by the adaptive throttle, its pacing and any pause for a
server's Retry-After). Slots are held only while the request is on the wire, so journal
writes never eat into the in-flight budget. Accounts take turns, so one busy account cannot
starve the others.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from fleet_reimage.engine.runstate import AccountRun
from fleet_reimage.engine.wakeup import Wakeup


class Grant:
    """One job's place in the queue; ``granted`` says whether it may send when woken."""

    __slots__ = ("account", "event", "granted")

    def __init__(self, account: AccountRun) -> None:
        self.account = account
        self.event = Wakeup()
        self.granted = False


class SendSlots:
    def __init__(self, concurrency: int, accounts: Sequence[AccountRun]) -> None:
        self.concurrency = concurrency
        self.in_flight = 0
        self._queues: dict[str, deque[Grant]] = {a.name: deque() for a in accounts}
        self._accounts = list(accounts)
        self._next = 0  # round-robin position

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def try_send(self, account: AccountRun, now: float) -> bool:
        """Take a slot at once if nobody of the account is waiting and one is free."""
        if self._queues[account.name] or self.in_flight >= self.concurrency:
            return False
        if account.throttle.wait_time(account.in_flight, now) != 0.0:
            return False
        self.in_flight += 1
        account.in_flight += 1
        account.throttle.started(now)
        return True

    def request(self, account: AccountRun) -> Grant:
        grant = Grant(account)
        self._queues[account.name].append(grant)
        return grant

    def grant(self, now: float) -> float:
        """Wake every job that may send now; returns when the next one could (or inf)."""
        earliest = math.inf
        progress = True
        while progress and self.in_flight < self.concurrency:
            progress = False
            for _ in range(len(self._accounts)):
                account = self._accounts[self._next]
                self._next = (self._next + 1) % len(self._accounts)
                queue = self._queues[account.name]
                if not queue or self.in_flight >= self.concurrency:
                    continue
                wait = account.throttle.wait_time(account.in_flight, now)
                if wait is None:
                    continue  # at the account's concurrency: a release will wake us
                if wait > 0:
                    earliest = min(earliest, now + wait)
                    continue
                self._send(queue.popleft(), now)
                progress = True
        return earliest

    def _send(self, grant: Grant, now: float) -> None:
        self.in_flight += 1
        grant.account.in_flight += 1
        grant.account.throttle.started(now)
        grant.granted = True
        grant.event.set()

    def release(self, account: AccountRun) -> None:
        self.in_flight -= 1
        account.in_flight -= 1

    def deny_all(self) -> None:
        """The run is stopping: nobody waiting may send."""
        for queue in self._queues.values():
            while queue:
                queue.popleft().event.set()
