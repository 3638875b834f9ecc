"""Every answer the emulator gives, for every operation it serves, checked strictly against
the official spec (schemas, declared statuses and headers; see ``conformance.py``).

One scenario drives each operation through its successes and its errors over real TCP, on
a manual clock (no waiting), and every answer is checked. It runs at both api-versions:
2025-06-01 changes no shape the emulator sends (``test_sdk_models_know_every_property``
checks that against the official SDK's models of that version).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from conformance import Conformance
from emulator_helpers import TEST_KEY, Reply, SignedClient, emulator_client, fleet, node_ids
from specfixture import OPERATIONS, load_fixture

from fleet_reimage.emulator import ManualClock

pytestmark = pytest.mark.anyio
VERSIONS = ("2024-07-01.20.0", "2025-06-01")
FLEET = f"""
account: {{name: emu, key: "{TEST_KEY}"}}
seed: 5
pools:
  - id: main
    nodes: 12
    states: {{idle: 0.5, running: 0.5}}
    running_tasks: 2
    task_duration: 1h
    metadata: {{owner: render}}
  - id: refused
    nodes: 3
    reimage: refused
  - id: scaled
    nodes: 2
    auto_scale: {{target_dedicated: 3, interval: 10s}}
  - id: capped
    nodes: 1
    core_quota: {{dedicated: 4}}
  - id: odd
    nodes: 4
    states: {{creating: 0.25, starting: 0.25, waitingforstarttask: 0.25, unusable: 0.25}}
timings: {{reimaging: 2s, rebooting: 2s, starting: 1s, waitingforstarttask: 1s, creating: 1s,
          allocating: 1s, leavingpool: 1s, deallocating: 1s, stopping: 1s}}
outcomes: {{starttaskfailed: 0.5}}
"""


@dataclass
class Recorder:
    """Sends requests as a client would and checks every answer as it comes."""

    client: SignedClient
    checker: Conformance
    version: str
    findings: list[str] = field(default_factory=list)
    seen: dict[str, set[int]] = field(default_factory=dict)
    calls: int = 0

    async def call(
        self,
        operation_id: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        method = self.checker.operation(operation_id)["method"]
        ask = {"client-request-id": str(uuid.uuid4()), "return-client-request-id": "true"}
        raw = None if body is None else json.dumps(body).encode()
        url = self.client.url(path, query, api_version=self.version)
        reply = await self.client.send(method, url, body=raw, headers={**ask, **(headers or {})})
        self.findings += self.checker.findings(
            operation_id, reply.status, reply.headers, reply.body, asked_for_client_id=True
        )
        if (
            reply.status < 300
            and reply.headers.get("client-request-id") != ask["client-request-id"]
        ):
            self.findings.append(f"{operation_id}: client-request-id not echoed")
        self.seen.setdefault(operation_id, set()).add(reply.status)
        self.calls += 1
        return reply


async def _node_operations(rec: Recorder, ids: list[str], clock: ManualClock) -> None:
    idle, running = ids[0], ids[1]
    node = f"/pools/main/nodes/{idle}"
    await rec.call("ComputeNode_Get", node)
    await rec.call("ComputeNode_Get", f"/pools/main/nodes/{running}", query={"$select": "id,state"})
    await rec.call("ComputeNode_Get", "/pools/main/nodes/nope")
    await rec.call("ComputeNode_List", "/pools/main/nodes", query={"maxresults": "5"})
    await rec.call("ComputeNode_List", "/pools/odd/nodes")
    await rec.call("ComputeNode_List", "/pools/main/nodes", query={"$filter": "state eq 'x'"})
    await rec.call("ComputeNode_List", "/pools/nope/nodes")
    await rec.call("ComputeNode_Reimage", f"{node}/reimage", {"nodeReimageOption": "requeue"})
    await rec.call("ComputeNode_Reimage", f"{node}/reimage")  # 409 NodeBeingReimaged
    await rec.call("ComputeNode_Reboot", f"{node}/reboot")  # 409 NodeBeingReimaged
    await rec.call("ComputeNode_Reimage", f"/pools/refused/nodes/{ids[-1]}/reimage")
    await rec.call(
        "ComputeNode_Reimage", f"/pools/main/nodes/{running}/reimage", {"nodeReimageOption": "x"}
    )
    shown = set()
    for _ in range(4):  # reimaging, starting, waitingforstarttask, then the outcome
        clock.advance(1.0)
        shown.add((await rec.call("ComputeNode_Get", node)).json()["state"])
    assert {"starting", "waitingforstarttask"} <= shown
    await rec.call("ComputeNode_Reboot", f"/pools/main/nodes/{running}/reboot", {})
    third = f"/pools/main/nodes/{ids[2]}"
    await rec.call("ComputeNode_DisableScheduling", f"{third}/disablescheduling")
    await rec.call("ComputeNode_DisableScheduling", f"{third}/disablescheduling")  # 409
    await rec.call("ComputeNode_EnableScheduling", f"{third}/enablescheduling")
    await rec.call("ComputeNode_EnableScheduling", f"{third}/enablescheduling")  # 409
    await rec.call("ComputeNode_Start", f"{third}/start")  # 409: not deallocated
    await rec.call(
        "ComputeNode_Deallocate", f"{third}/deallocate", {"nodeDeallocateOption": "terminate"}
    )
    await rec.call("ComputeNode_Deallocate", f"{third}/deallocate")  # 409
    clock.advance(1.0)
    await rec.call("ComputeNode_Get", third)
    await rec.call("ComputeNode_Start", f"{third}/start")
    await rec.call("ComputeNode_Get", third)


async def _pool_operations(rec: Recorder, ids: list[str], clock: ManualClock) -> None:
    await rec.call("Pool_List", "/pools")
    await rec.call("Pool_List", "/pools", query={"maxresults": "2", "$select": "id,eTag"})
    await rec.call("Pool_List", "/pools", query={"$filter": "nope eq 'x'"})
    got = await rec.call("Pool_Get", "/pools/main")
    etag = got.json()["eTag"]
    assert got.json()["metadata"] == [{"name": "owner", "value": "render"}]
    await rec.call("Pool_Get", "/pools/main", headers={"If-None-Match": etag})  # 304
    await rec.call("Pool_Get", "/pools/nope")
    await rec.call("Pool_Patch", "/pools/main", {"metadata": [{"name": "k", "value": "v"}]},
                   headers={"If-Match": etag})  # fmt: skip
    await rec.call("Pool_Patch", "/pools/main", {"metadata": []}, headers={"If-Match": etag})
    await rec.call("Pool_Patch", "/pools/main", {"metadata": "no"})
    await rec.call(
        "Pool_Resize", "/pools/capped/resize", {"targetDedicatedNodes": 5}
    )  # quota: 2 max
    await rec.call(
        "Pool_Resize", "/pools/capped/resize", {"targetDedicatedNodes": 1}
    )  # 409 resizing
    await rec.call("Pool_Get", "/pools/capped")
    await rec.call("Pool_RemoveNodes", "/pools/capped/removenodes", {"nodeList": [ids[0]]})  # 409
    clock.advance(1.0)
    capped = await rec.call("Pool_Get", "/pools/capped")  # steady, with resizeErrors
    assert [error["code"] for error in capped.json()["resizeErrors"]] == ["AccountCoreQuotaReached"]
    await rec.call(
        "Pool_Resize", "/pools/scaled/resize", {"targetDedicatedNodes": 1}
    )  # 409 autoscale
    await rec.call("Pool_Resize", "/pools/main/resize", {"resizeTimeout": "PT1M"})  # 400
    await rec.call("Pool_StopResize", "/pools/main/stopresize")  # 409 not resizing
    await rec.call("Pool_Resize", "/pools/main/resize", {"targetDedicatedNodes": 20})
    await rec.call("Pool_StopResize", "/pools/main/stopresize")
    await rec.call("Pool_Get", "/pools/main")  # stopping
    clock.advance(1.0)
    await rec.call("Pool_Get", "/pools/main")
    await rec.call("Pool_RemoveNodes", "/pools/main/removenodes", {"nodeList": ["nope"]})  # 404
    await rec.call(
        "Pool_RemoveNodes", "/pools/main/removenodes", {"nodeList": [f"n{i}" for i in range(101)]}
    )
    await rec.call("Pool_RemoveNodes", "/pools/main/removenodes",
                   {"nodeList": ids[4:6], "nodeDeallocationOption": "taskcompletion",
                    "resizeTimeout": "PT10M"})  # fmt: skip
    await rec.call("Pool_Get", "/pools/main")
    await rec.call("ComputeNode_Get", f"/pools/main/nodes/{ids[4]}")
    clock.advance(10.0)  # the auto-scale pool evaluates and grows
    scaled = await rec.call("Pool_Get", "/pools/scaled")
    body = scaled.json()
    assert "autoScaleRun" in body and body["currentDedicatedNodes"] == 3
    await rec.call("ComputeNode_List", "/pools/scaled/nodes")
    clock.advance(3.0)
    await rec.call("Pool_List", "/pools")


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_answer_conforms_to_the_spec(version: str) -> None:
    clock = ManualClock()
    checker = Conformance(load_fixture())
    async with emulator_client(fleet(FLEET), clock=clock) as (emu, client):
        rec = Recorder(client, checker, version)
        ids = node_ids(emu, "main")
        ids.sort(key=lambda node_id: emu.state.pools["main"].by_id[node_id].state)
        await _node_operations(rec, ids, clock)
        await _pool_operations(rec, ids, clock)
        assert emu.stats(include_nodes=False)["requests"]["by_api_version"] == {version: rec.calls}
    assert rec.findings == []
    # Every operation answered at least one success and one error.
    assert set(rec.seen) == set(OPERATIONS)
    for operation, statuses in rec.seen.items():
        assert any(s < 300 for s in statuses) and any(s >= 400 for s in statuses), operation


async def test_the_checker_finds_what_the_spec_does_not_allow() -> None:
    """The oracle itself: real answers, altered the ways a careless emulator would."""
    checker = Conformance(load_fixture())
    async with emulator_client(fleet(FLEET)) as (emu, client):
        reply = await client.get("/pools/main")
        node_id = node_ids(emu, "main", "idle")[0]
        accepted = await client.post(f"/pools/main/nodes/{node_id}/reimage")
    assert (
        checker.findings("Pool_Get", 200, reply.headers, reply.body, asked_for_client_id=False)
        == []
    )
    pool = reply.json()
    pool["cloudServiceConfiguration"] = {"osFamily": "6"}
    pool["targetDedicatedNodes"] = "3"
    pool["resizeTimeout"] = "15 minutes"
    found = checker.findings(
        "Pool_Get", 200, reply.headers, json.dumps(pool).encode(), asked_for_client_id=False
    )
    assert any("cloudServiceConfiguration" in item for item in found)
    assert any("targetDedicatedNodes" in item for item in found)
    assert any("resizeTimeout" in item for item in found)
    without_etag = {k: v for k, v in reply.headers.items() if k.lower() != "etag"}
    assert checker.findings(
        "Pool_Get", 200, without_etag, reply.body, asked_for_client_id=False
    ) == ["Pool_Get 200: declared header etag missing"]
    assert checker.findings(
        "ComputeNode_Reimage", 200, accepted.headers, b"", asked_for_client_id=False
    ) == ["ComputeNode_Reimage 200: status not declared (declared: 202, default)"]
    assert checker.findings(
        "ComputeNode_Reimage",
        202,
        {**accepted.headers, "x-extra": "1"},
        b"{}",
        asked_for_client_id=False,
    ) == [
        "ComputeNode_Reimage 202: undeclared header x-extra",
        "ComputeNode_Reimage 202: a body where none is declared: b'{}'",
    ]
    assert checker.findings(
        "ComputeNode_Reimage", 202, accepted.headers, b"", asked_for_client_id=True
    ) == ["ComputeNode_Reimage 202: declared header client-request-id missing"]
