"""From a plan's accounts to ready Batch clients (and in-process emulators).

One connection pool (``batch/aiohttp_transport.py``) serves the whole run, sized to the
plan's concurrency. An ``emulator:`` account starts the local Batch emulator in-process on a
free loopback port and talks to it over real TCP, exactly as it would to the service. Keys
are read from the environment or a file when the run starts, kept only in memory, and never
logged. Token requests of Entra accounts take the Batch calls' route: the same proxy
variables and the same CA bundle (``batch/network.py``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from fleet_reimage.batch.auth import (
    Credential,
    EntraCredential,
    SharedKeyCredential,
    azure_identity_source,
    cloud_for_endpoint,
    identity_transport,
)
from fleet_reimage.batch.client import BatchClient
from fleet_reimage.batch.network import proxy_for, tls_context
from fleet_reimage.batch.transport import Transport
from fleet_reimage.errors import InputError, Problem
from fleet_reimage.plan.clouds import entra_hosts
from fleet_reimage.plan.environment import environment_problems
from fleet_reimage.plan.model import AccountSpec, EntraAuth, Plan, SharedKeyAuth

log = structlog.get_logger("fleet_reimage.connect")


@dataclass(slots=True)
class Connections:
    clients: dict[str, BatchClient]  # by account name
    emulators: dict[str, Any] = field(default_factory=dict)  # account name -> running emulator


def key_loader(auth: SharedKeyAuth, plan_file: str) -> Callable[[], str]:
    """A function returning the account key from the environment or the key file."""
    if auth.key_env is not None:
        name = auth.key_env

        def from_env() -> str:
            value = os.environ.get(name)
            if not value:
                raise InputError(
                    [
                        Problem(
                            plan_file,
                            None,
                            None,
                            "auth.key_env",
                            f"environment variable {name} is not set (it must "
                            "hold the account's base64 Shared Key)",
                        )
                    ]
                )
            return value

        return from_env
    path = auth.key_file
    assert path is not None

    def from_file() -> str:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(
                [
                    Problem(
                        plan_file,
                        None,
                        None,
                        "auth.key_file",
                        f"cannot read key file {path}: {exc.strerror}",
                    )
                ]
            ) from None

    return from_file


async def _credential_for(
    account: AccountSpec,
    endpoint: str,
    plan_file: str,
    emulator: Any | None,
    token_transport: Callable[[], Awaitable[Any]],
) -> Credential:
    auth = account.auth
    if auth is None:
        assert emulator is not None, "validation guarantees auth for non-emulator accounts"
        return SharedKeyCredential(emulator.account_name, emulator.account_key)
    if isinstance(auth, SharedKeyAuth):
        load = key_loader(auth, plan_file)
        key_value = await anyio.to_thread.run_sync(load)
        try:
            return SharedKeyCredential(auth.account, key_value, reload=load)
        except ValueError as exc:
            raise InputError(
                [Problem(plan_file, None, None, f"accounts.{account.name}.auth", str(exc))]
            ) from None
    assert isinstance(auth, EntraAuth)
    if account.custom_cloud:  # validated hosts outside the known clouds: say so every time
        log.warning("custom cloud", account=account.name, **entra_hosts(endpoint, auth))
    cloud = cloud_for_endpoint(endpoint, audience=auth.audience, authority_host=auth.authority)
    source = azure_identity_source(
        auth.credential,
        cloud,
        client_id=auth.client_id,
        tenant_id=auth.tenant_id,
        transport=await token_transport(),
    )
    return EntraCredential(source, cloud)


class _Network:
    """The run's TLS context and token transport, each made once and only when needed."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self._tls: ssl.SSLContext | None = None
        self._tokens: Any = None

    async def tls(self) -> ssl.SSLContext:
        if self._tls is None:  # ~20 ms to load a CA bundle: not for runs on the emulator
            self._tls = await anyio.to_thread.run_sync(tls_context)
        return self._tls

    async def token_transport(self) -> Any:
        if self._tokens is None:
            context = await self.tls()
            self._tokens = await self._stack.enter_async_context(identity_transport(context))
        return self._tokens


async def _log_route(account: str, endpoint: str) -> None:
    """Say which proxy an account's requests take (its URL without credentials)."""
    proxy = await anyio.to_thread.run_sync(proxy_for, endpoint)
    if proxy is not None:
        log.info(
            "requests go through a proxy",
            account=account,
            proxy=proxy.display,
            proxy_from=f"${proxy.variable}",
        )


@asynccontextmanager
async def connect(plan: Plan, *, transport: Transport | None = None) -> AsyncIterator[Connections]:
    """Clients for every account of the plan; emulators started and stopped around them."""
    missing = environment_problems(plan.source.text, plan.source.path, os.environ)
    # A webhook's variable is a run's concern (api.py checks it), not every command's.
    missing = [p for p in missing if not p.path.startswith("notify")]
    if missing:  # an unset key_env, said with its line like any other plan problem
        raise InputError(missing)
    async with AsyncExitStack() as stack:
        network = _Network(stack)
        if transport is None:
            # Imported here: aiohttp's client costs ~0.1 s of start-up that commands which
            # never reach the service (status, report, a refused resume) do not need.
            from fleet_reimage.batch.aiohttp_transport import AiohttpTransport

            needs_tls = any(a.endpoint and a.endpoint.startswith("https") for a in plan.accounts)
            transport = AiohttpTransport(
                pool_size=plan.execution.concurrency,
                ssl_context=await network.tls() if needs_tls else None,
            )
            stack.push_async_callback(transport.close)
        connections = Connections(clients={})
        plan_file = str(plan.source.path)
        for account in plan.accounts:
            emulator = None
            endpoint = account.endpoint
            if account.emulator is not None:
                from fleet_reimage.emulator.server import running_emulator

                emulator = await stack.enter_async_context(running_emulator(account.emulator))
                connections.emulators[account.name] = emulator
                endpoint = emulator.url
            assert endpoint is not None
            await _log_route(account.name, endpoint)
            credential = await _credential_for(
                account, endpoint, plan_file, emulator, network.token_transport
            )
            client = BatchClient(
                endpoint,
                credential,
                transport,
                api_version=plan.execution.api_version,
                request_timeout=plan.execution.request_timeout,
            )
            stack.push_async_callback(client.close)
            connections.clients[account.name] = client
        yield connections
