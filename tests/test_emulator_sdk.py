"""The official azure-batch SDK, used as an oracle: it must not tell the emulator from Batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.batch.models._models import BatchNodeRebootOptions, BatchNodeReimageOptions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from emulator_helpers import TEST_KEY, fleet, node_ids, node_stats

from fleet_reimage.emulator import running_emulator
from fleet_reimage.emulator.server import RunningEmulator

pytestmark = pytest.mark.anyio
API_VERSION = "2024-07-01.20.0"
FLEET = fleet(f"""
account: {{name: emu, key: "{TEST_KEY}"}}
seed: 4
pools:
  - {{id: cs, nodes: 25, states: {{idle: 0.6, running: 0.4}}}}
  - {{id: vm, nodes: 3, reimage: refused}}
timings: {{reimaging: 300ms, rebooting: 300ms, starting: 100ms}}
""")


def code_of(error: HttpResponseError) -> str | None:
    return error.error.code if error.error is not None else None


@asynccontextmanager
async def sdk(key: str | None = None) -> AsyncIterator[tuple[RunningEmulator, BatchClient]]:
    with anyio.fail_after(30):
        async with running_emulator(FLEET) as emu:
            credential = AzureNamedKeyCredential(emu.account_name, key or emu.account_key)
            async with BatchClient(emu.url, credential, api_version=API_VERSION) as client:
                yield emu, client


async def test_list_pools_and_get_node() -> None:
    async with sdk() as (emu, client):
        pools = [pool async for pool in client.list_pools()]
        assert [pool.id for pool in pools] == ["cs", "vm"]
        assert pools[0].current_dedicated_nodes == 25
        assert pools[1].virtual_machine_configuration is not None
        node_id = node_ids(emu, "cs", "running")[0]
        node = await client.get_node("cs", node_id)
        assert (node.id, node.state, node.running_tasks_count) == (node_id, "running", 1)
        assert node.last_boot_time is not None and node.last_boot_time.tzinfo is not None
        assert node.url == f"{emu.url}/pools/cs/nodes/{node_id}"


async def test_list_nodes_with_filter_select_and_paging() -> None:
    async with sdk() as (emu, client):
        nodes = [
            node
            async for node in client.list_nodes(
                "cs", filter="state eq 'idle'", select=["id", "state"], max_results=4
            )
        ]
        assert [node.id for node in nodes] == node_ids(emu, "cs", "idle")
        assert len(nodes) == 15 and all(node.state == "idle" for node in nodes)
        assert all(node.vm_size is None for node in nodes)  # not selected, so not sent
        requests = emu.stats(include_nodes=False)["requests"]["by_operation"]["list_nodes"]
        assert requests == 4  # 15 nodes, 4 a page: the SDK followed three next links


async def test_reimage_counts_once_and_the_poller_completes() -> None:
    async with sdk() as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        poller = await client.begin_reimage_node(
            "cs",
            node_id,
            BatchNodeReimageOptions(node_reimage_option="requeue"),
            polling_interval=1,
        )
        assert node_stats(emu, "cs", node_id)["reimages"] == 1
        await poller.result()
        assert (await client.get_node("cs", node_id)).state in ("starting", "idle")
        other = node_ids(emu, "vm")[0]
        poller = await client.begin_reboot_node(
            "vm", other, BatchNodeRebootOptions(node_reboot_kind="terminate"), polling_interval=1
        )
        assert node_stats(emu, "vm", other)["reboots"] == 1
        stats = emu.stats(include_nodes=False)["requests"]
        assert stats["by_status"]["202"] == 2 and stats["mutating"] == 2


async def test_errors_raise_the_sdk_exceptions_with_codes() -> None:
    async with sdk() as (emu, client):
        with pytest.raises(ResourceNotFoundError) as missing:
            await client.get_node("cs", "no-such-node")
        assert missing.value.status_code == 404 and code_of(missing.value) == "NodeNotFound"
        with pytest.raises(ResourceNotFoundError) as missing_pool:
            await client.get_pool("no-such-pool")
        assert code_of(missing_pool.value) == "PoolNotFound"
        node_id = node_ids(emu, "cs", "idle")[0]
        options = BatchNodeReimageOptions(node_reimage_option="terminate")
        await client.begin_reimage_node("cs", node_id, options)
        with pytest.raises(ResourceExistsError) as conflict:
            await client.begin_reimage_node("cs", node_id, options)
        assert conflict.value.status_code == 409
        assert code_of(conflict.value) == "NodeBeingReimaged"
        with pytest.raises(ResourceExistsError) as not_valid:
            await client.begin_reimage_node("vm", node_ids(emu, "vm")[0], options)
        assert code_of(not_valid.value) == "OperationNotValidOnNode"
        assert "cloudServiceConfiguration" in str(not_valid.value)
        assert node_stats(emu, "cs", node_id)["reimages"] == 1


async def test_a_wrong_key_is_a_403_http_response_error() -> None:
    async with sdk(key="AAAA" + TEST_KEY[4:]) as (emu, client):
        with pytest.raises(HttpResponseError) as refused:
            [pool async for pool in client.list_pools()]
        error = refused.value
        assert not isinstance(error, (ResourceNotFoundError, ResourceExistsError))
        assert error.status_code == 403 and code_of(error) == "AuthenticationFailed"
        assert emu.account_key not in str(error)
