"""Injected faults and the account's rate limit.

Fault draws are keyed, not sequenced globally: a node operation's draw depends on
(fault seed, operation, pool, node, n) where n counts that node's requests for that
operation, so which nodes see which faults does not depend on concurrency or ordering.
List operations have no natural key and draw from a per-operation sequence instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .clock import Clock
from .seeded import uniform_pair
from .spec import FAULT_KINDS, FaultSpec, FaultsSpec, RateLimitSpec

# Kinds decided before the operation runs (nothing applied) and after it (applied).
BEFORE_KINDS = frozenset({"throttle", "server_busy", "server_error", "reset_before"})
AFTER_KINDS = frozenset({"reset_after", "delay_after"})


@dataclass(frozen=True, slots=True)
class Draw:
    kind: str | None  # one of FAULT_KINDS, or None for a healthy request
    latency: float  # seconds to wait before answering (latency + jitter share)
    spec: FaultSpec


def _active(spec: FaultSpec) -> bool:
    return any(spec.shares()) or spec.latency > 0 or spec.jitter > 0


class FaultInjector:
    """Decides, per request, which fault (if any) it gets."""

    def __init__(self, faults: FaultsSpec) -> None:
        self.seed = faults.seed
        # Operations whose spec does nothing are left out, so healthy ones pay one dict miss.
        self._specs = {op: spec for op, spec in faults.operations.items() if _active(spec)}
        self._thresholds: dict[str, tuple[tuple[str, float], ...]] = {}
        for op, spec in self._specs.items():
            running, steps = 0.0, []
            for kind, share in zip(FAULT_KINDS, spec.shares(), strict=True):
                if share > 0:
                    running += share
                    steps.append((kind, running))
            self._thresholds[op] = tuple(steps)
        self._per_key: dict[tuple[str, str, str], int] = {}
        self._per_operation: dict[str, int] = {}

    def spec(self, operation: str) -> FaultSpec | None:
        return self._specs.get(operation)

    def draw(self, operation: str, pool: str | None = None, node: str | None = None) -> Draw | None:
        """This request's fate; None when the operation has no faults configured."""
        spec = self._specs.get(operation)
        if spec is None:
            return None
        if pool is not None:
            key = (operation, pool, node or "")
            n = self._per_key[key] = self._per_key.get(key, 0) + 1
            kind_draw, jitter_draw = uniform_pair(self.seed, operation, pool, node or "", n)
        else:
            n = self._per_operation[operation] = self._per_operation.get(operation, 0) + 1
            kind_draw, jitter_draw = uniform_pair(self.seed, operation, n)
        kind = None
        for candidate, threshold in self._thresholds[operation]:
            if kind_draw < threshold:
                kind = candidate
                break
        return Draw(kind, spec.latency + spec.jitter * jitter_draw, spec)


def retry_headers(seconds: float) -> dict[str, str]:
    """How long to wait, as the service says it: whole seconds in Retry-After, else in ms.

    Sub-second waits (scaled-down tests) go only in ``retry-after-ms`` and
    ``x-ms-retry-after-ms``, which azure-core also honours.
    """
    if seconds >= 1 and seconds == int(seconds):
        return {"Retry-After": str(int(seconds))}
    milliseconds = str(max(1, math.ceil(seconds * 1000 - 1e-9)))
    return {"retry-after-ms": milliseconds, "x-ms-retry-after-ms": milliseconds}


class TokenBucket:
    """The per-account request budget: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, limit: RateLimitSpec, clock: Clock) -> None:
        self.rate = limit.requests_per_second
        self.burst = float(limit.burst)
        self.clock = clock
        self.tokens = self.burst
        self.updated = clock.monotonic()

    def take(self) -> float:
        """0.0 when the request may go ahead, else the seconds until a token is available."""
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def rate_limit_headers(wait: float) -> dict[str, str]:
    """Retry headers for a rate-limited request: whole seconds (rounded up) from 1 s on."""
    return retry_headers(math.ceil(wait) if wait >= 1 else wait)
