"""The client's maintenance calls against the emulator over real TCP: scheduling, removing
nodes, resizing, and the pool's metadata with ETags.

The emulator's state and its stats document are the oracle: what the service did, counted by
the service, not by the client.
"""

from __future__ import annotations

import pytest
from clienthelpers import emulated, node_ids

from fleet_reimage.batch.client import MAX_REMOVE, new_client_request_id
from fleet_reimage.batch.errors import (
    Conflict,
    NotFound,
    PoolStateConflict,
    PreconditionFailed,
)
from fleet_reimage.emulator import parse_fleet

pytestmark = pytest.mark.anyio

FLEET = """
account: {name: maint, key: "Y2xpZW50IHRlc3RzOiBub3QgYSByZWFsIGJhdGNoIGtleSEhIQ=="}
seed: 5
pools:
  - id: p
    nodes: 6
    states: {idle: 0.5, running: 0.5}
    running_tasks: 1
    metadata: {owner: render-team}
  - id: scaled
    nodes: 3
    auto_scale: {target_dedicated: 3, interval: 10s}
timings: {reimaging: 5s, starting: 1s, creating: 1s, leavingpool: 1s}
"""


def _node_stats(stats: dict[str, object], node_id: str) -> dict[str, object]:
    nodes = stats["nodes"]
    assert isinstance(nodes, list)
    return next(n for n in nodes if n["id"] == node_id)


async def test_disable_then_enable_scheduling_as_the_service_counts_it() -> None:
    async with emulated(parse_fleet(FLEET, "maint.yaml")) as env:
        node = node_ids(env.emu, "p", "running")[0]
        off = await env.client.disable_node_scheduling(
            "p", node, option="taskcompletion", client_request_id=new_client_request_id()
        )
        seen = await env.client.get_node("p", node)
        with pytest.raises(Conflict) as again:  # already disabled: the service says so
            await env.client.disable_node_scheduling(
                "p", node, option="requeue", client_request_id=new_client_request_id()
            )
        on = await env.client.enable_node_scheduling(
            "p", node, client_request_id=new_client_request_id()
        )
        after = await env.client.get_node("p", node)
        counted = _node_stats(env.emu.stats("p"), node)
    assert (off.status, on.status) == (200, 200)
    assert seen.scheduling_state == "disabled" and seen.state == "running"
    assert again.value.code == "NodeAlreadyInTargetSchedulingState"
    assert after.scheduling_state == "enabled"
    assert (counted["scheduling_disables"], counted["scheduling_enables"]) == (1, 1)


async def test_remove_nodes_moves_the_pool_to_resizing_and_drops_its_target() -> None:
    async with emulated(parse_fleet(FLEET, "maint.yaml")) as env:
        before = await env.client.get_pool("p")
        idle = node_ids(env.emu, "p", "idle")[:2]
        done = await env.client.remove_nodes(
            "p", idle, option="requeue", resize_timeout=60, client_request_id="c-1"
        )
        during = await env.client.get_pool("p")
        with pytest.raises(PoolStateConflict) as busy:  # one resize or removal at a time
            await env.client.remove_nodes(
                "p", node_ids(env.emu, "p", "running")[:1], client_request_id="c-2"
            )
        with pytest.raises(ValueError, match="1 to 100"):
            await env.client.remove_nodes(
                "p", [f"n{i}" for i in range(MAX_REMOVE + 1)], client_request_id="c-3"
            )
        removals = [_node_stats(env.emu.stats("p"), n)["removals"] for n in idle]
    assert done.status == 202 and done.client_request_id == done.echoed_client_request_id
    assert before.target_dedicated == 6 and before.allocation_state == "steady"
    assert during.allocation_state == "resizing" and during.target_dedicated == 4
    assert busy.value.code == "PoolBeingResized"
    assert removals == [1, 1]


async def test_resize_grows_the_target_and_is_refused_on_an_auto_scaled_pool() -> None:
    async with emulated(parse_fleet(FLEET, "maint.yaml")) as env:
        grown = await env.client.resize_pool(
            "p", target_dedicated=8, resize_timeout=900, client_request_id="r-1"
        )
        pool = await env.client.get_pool("p")
        with pytest.raises(Conflict) as refused:
            await env.client.resize_pool("scaled", target_dedicated=5, client_request_id="r-2")
        scaled = await env.client.get_pool("scaled")
        stopped = await env.client.stop_pool_resize("p", client_request_id="r-3")
        after_stop = await env.client.get_pool("p")
    assert grown.status == 202 and stopped.status == 202
    assert (pool.target_dedicated, pool.target_low_priority) == (8, 0)
    assert pool.allocation_state == "resizing"
    assert scaled.enable_auto_scale and refused.value.status == 409
    assert after_stop.allocation_state in ("stopping", "steady")


async def test_metadata_patch_is_conditional_on_the_etag() -> None:
    async with emulated(parse_fleet(FLEET, "maint.yaml")) as env:
        pool = await env.client.get_pool("p")
        claim = ("fleet-reimage.claim", "run r1 on host-a until 2026-12-03T00:00:00Z")
        patched = await env.client.patch_pool_metadata(
            "p", [*pool.metadata, claim], if_match=pool.e_tag, client_request_id="m-1"
        )
        with pytest.raises(PreconditionFailed) as stale:  # someone changed it since
            await env.client.patch_pool_metadata(
                "p", list(pool.metadata), if_match=pool.e_tag, client_request_id="m-2"
            )
        now = await env.client.get_pool("p")
        with pytest.raises(NotFound):
            await env.client.patch_pool_metadata("nope", [], if_match=None, client_request_id="m-3")
    assert pool.e_tag is not None and pool.metadata == (("owner", "render-team"),)
    assert patched.status == 200 and stale.value.status == 412
    assert now.metadata == (("owner", "render-team"), claim)
    assert now.e_tag != pool.e_tag and now.metadata_value("fleet-reimage.claim") == claim[1]
