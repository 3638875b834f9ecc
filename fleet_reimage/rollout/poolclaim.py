"""A pool's claim in its metadata, and what a run does about the claim it finds (pure).

With ``rollout.claim_pools: true`` a run writes, before its first change to a pool, the item
``fleet-reimage.claim`` into the pool's metadata (``engine/poolclaim.py`` does the I/O). Its
value says who works on the pool and until when, for people and for other runs alike::

    run=r20261125-224233-ab12cd host=ops-1 expires=2026-11-25T23:12:33Z

A run that finds a claim:

* of its own run (in a shared run, another runner's): the pool is the run's; it renews it;
* of another run, not expired: the pool is refused, naming that run and its host;
* of another run, expired (that run died, or lost its way): taken over, with a warning;
* that it cannot read: refused (someone wrote it by hand; it is theirs to remove).

The expiry is the writer's wall clock: clocks that disagree by minutes shift it (keep them
in time, NTP). A run renews its claims every third of ``CLAIM_TTL``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

CLAIM_KEY = "fleet-reimage.claim"
CLAIM_TTL = 600.0  # seconds a claim holds without being renewed
_VALUE = re.compile(r"run=(?P<run>\S+) host=(?P<host>\S+) expires=(?P<expires>\S+)")


@dataclass(frozen=True, slots=True)
class PoolClaim:
    run_id: str
    host: str
    expires: float  # epoch seconds (the writer's clock)

    def value(self) -> str:
        return f"run={self.run_id} host={self.host} expires={stamp(self.expires)}"

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} (until {stamp(self.expires)})"


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_claim(text: str) -> PoolClaim | None:
    """A claim's value, or None when it is not one this tool wrote."""
    match = _VALUE.fullmatch(text.strip())
    if match is None:
        return None
    try:
        expires = datetime.fromisoformat(match["expires"].replace("Z", "+00:00"))
    except ValueError:
        return None
    if expires.tzinfo is None:
        return None
    return PoolClaim(match["run"], match["host"], expires.timestamp())


Verdict = Literal["free", "ours", "expired", "taken", "unreadable"]


def judge(found: str | None, run_id: str, now: float) -> tuple[Verdict, PoolClaim | None]:
    """What the claim item found on a pool (``found``: its value, None if absent) means for
    ``run_id`` at ``now``."""
    if found is None:
        return "free", None
    claim = parse_claim(found)
    if claim is None:
        return "unreadable", None
    if claim.run_id == run_id:
        return "ours", claim
    return ("expired" if claim.expires <= now else "taken"), claim


def with_claim(metadata: tuple[tuple[str, str], ...], value: str | None) -> list[tuple[str, str]]:
    """The pool's metadata with the claim item set to ``value`` (None: removed), every other
    item kept as it was, in its place."""
    items = [(name, text) for name, text in metadata if name != CLAIM_KEY]
    if value is not None:
        items.append((CLAIM_KEY, value))
    return items
