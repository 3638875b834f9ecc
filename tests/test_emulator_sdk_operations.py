"""The official SDK (azure-batch 15.1) drives every node-maintenance operation against the
emulator over real TCP, at 2024-07-01.20.0 and at the SDK's own default (2025-06-01): the
SDK's models, pollers and error mapping are the oracle for the emulator's answers."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.batch.models._models import (
    BatchNodeDeallocateOptions,
    BatchNodeReimageOptions,
)
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from emulator_helpers import TEST_KEY, fleet, node_ids, node_stats

from fleet_reimage.emulator import running_emulator
from fleet_reimage.emulator.server import RunningEmulator

pytestmark = pytest.mark.anyio
SDK_DEFAULT = "2025-06-01"
VERSIONS = [pytest.param("2024-07-01.20.0", id="2024-07-01.20.0"), pytest.param(None, id="sdk")]
FLEET = fleet(f"""
account: {{name: emu, key: "{TEST_KEY}"}}
seed: 8
pools:
  - {{id: vm, nodes: 10, states: {{idle: 0.6, running: 0.4}}, running_tasks: 2}}
  - {{id: refused, nodes: 3, reimage: refused}}
timings: {{reimaging: 300ms, rebooting: 300ms, starting: 100ms, creating: 100ms,
          allocating: 200ms, leavingpool: 200ms, deallocating: 200ms}}
""")


@asynccontextmanager
async def sdk(version: str | None) -> AsyncIterator[tuple[RunningEmulator, BatchClient]]:
    with anyio.fail_after(30):
        async with running_emulator(FLEET) as emu:
            credential = AzureNamedKeyCredential(emu.account_name, emu.account_key)
            options = {} if version is None else {"api_version": version}
            async with BatchClient(emu.url, credential, **options) as client:
                yield emu, client
            versions = emu.stats(include_nodes=False)["requests"]["by_api_version"]
            assert set(versions) == {version or SDK_DEFAULT}


def code_of(error: HttpResponseError) -> str | None:
    return error.error.code if error.error is not None else None


@pytest.mark.parametrize("version", VERSIONS)
async def test_reimage_on_a_virtual_machine_pool_is_accepted_then_reimaging(
    version: str | None,
) -> None:
    async with sdk(version) as (emu, client):
        node_id = node_ids(emu, "vm", "running")[0]
        await client.begin_reimage_node(
            "vm",
            node_id,
            BatchNodeReimageOptions(node_reimage_option="requeue"),
            service_timeout=10,  # the SDK spells it timeOut at any version
        )
        node = await client.get_node("vm", node_id)
        assert (node.state, node.running_tasks_count) == ("reimaging", 0)
        assert node_stats(emu, "vm", node_id)["reimages"] == 1
        assert emu.stats("vm", include_nodes=False)["pools"]["vm"]["tasks"]["requeued"] == 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_reimage_on_a_refusing_pool_is_the_409_code(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        node_id = node_ids(emu, "refused")[0]
        with pytest.raises(ResourceExistsError) as refused:
            await client.begin_reimage_node(
                "refused", node_id, BatchNodeReimageOptions(node_reimage_option="taskcompletion")
            )
        assert refused.value.status_code == 409
        assert code_of(refused.value) == "OperationNotValidOnNode"
        assert (await client.get_node("refused", node_id)).state == "idle"


@pytest.mark.parametrize("version", VERSIONS)
async def test_deallocate_then_start(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        node_id = node_ids(emu, "vm", "idle")[0]
        poller = await client.begin_deallocate_node(
            "vm",
            node_id,
            BatchNodeDeallocateOptions(node_deallocate_option="terminate"),
            polling_interval=1,
        )
        await poller.result()
        assert (await client.get_node("vm", node_id)).state == "deallocated"
        poller = await client.begin_start_node("vm", node_id, polling_interval=1)
        await poller.result()
        node = await client.get_node("vm", node_id)
        assert node.state in ("waitingforstarttask", "idle")
        entry = node_stats(emu, "vm", node_id)
        assert (entry["deallocations"], entry["starts"]) == (1, 1)
        with pytest.raises(ResourceExistsError) as again:
            await client.begin_start_node("vm", node_id)
        assert code_of(again.value) == "OperationInvalidForCurrentState"


@pytest.mark.parametrize("version", VERSIONS)
async def test_remove_nodes(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        gone = node_ids(emu, "vm", "idle")[:2]
        poller = await client.begin_remove_nodes(
            "vm",
            models.BatchNodeRemoveOptions(
                node_ids=gone, resize_timeout=datetime.timedelta(minutes=5)
            ),
            polling_interval=1,
        )
        pool = await client.get_pool("vm")
        assert (pool.allocation_state, pool.target_dedicated_nodes) == ("resizing", 8)
        await poller.result()
        pool = await client.get_pool("vm")
        assert (pool.allocation_state, pool.current_dedicated_nodes) == ("steady", 8)
        with pytest.raises(ResourceNotFoundError):
            await client.get_node("vm", gone[0])
        assert emu.stats("vm", include_nodes=False)["pools"]["vm"]["nodes_removed"] == 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_resize_pool(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        poller = await client.begin_resize_pool(
            "vm", models.BatchPoolResizeOptions(target_dedicated_nodes=12), polling_interval=1
        )
        with pytest.raises(ResourceExistsError) as busy:
            await client.begin_resize_pool(
                "vm", models.BatchPoolResizeOptions(target_dedicated_nodes=1)
            )
        assert code_of(busy.value) == "PoolBeingResized"
        await poller.result()
        pool = await client.get_pool("vm")
        assert (pool.allocation_state, pool.current_dedicated_nodes) == ("steady", 12)
        nodes = [node async for node in client.list_nodes("vm")]
        new = [node for node in nodes if node.id not in node_ids(emu, "vm")[:10]]
        assert len(new) == 2 and all(node.id.startswith("tvmps_") for node in new)
        assert {node.state for node in new} <= {"creating", "starting", "idle"}


@pytest.mark.parametrize("version", VERSIONS)
async def test_disable_and_enable_scheduling(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        node_id = node_ids(emu, "vm", "running")[0]
        await client.disable_node_scheduling(
            "vm",
            node_id,
            models.BatchNodeDisableSchedulingOptions(
                node_disable_scheduling_option="taskcompletion"
            ),
        )
        node = await client.get_node("vm", node_id)
        assert (node.scheduling_state, node.state, node.running_tasks_count) == (
            "disabled",
            "running",
            2,
        )
        with pytest.raises(ResourceExistsError) as again:
            await client.disable_node_scheduling(
                "vm",
                node_id,
                models.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="requeue"),
            )
        assert code_of(again.value) == "NodeAlreadyInTargetSchedulingState"
        await client.enable_node_scheduling("vm", node_id)
        assert (await client.get_node("vm", node_id)).scheduling_state == "enabled"
        entry = node_stats(emu, "vm", node_id)
        assert (entry["scheduling_disables"], entry["scheduling_enables"]) == (1, 1)


@pytest.mark.parametrize("version", VERSIONS)
async def test_update_pool_metadata_with_an_etag(version: str | None) -> None:
    async with sdk(version) as (emu, client):
        pool = await client.get_pool("vm")
        claim = [models.BatchMetadataItem(name="fleet-reimage.claim", value="run-1")]
        await client.update_pool(
            "vm",
            models.BatchPoolUpdateOptions(metadata=claim),
            etag=pool.etag,
            match_condition=MatchConditions.IfNotModified,
        )
        after = await client.get_pool("vm")
        assert [(item.name, item.value) for item in after.metadata or []] == [
            ("fleet-reimage.claim", "run-1")
        ]
        assert after.etag != pool.etag and after.last_modified > pool.last_modified
        with pytest.raises(HttpResponseError) as stale:
            await client.update_pool(
                "vm",
                models.BatchPoolUpdateOptions(metadata=[]),
                etag=pool.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        assert stale.value.status_code == 412
        assert (await client.get_pool("vm")).etag == after.etag
        assert emu.stats(include_nodes=False)["requests"]["by_operation"]["patch_pool"] == 2
