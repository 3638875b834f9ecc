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

``BudgetRule`` is the rule (the rollout policy gates every pool with it); ``FailureBudget``
is one runner's count against it. In a shared run each claim tells the runner the whole
run's failures (``observe``), so every runner stops on the same count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BudgetRule:
    limit: int
    forgiven: int = 0  # failures accepted by the operator on resume

    def counted(self, failures: int) -> int:
        return failures - self.forgiven

    def exceeded(self, failures: int) -> bool:
        return self.counted(failures) > self.limit


@dataclass(slots=True)
class FailureBudget:
    limit: int
    failures: int = 0
    forgiven: int = 0  # failures accepted by the operator on resume

    @property
    def rule(self) -> BudgetRule:
        return BudgetRule(self.limit, self.forgiven)

    @property
    def counted(self) -> int:
        return self.rule.counted(self.failures)

    @property
    def exceeded(self) -> bool:
        return self.rule.exceeded(self.failures)

    def record_failure(self) -> bool:
        """Count one failure; True when this one took the run past its budget."""
        return self.observe(self.failures + 1)

    def observe(self, failures: int) -> bool:
        """The run has at least ``failures`` (e.g. from a claim, counting every runner's);
        True when that took the run past its budget."""
        was_exceeded = self.exceeded
        self.failures = max(self.failures, failures)
        return self.exceeded and not was_exceeded

    def describe(self) -> str:
        return f"{self.counted} failed, budget {self.limit}"
