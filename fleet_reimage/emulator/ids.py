"""Batch-like node ids and addresses, and the nodes a growing pool allocates.

Ids look like the service's on virtual-machine pools: ``tvmps_<64 hex>_d`` for dedicated
nodes, ``_p`` for low-priority ones; each is a function of (seed, pool, serial).
"""

from __future__ import annotations

import random

from .resources import Node, Pool
from .seeded import hex_digest


def vm_node_id(rng: random.Random, dedicated: bool = True) -> str:
    return f"tvmps_{rng.getrandbits(256):064x}_{'d' if dedicated else 'p'}"


def ip_address(pool_index: int, node_index: int) -> str:
    value = ((pool_index + 1) * (1 << 18) + node_index + 4) % (1 << 24)
    return f"10.{value >> 16}.{(value >> 8) & 255}.{value & 255}"


def new_node(seed: int, pool: Pool, serial: int, dedicated: bool, ticks: int) -> Node:
    """A node a resize allocates now (``creating``; it joins the pool's list next)."""
    rng = random.Random(hex_digest(seed, "new-node", pool.id, serial))
    return Node(
        pool,
        vm_node_id(rng, dedicated),
        len(pool.nodes),
        "creating",
        transition_ticks=ticks,
        last_boot_ticks=None,
        allocation_ticks=ticks,
        ip_address=ip_address(pool.index, len(pool.nodes) + len(pool.removed)),
        is_dedicated=dedicated,
    )
