"""The run's failure budget (pure).

``failure_budget`` is a count or a percent of all selected nodes. A node counts against it
when it ends ``failed``: a 400, retries exhausted, starttaskfailed/unusable after the
reimage, or not healthy within the health timeout. Throttling, ``gone`` (the node left the
pool) and ``skipped`` nodes never count.

In-flight nodes do not count until they fail. The run stops once failures *exceed* the
budget: with a budget of 2 the third failure stops it, and with a budget of 0 the first one
does. When it stops, nothing new is dispatched but requests already in flight, and nodes
already reimaging, are followed to the end; so the final failure count can end above
``budget + 1`` by at most the number of nodes that were in flight or awaiting health at
that moment. On resume, ``--accept-failures`` forgives the failures so far (the budget then
applies to new ones), and ``--failure-budget`` replaces the limit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FailureBudget:
    limit: int
    failures: int = 0
    forgiven: int = 0  # failures accepted by the operator on resume

    @property
    def counted(self) -> int:
        return self.failures - self.forgiven

    @property
    def exceeded(self) -> bool:
        return self.counted > self.limit

    def record_failure(self) -> bool:
        """Count one failure; True when this one took the run past its budget."""
        was_exceeded = self.exceeded
        self.failures += 1
        return self.exceeded and not was_exceeded

    def describe(self) -> str:
        return f"{self.counted} failed, budget {self.limit}"
