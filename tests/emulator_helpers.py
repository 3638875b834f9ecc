"""Helpers for the emulator tests: test fleets and a raw, Shared-Key-signing HTTP client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import anyio
from yarl import URL

from fleet_reimage.batch.sharedkey import SigningVariant, decode_key, sign, string_to_sign
from fleet_reimage.emulator import FleetSpec, ManualClock, parse_fleet, running_emulator
from fleet_reimage.emulator.server import RunningEmulator

# An emulator test key (base64 of 32 fixed bytes), not a secret.
TEST_KEY = "ZmxlZXQtcmVpbWFnZSBlbXVsYXRvciB0ZXN0IGtleSE="
API_VERSION = "2024-07-01.20.0"
# The 409 code a node answers a reimage or reboot with, by its state (the service's table;
# any other state not idle/running: OperationInvalidForCurrentState).
BUSY_CODES = {
    "reimaging": "NodeBeingReimaged",
    "rebooting": "NodeBeingRebooted",
    "creating": "NodeBeingCreated",
    "starting": "NodeBeingStarted",
    "waitingforstarttask": "NodeBeingStarted",
    "unusable": "NodeStateUnusable",
}

BASE_FLEET = f"""
account: {{name: emu, key: "{TEST_KEY}", bearer_tokens: [tok1]}}
seed: 3
pools:
  - id: cs
    nodes: 30
    states: {{idle: 0.8, running: 0.2}}
    running_tasks: 2
  - id: vm
    nodes: 5
    reimage: refused
  - id: odd
    nodes: 3
    states: {{creating: 0.3333333333, unusable: 0.3333333333, starting: 0.3333333334}}
timings: {{reimaging: 2s, rebooting: 1s, starting: 1s}}
"""


def fleet(text: str = BASE_FLEET, name: str = "test.yaml") -> FleetSpec:
    return parse_fleet(text, name)


def with_faults(faults_yaml: str, extra: str = "") -> FleetSpec:
    """The base fleet plus a ``faults:`` block (and any other top-level text)."""
    return fleet(BASE_FLEET + faults_yaml + "\n" + extra)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def values(self) -> dict[str, str]:
        return {item["key"]: item["value"] for item in self.json().get("values", [])}


class SignedClient:
    """Sends requests signed like an SDK would (either variant), over a real session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        emu: RunningEmulator,
        *,
        variant: SigningVariant = SigningVariant.PYTHON,
        key: str | None = None,
        account: str | None = None,
    ) -> None:
        self.session = session
        self.emu = emu
        self.variant = variant
        self.key = key or emu.account_key
        self.account = account or emu.account_name

    def url(
        self,
        path: str,
        query: Mapping[str, str] | None = None,
        api_version: str | None = API_VERSION,
    ) -> str:
        params = dict(query or {})
        if api_version is not None:
            params = {"api-version": api_version, **params}
        encoded = urlencode(params, quote_via=quote, safe="$") if params else ""
        return f"{self.emu.url}{path}" + (f"?{encoded}" if encoded else "")

    def sign(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        headers = {"ocp-date": formatdate(time.time(), usegmt=True), **headers}
        target = URL(url, encoded=True)
        text = string_to_sign(method, target.raw_path_qs, headers, self.account, self.variant)
        headers["Authorization"] = f"SharedKey {self.account}:{sign(decode_key(self.key), text)}"
        return headers

    async def send(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        signed: bool = True,
        timeout: float = 10.0,
    ) -> Reply:
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json; odata=minimalmetadata")
            all_headers["Content-Length"] = str(len(body))
        elif method == "POST":
            # aiohttp would add "Content-Type: application/octet-stream" after we signed.
            all_headers.setdefault("Content-Type", "application/json; odata=minimalmetadata")
            all_headers["Content-Length"] = "0"
        if signed:
            all_headers = self.sign(method, url, all_headers)
        async with self.session.request(
            method,
            URL(url, encoded=True),
            data=body,
            headers=all_headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def get(self, path: str, query: Mapping[str, str] | None = None, **kwargs: Any) -> Reply:
        return await self.send("GET", self.url(path, query), **kwargs)

    async def post(
        self, path: str, body: Any = None, query: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Reply:
        raw = (
            json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        )
        return await self.send("POST", self.url(path, query), body=raw, **kwargs)


@asynccontextmanager
async def emulator_client(
    spec: FleetSpec | None = None,
    *,
    clock: ManualClock | None = None,
    variant: SigningVariant = SigningVariant.PYTHON,
    limit: float = 20.0,
) -> AsyncIterator[tuple[RunningEmulator, SignedClient]]:
    """A running emulator and a signing client; the whole block must finish within ``limit``."""
    with anyio.fail_after(limit):
        async with (
            running_emulator(spec or fleet(), clock=clock) as emu,
            aiohttp.ClientSession() as session,
        ):
            yield emu, SignedClient(session, emu, variant=variant)


def node_ids(emu: RunningEmulator, pool: str, state: str | None = None) -> list[str]:
    return [node.id for node in emu.state.pools[pool].nodes if state is None or node.state == state]


def node_stats(emu: RunningEmulator, pool: str, node_id: str) -> dict[str, Any]:
    for entry in emu.stats(pool)["nodes"]:
        if entry["id"] == node_id:
            return dict(entry)
    raise AssertionError(f"{pool}/{node_id} not in stats")
