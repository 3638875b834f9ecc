"""Send slots and in-flight accounting: may this job send its HTTP request now? (aiometer-style)

Every count of work between "launched" and "answered" lives here, and only here:

    waiting    jobs launched that have not been granted (or denied) a slot yet: they are
               writing their attempt to the journal, or queued for a slot
    on_wire    requests sent and not yet answered

each for the run and for every account. A job is launched (``launch``), makes its attempt
durable in the journal, then asks for a slot (``acquire``) and waits; it gives the slot back
when the answer is in (``release``), or gives up its place if it will never send
(``abandon``). The dispatcher launches no more than ``concurrency`` waiting jobs (per
account, its current concurrency: ``may_launch``), so the journal write of the next requests
overlaps the requests on the wire without piling up. A slot is granted while the run has
fewer than ``concurrency`` requests on the wire and the job's account allows one more (its
``per_account_concurrency`` as cut by the adaptive throttle, its pacing and any pause for a
server's Retry-After). Slots are held only while the request is on the wire, so journal
writes never eat into the in-flight budget. Accounts take turns, so one busy account cannot
starve the others.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

from fleet_reimage.engine.runstate import AccountRun
from fleet_reimage.engine.wakeup import Wakeup


class Grant:
    """One job's place in the queue; ``granted`` says whether it may send when woken."""

    __slots__ = ("account", "event", "granted")

    def __init__(self, account: AccountRun) -> None:
        self.account = account
        self.event = Wakeup()
        self.granted = False


class Flight:
    """One account's (or the run's) counts of waiting jobs and requests on the wire."""

    __slots__ = ("on_wire", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.on_wire = 0


class SendSlots:
    def __init__(
        self, concurrency: int, accounts: Sequence[AccountRun], wake: Callable[[], None]
    ) -> None:
        """``wake``: the dispatcher's, called when a job starts waiting or a slot frees up."""
        self.concurrency = concurrency
        self._wake = wake
        self.run = Flight()
        self._flights = {a.name: Flight() for a in accounts}
        self._queues: dict[str, deque[Grant]] = {a.name: deque() for a in accounts}
        self._accounts = list(accounts)
        self._next = 0  # round-robin position
        self.denying = False  # the run is stopping: nobody may send any more

    # --- questions ---

    def flight(self, account: AccountRun) -> Flight:
        return self._flights[account.name]

    @property
    def in_flight(self) -> int:
        """Requests on the wire, the whole run."""
        return self.run.on_wire

    @property
    def queued(self) -> int:
        """Jobs waiting in a queue for a slot."""
        return sum(len(queue) for queue in self._queues.values())

    def may_launch(self, account: AccountRun | None = None) -> bool:
        """May the dispatcher launch another job (of ``account``)? At most ``concurrency``
        jobs wait in the run, and an account's current concurrency in that account."""
        if self.run.waiting >= self.concurrency:
            return False
        return account is None or self.flight(account).waiting < account.throttle.concurrency

    # --- a job's life ---

    def launch(self, account: AccountRun) -> None:
        self.run.waiting += 1
        self.flight(account).waiting += 1

    def abandon(self, account: AccountRun) -> None:
        """A launched job will never send (its target is no longer this runner's)."""
        self.run.waiting -= 1
        self.flight(account).waiting -= 1

    async def acquire(self, account: AccountRun, now: float) -> bool:
        """Wait for a slot; False when the run stopped first (nothing may be sent)."""
        try:
            if self.denying:
                return False
            if self._try_send(account, now):
                return True
            grant = Grant(account)
            self._queues[account.name].append(grant)
            self._wake()
            await grant.event.wait()
            return grant.granted
        finally:
            self.abandon(account)  # no longer waiting, sent or not

    def release(self, account: AccountRun, now: float) -> None:
        """The request's answer is in (or it failed): its slot is free."""
        self.run.on_wire -= 1
        self.flight(account).on_wire -= 1
        if not self.denying:
            # Hand the slot on now rather than on the dispatcher's next turn: one event-loop
            # iteration less between an answer and the next request (it shows at high latency).
            self.grant(now)
        self._wake()

    # --- the dispatcher's side ---

    def grant(self, now: float) -> float:
        """Wake every job that may send now; returns when the next one could (or inf)."""
        earliest = math.inf
        progress = True
        while progress and self.run.on_wire < self.concurrency:
            progress = False
            for _ in range(len(self._accounts)):
                account = self._accounts[self._next]
                self._next = (self._next + 1) % len(self._accounts)
                queue = self._queues[account.name]
                if not queue or self.run.on_wire >= self.concurrency:
                    continue
                wait = account.throttle.wait_time(self.flight(account).on_wire, now)
                if wait is None:
                    continue  # at the account's concurrency: a release will wake us
                if wait > 0:
                    earliest = min(earliest, now + wait)
                    continue
                self._send(queue.popleft(), now)
                progress = True
        return earliest

    def deny_all(self) -> None:
        """The run is stopping: nobody waiting, or asking later, may send."""
        self.denying = True
        for queue in self._queues.values():
            while queue:
                queue.popleft().event.set()

    # --- internals ---

    def _try_send(self, account: AccountRun, now: float) -> bool:
        """Take a slot at once if nobody of the account is waiting and one is free."""
        if self._queues[account.name]:
            return False
        if self.run.on_wire >= self.concurrency:
            return False
        if account.throttle.wait_time(self.flight(account).on_wire, now) != 0.0:
            return False
        self._start(account, now)
        return True

    def _send(self, grant: Grant, now: float) -> None:
        self._start(grant.account, now)
        grant.granted = True
        grant.event.set()

    def _start(self, account: AccountRun, now: float) -> None:
        self.run.on_wire += 1
        self.flight(account).on_wire += 1
        account.throttle.started(now)
