"""The emulator over real TCP: headers, bodies, paging, errors, authentication, stats."""

from __future__ import annotations

import re
import time
import uuid
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from emulator_helpers import (
    API_VERSION,
    TEST_KEY,
    Reply,
    SignedClient,
    emulator_client,
    fleet,
    node_ids,
    node_stats,
)

from fleet_reimage.batch.sharedkey import SigningVariant
from fleet_reimage.emulator import ManualClock, create_app
from fleet_reimage.emulator.timefmt import iso, ticks_from_seconds

pytestmark = pytest.mark.anyio
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z")
ERROR_METADATA = "/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
NODE_KEYS = [
    "id",
    "url",
    "state",
    "schedulingState",
    "stateTransitionTime",
    "lastBootTime",
    "allocationTime",
    "ipAddress",
    "affinityId",
    "vmSize",
    "totalTasksRun",
    "totalTasksSucceeded",
    "runningTasksCount",
    "runningTaskSlotsCount",
    "isDedicated",
    "startTask",
    "startTaskInfo",
    "nodeAgentInfo",
    "virtualMachineInfo",
]


def assert_batch_error(reply: Reply, status: int, code: str) -> dict[str, str]:
    """The reply is the service's error body for ``code``; returns its values."""
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json; odata=minimalmetadata"
    assert reply.headers["DataServiceVersion"] == "3.0"
    body = reply.json()
    assert body["odata.metadata"].endswith(ERROR_METADATA)
    assert body["code"] == code
    assert body["message"]["lang"] == "en-US"
    text, request_line, time_line = body["message"]["value"].rsplit("\n", 2)
    assert text
    assert request_line == f"RequestId:{reply.headers['request-id']}"
    assert re.fullmatch(r"Time:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", time_line)
    return reply.values()


async def test_reimage_is_exactly_202_with_the_service_headers() -> None:
    async with emulator_client() as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        client_id = str(uuid.uuid4())
        path = f"/pools/cs/nodes/{node_id}/reimage"
        reply = await client.post(
            path,
            {"nodeReimageOption": "terminate"},
            headers={"client-request-id": client_id, "return-client-request-id": "true"},
        )
        assert (reply.status, reply.body) == (202, b"")
        uuid.UUID(reply.headers["request-id"])
        assert reply.headers["DataServiceId"] == f"{emu.url}{path}"
        assert reply.headers["DataServiceVersion"] == "3.0"
        assert reply.headers["client-request-id"] == client_id
        assert emu.state.pools["cs"].by_id[node_id].state == "reimaging"
        assert node_stats(emu, "cs", node_id)["reimages"] == 1
        # Without return-client-request-id the id is not echoed.
        other = node_ids(emu, "cs", "idle")[0]
        reply = await client.post(
            f"/pools/cs/nodes/{other}/reboot", headers={"client-request-id": client_id}
        )
        assert reply.status == 202 and "client-request-id" not in reply.headers


async def test_every_reimage_option_and_both_timeout_spellings() -> None:
    async with emulator_client() as (emu, client):
        idle = node_ids(emu, "cs", "idle")
        options = ("requeue", "terminate", "taskcompletion", "retaineddata")
        for node_id, option in zip(idle, options, strict=False):
            reply = await client.post(
                f"/pools/cs/nodes/{node_id}/reimage",
                {"nodeReimageOption": option},
                {"timeout": "30"},
            )
            assert reply.status == 202
        reply = await client.post(
            f"/pools/cs/nodes/{idle[4]}/reboot", {"nodeRebootOption": "requeue"}, {"timeOut": "45"}
        )
        assert reply.status == 202
        reply = await client.post(f"/pools/cs/nodes/{idle[5]}/reboot", None, {"timeout": "soon"})
        assert (
            assert_batch_error(reply, 400, "InvalidQueryParameterValue")["QueryParameterName"]
            == "timeout"
        )


@pytest.mark.parametrize("body", [b"{not json", b"[1]", b'{"nodeReimageOption": "gently"}'])
async def test_bad_bodies_are_invalid_request_body(body: bytes) -> None:
    async with emulator_client() as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        reply = await client.post(f"/pools/cs/nodes/{node_id}/reimage", body)
        assert_batch_error(reply, 400, "InvalidRequestBody")
        assert emu.state.pools["cs"].by_id[node_id].state == "idle"


async def test_conflicts_and_not_found_over_http() -> None:
    async with emulator_client() as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        assert (await client.post(f"/pools/cs/nodes/{node_id}/reimage")).status == 202
        reply = await client.post(f"/pools/cs/nodes/{node_id}/reimage")
        assert_batch_error(reply, 409, "NodeBeingReimaged")
        creating = node_ids(emu, "odd", "creating")[0]
        assert_batch_error(
            await client.post(f"/pools/odd/nodes/{creating}/reboot"), 409, "NodeBeingCreated"
        )
        vm_node = node_ids(emu, "vm")[0]
        values = assert_batch_error(
            await client.post(f"/pools/vm/nodes/{vm_node}/reimage"), 409, "OperationNotValidOnNode"
        )
        assert values == {
            "Reason": "Operation reimage can be invoked only on pools created "
            "with cloudServiceConfiguration"
        }
        assert (await client.post(f"/pools/vm/nodes/{vm_node}/reboot")).status == 202
        assert_batch_error(await client.get("/pools/nope/nodes/x"), 404, "PoolNotFound")
        assert_batch_error(await client.post("/pools/cs/nodes/x/reimage"), 404, "NodeNotFound")
        assert_batch_error(await client.get("/pools/nope"), 404, "PoolNotFound")
        assert_batch_error(await client.get("/jobs"), 404, "ResourceNotFound")
        assert_batch_error(
            await client.send("DELETE", client.url(f"/pools/cs/nodes/{node_id}")),
            405,
            "UnsupportedHttpVerb",
        )


async def test_get_node_and_pool_shapes() -> None:
    async with emulator_client() as (emu, client):
        node_id = node_ids(emu, "cs", "running")[0]
        reply = await client.get(f"/pools/cs/nodes/{node_id}")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json; odata=minimalmetadata"
        body = reply.json()
        assert body.pop("odata.metadata") == f"{emu.url}/$metadata#nodes/@Element"
        assert list(body) == NODE_KEYS
        assert body["url"] == f"{emu.url}/pools/cs/nodes/{node_id}"
        assert (body["state"], body["runningTasksCount"], body["affinityId"]) == (
            "running",
            2,
            f"TVM:{node_id}",
        )
        for key in ("stateTransitionTime", "lastBootTime", "allocationTime"):
            assert ISO_TIME.fullmatch(body[key]), body[key]
        creating = node_ids(emu, "odd", "creating")[0]
        body = (await client.get(f"/pools/odd/nodes/{creating}")).json()
        assert "lastBootTime" not in body and body["state"] == "creating"
        body = (await client.get(f"/pools/cs/nodes/{node_id}", {"$select": "id,state"})).json()
        assert body == {
            "odata.metadata": f"{emu.url}/$metadata#nodes/@Element",
            "id": node_id,
            "state": "running",
        }
        pool = (await client.get("/pools/cs")).json()
        assert pool["odata.metadata"] == f"{emu.url}/$metadata#pools/@Element"
        assert pool["virtualMachineConfiguration"]["nodeAgentSKUId"] == "batch.node.ubuntu 20.04"
        assert "cloudServiceConfiguration" not in pool  # not in this api-version's schema
        assert (pool["currentDedicatedNodes"], pool["state"], pool["vmSize"]) == (
            30,
            "active",
            "standard_d2_v3",
        )
        pools = (await client.get("/pools")).json()
        assert pools["odata.metadata"] == f"{emu.url}/$metadata#pools"
        assert [p["id"] for p in pools["value"]] == ["cs", "vm", "odd"]
        assert "odata.nextLink" not in pools


async def test_paging_follows_absolute_next_links_that_keep_the_query() -> None:
    async with emulator_client() as (emu, client):
        query = {
            "$filter": "state eq 'idle' or state eq 'running'",
            "$select": "id,state",
            "maxresults": "7",
        }
        url = client.url("/pools/cs/nodes", query)
        seen: list[str] = []
        pages = 0
        while url:
            reply = await client.send("GET", url)
            assert reply.status == 200
            body = reply.json()
            assert body["odata.metadata"] == f"{emu.url}/$metadata#nodes"
            assert len(body["value"]) <= 7
            assert all(set(item) == {"id", "state"} for item in body["value"])
            seen += [item["id"] for item in body["value"]]
            pages += 1
            url = body.get("odata.nextLink")
            if url:
                assert url.startswith(f"{emu.url}/pools/cs/nodes?")
                carried = parse_qs(urlsplit(url).query)
                assert carried["$filter"] == [query["$filter"]]
                assert carried["$select"] == ["id,state"]
                assert carried["maxresults"] == ["7"]
                assert carried["api-version"] == [API_VERSION]
                assert "$skiptoken" in carried
        assert seen == node_ids(emu, "cs") and pages == 5  # 30 nodes, 7 a page
        only_running = (
            await client.get(
                "/pools/cs/nodes", {"$filter": "state eq 'running'", "maxresults": "6"}
            )
        ).json()
        assert len(only_running["value"]) == 6 and "odata.nextLink" not in only_running


@pytest.mark.parametrize("value", ["0", "1001", "-3", "many"])
async def test_maxresults_out_of_bounds(value: str) -> None:
    async with emulator_client() as (_, client):
        values = assert_batch_error(
            await client.get("/pools/cs/nodes", {"maxresults": value}),
            400,
            "InvalidQueryParameterValue",
        )
        assert values["QueryParameterName"] == "maxresults"
        assert values["QueryParameterValue"] == value


async def test_maxresults_bounds_accepted_and_bad_filter_rejected() -> None:
    async with emulator_client() as (_, client):
        assert len((await client.get("/pools/cs/nodes", {"maxresults": "1"})).json()["value"]) == 1
        assert (
            len((await client.get("/pools/cs/nodes", {"maxresults": "1000"})).json()["value"]) == 30
        )
        values = assert_batch_error(
            await client.get("/pools/cs/nodes", {"$filter": "state eq 'deleted'"}),
            400,
            "InvalidQueryParameterValue",
        )
        assert values == {
            "QueryParameterName": "$filter",
            "QueryParameterValue": "state eq 'deleted'",
            "Reason": "invalid state 'deleted'",
        }


async def test_api_version_required_and_checked() -> None:
    async with emulator_client() as (_, client):
        reply = await client.send("GET", client.url("/pools", api_version=None))
        values = assert_batch_error(reply, 400, "MissingRequiredQueryParameter")
        assert values == {"QueryParameterName": "api-version"}
        reply = await client.send("GET", client.url("/pools", api_version="2019-01-01.8.0"))
        assert_batch_error(reply, 400, "UnsupportedRequestVersion")
        for version in ("2023-05-01.17.0", "2024-02-01.19.0", "2025-01-01", "2025-06-01.20.0"):
            reply = await client.send("GET", client.url("/pools", api_version=version))
            values = assert_batch_error(reply, 400, "UnsupportedRequestVersion")
            assert values["QueryParameterValue"] == version
        for version in ("2024-07-01.20.0", "2025-06-01"):
            assert (
                await client.send("GET", client.url("/pools", api_version=version))
            ).status == 200


@pytest.mark.parametrize("variant", list(SigningVariant))
async def test_shared_key_both_signing_variants(variant: SigningVariant) -> None:
    async with emulator_client(variant=variant) as (emu, client):
        assert (
            await client.get("/pools/cs/nodes", {"timeOut": "30", "maxresults": "2"})
        ).status == 200
        node_id = node_ids(emu, "cs", "idle")[0]
        assert (await client.post(f"/pools/cs/nodes/{node_id}/reimage")).status == 202
        other = node_ids(emu, "cs", "idle")[0]
        assert (
            await client.post(f"/pools/cs/nodes/{other}/reboot", {"nodeRebootOption": "terminate"})
        ).status == 202


async def test_shared_key_failures_are_403_without_the_key() -> None:
    async with emulator_client() as (emu, client):
        wrong = SignedClient(client.session, emu, key="AAAA" + TEST_KEY[4:])
        reply = await wrong.get("/pools")
        values = assert_batch_error(reply, 403, "AuthenticationFailed")
        assert "MAC signature" in values["AuthenticationErrorDetail"]
        assert TEST_KEY.encode() not in reply.body
        other_account = SignedClient(client.session, emu, account="someoneelse")
        assert_batch_error(await other_account.get("/pools"), 403, "AuthenticationFailed")
        assert_batch_error(await client.get("/pools", signed=False), 403, "AuthenticationFailed")
        node_id = node_ids(emu, "cs", "idle")[0]
        assert_batch_error(
            await wrong.post(f"/pools/cs/nodes/{node_id}/reimage"), 403, "AuthenticationFailed"
        )
        assert node_stats(emu, "cs", node_id)["reimages"] == 0


async def test_request_date_more_than_15_minutes_off_is_refused() -> None:
    async with emulator_client() as (_, client):
        for offset, status in ((-20 * 60, 403), (20 * 60, 403), (-10 * 60, 200)):
            date = formatdate(time.time() + offset, usegmt=True)
            reply = await client.get("/pools", headers={"ocp-date": date})
            assert reply.status == status, offset
        values = assert_batch_error(
            await client.get(
                "/pools", headers={"ocp-date": formatdate(time.time() - 1200, usegmt=True)}
            ),
            403,
            "AuthenticationFailed",
        )
        assert "too old" in values["AuthenticationErrorDetail"]


async def test_bearer_tokens_and_changing_the_accepted_set() -> None:
    async with emulator_client() as (emu, client):

        async def with_token(token: str) -> Reply:
            return await client.get(
                "/pools", headers={"Authorization": f"Bearer {token}"}, signed=False
            )

        assert (await with_token("tok1")).status == 200
        reply = await with_token("tok2")
        assert_batch_error(reply, 401, "AuthenticationFailed")
        assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
        emu.state.accepted_tokens.discard("tok1")  # tok1 "expires"
        emu.state.accepted_tokens.add("tok2")
        assert (await with_token("tok1")).status == 401
        assert (await with_token("tok2")).status == 200


async def test_stats_endpoint() -> None:
    async with emulator_client() as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        await client.post(f"/pools/cs/nodes/{node_id}/reimage")
        await client.post(f"/pools/cs/nodes/{node_id}/reimage")
        await client.send("GET", client.url("/pools", api_version=None))
        async with client.session.get(f"{emu.url}/_emulator/stats") as response:
            assert response.status == 200
            assert response.headers["DataServiceVersion"] == "3.0"
            uuid.UUID(response.headers["request-id"])
            stats = await response.json()
        assert stats == emu.stats()
        pool = stats["pools"]["cs"]
        assert (pool["peak_unavailable"], pool["current_unavailable"], pool["nodes"]) == (1, 1, 30)
        assert pool["states"] == {"idle": 23, "running": 6, "reimaging": 1}
        assert (pool["ready"], pool["min_ready"], pool["allocation_state"]) == (29, 29, "steady")
        entry = next(item for item in stats["nodes"] if item["id"] == node_id)
        assert (entry["pool"], entry["state"], entry["reimages"], entry["reboots"]) == (
            "cs",
            "reimaging",
            1,
            0,
        )
        assert len(stats["nodes"]) == 38
        assert stats["requests"] == {
            "total": 3,
            "by_operation": {"reimage": 2, "list_pools": 1},
            "by_status": {"202": 1, "409": 1, "400": 1},
            "by_api_version": {"2024-07-01.20.0": 2},
            "faults": {},
            "rate_limited": 0,
            "mutating": 2,
        }
        async with client.session.get(f"{emu.url}/_emulator/stats?pool=vm&nodes=false") as r:
            only_vm = await r.json()
        assert set(only_vm) == {"pools", "requests"} and set(only_vm["pools"]) == {"vm"}
        async with client.session.get(f"{emu.url}/_emulator/stats?pool=nope") as r:
            assert r.status == 404


async def test_stats_refused_to_non_loopback_peers() -> None:
    app = create_app(fleet())
    resource = next(r for r in app.router.resources() if r.canonical == "/_emulator/stats")
    handler = next(iter(resource)).handler
    request = make_mocked_request("GET", "/_emulator/stats", app=app).clone(remote="10.1.2.3")
    response = await handler(request)
    assert response.status == 403
    local = make_mocked_request("GET", "/_emulator/stats", app=app).clone(remote="::1")
    assert (await handler(local)).status == 200


async def test_manual_clock_drives_the_http_view() -> None:
    clock = ManualClock(wall_start=time.time())
    async with emulator_client(clock=clock) as (emu, client):
        node_id = node_ids(emu, "cs", "idle")[0]
        before = (await client.get(f"/pools/cs/nodes/{node_id}")).json()["lastBootTime"]
        sent = iso(ticks_from_seconds(clock.wall()))
        await client.post(f"/pools/cs/nodes/{node_id}/reimage")
        clock.advance(2.5)
        body = (await client.get(f"/pools/cs/nodes/{node_id}")).json()
        assert body["state"] == "starting" and body["lastBootTime"] > before
        clock.advance(1)
        assert (await client.get(f"/pools/cs/nodes/{node_id}")).json()["state"] == "idle"
        flt = {"$filter": f"lastBootTime gt '{sent}' and state eq 'idle'"}
        listed = (await client.get("/pools/cs/nodes", flt)).json()["value"]
        assert [item["id"] for item in listed] == [node_id]


async def test_keep_alive_session_handles_many_requests() -> None:
    async with emulator_client() as (emu, client):
        connector_session = client.session
        assert isinstance(connector_session, aiohttp.ClientSession)
        replies = [await client.get("/pools/cs") for _ in range(50)]
        assert {reply.status for reply in replies} == {200}
        assert len({reply.headers["request-id"] for reply in replies}) == 50
        assert emu.stats(include_nodes=False)["requests"]["by_operation"]["get_pool"] == 50
