"""Reproducible draws keyed by what they are about, not by when they happen.

A draw is a pure function of its key parts (seed, pool, node, n, ...), so the same fleet
file gives the same node ids, outcomes and faults whatever the request order or concurrency.
"""

from __future__ import annotations

from hashlib import blake2b

_SCALE = float(1 << 64)


def _digest(parts: tuple[object, ...], size: int) -> bytes:
    # A separator that cannot appear in ids keeps ("a", "bc") and ("ab", "c") apart.
    key = "\x1f".join(str(part) for part in parts).encode("utf-8", "surrogatepass")
    return blake2b(key, digest_size=size).digest()


def uniform(*parts: object) -> float:
    """A number in [0, 1) determined by ``parts``."""
    return int.from_bytes(_digest(parts, 8), "big") / _SCALE


def uniform_pair(*parts: object) -> tuple[float, float]:
    """Two independent numbers in [0, 1) from one hash (hot path: one digest, not two)."""
    raw = _digest(parts, 16)
    return int.from_bytes(raw[:8], "big") / _SCALE, int.from_bytes(raw[8:], "big") / _SCALE


def hex_digest(*parts: object, size: int = 32) -> str:
    """Hex text of ``size`` bytes determined by ``parts``."""
    return _digest(parts, size).hex()


def integer(low: int, high: int, *parts: object) -> int:
    """An integer in [low, high] determined by ``parts``."""
    return low + int(uniform(*parts) * (high - low + 1))
