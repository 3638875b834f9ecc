"""The scripts fleet-reimage is compared with, as an operator would write them.

    python bench/contenders.py aiohttp URL [--concurrency 64]
    python bench/contenders.py sdk URL [--concurrency 64]

Each lists every pool and its nodes (``$select=id``, following next links), then fires one
reimage POST per node with at most ``concurrency`` in flight (an asyncio semaphore), and
prints one JSON line: nodes listed, accepted (202), failed, and its own phase times. Neither
keeps a journal, retries, or waits for anything after the POST: this is the practical limit
of a client, not something to run in production.

- ``aiohttp``: plain aiohttp, Shared Key signed with fleet-reimage's ``SharedKeySigner``.
- ``sdk``: the official ``azure-batch`` 15.1.0 async SDK (``begin_reimage_node`` returns
  its poller after the initial POST; the poller is not awaited).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ACCOUNT, API_VERSION, KEY

BODY = b'{"nodeReimageOption":"requeue"}'
CONTENT_TYPE = "application/json; odata=minimalmetadata"


async def plain_aiohttp(url: str, concurrency: int) -> dict[str, Any]:
    import aiohttp
    from yarl import URL

    from fleet_reimage.batch.sharedkey import SharedKeySigner, decode_key

    signer = SharedKeySigner(ACCOUNT, decode_key(KEY))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(
        connector=connector, skip_auto_headers=("User-Agent", "Content-Type")
    ) as session:

        def signed(method: str, address: str, body: bytes | None) -> dict[str, str]:
            headers = {"ocp-date": formatdate(usegmt=True), "client-request-id": str(uuid.uuid4())}
            if body is not None:
                headers["Content-Type"] = CONTENT_TYPE
                headers["Content-Length"] = str(len(body))
            headers["Authorization"] = signer.authorization(method, address, headers)
            return headers

        async def get(address: str) -> dict[str, Any]:
            async with session.get(
                URL(address, encoded=True), headers=signed("GET", address, None)
            ) as answer:
                answer.raise_for_status()
                data: dict[str, Any] = await answer.json(content_type=None)
                return data

        async def pages(address: str | None) -> list[str]:
            ids: list[str] = []
            while address:
                data = await get(address)
                ids += [item["id"] for item in data["value"]]
                address = data.get("odata.nextLink")
            return ids

        query = f"api-version={API_VERSION}&$select=id"
        pools = await pages(f"{url}/pools?{query}")
        listed = await asyncio.gather(
            *(pages(f"{url}/pools/{quote(p, safe='')}/nodes?{query}") for p in pools)
        )
        targets = [(p, n) for p, ids in zip(pools, listed, strict=True) for n in ids]
        list_done = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        counts = {"accepted": 0, "failed": 0}

        async def reimage(pool: str, node: str) -> None:
            address = (
                f"{url}/pools/{quote(pool, safe='')}/nodes/{quote(node, safe='')}/reimage"
                f"?api-version={API_VERSION}"
            )
            async with (
                semaphore,
                session.post(
                    URL(address, encoded=True), headers=signed("POST", address, BODY), data=BODY
                ) as answer,
            ):
                await answer.read()
                counts["accepted" if answer.status == 202 else "failed"] += 1

        await asyncio.gather(*(reimage(p, n) for p, n in targets))
    ended = time.perf_counter()
    return {
        "listed": len(targets),
        **counts,
        "list_s": list_done - started,
        "dispatch_s": ended - list_done,
    }


async def official_sdk(url: str, concurrency: int) -> dict[str, Any]:
    from azure.batch.aio import BatchClient
    from azure.batch.models._models import BatchNodeReimageOptions
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import HttpResponseError

    started = time.perf_counter()
    credential = AzureNamedKeyCredential(ACCOUNT, KEY)
    async with BatchClient(url, credential, api_version=API_VERSION) as client:
        pools = [pool.id async for pool in client.list_pools(select=["id"])]

        async def nodes_of(pool: str) -> list[str]:
            return [node.id async for node in client.list_nodes(pool, select=["id"])]

        listed = await asyncio.gather(*(nodes_of(p) for p in pools))
        targets = [(p, n) for p, ids in zip(pools, listed, strict=True) for n in ids]
        list_done = time.perf_counter()
        semaphore = asyncio.Semaphore(concurrency)
        counts = {"accepted": 0, "failed": 0}
        options = BatchNodeReimageOptions(node_reimage_option="requeue")

        async def reimage(pool: str, node: str) -> None:
            async with semaphore:
                try:
                    await client.begin_reimage_node(pool, node, options)
                except HttpResponseError:
                    counts["failed"] += 1
                else:
                    counts["accepted"] += 1

        await asyncio.gather(*(reimage(p, n) for p, n in targets))
    ended = time.perf_counter()
    return {
        "listed": len(targets),
        **counts,
        "list_s": list_done - started,
        "dispatch_s": ended - list_done,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("aiohttp", "sdk"))
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    job = plain_aiohttp if args.kind == "aiohttp" else official_sdk
    result = asyncio.run(job(args.url, args.concurrency))
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
