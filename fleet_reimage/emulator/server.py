"""Running the emulator: in-process for tests, demos and benchmarks, or from the command line.

In-process::

    async with running_emulator("plans/fleets/demo.yaml") as emu:
        ...  # emu.url, emu.state, emu.stats(), emu.account_name, emu.account_key

Command line: ``fleet-reimage emulator --fleet FLEET.yaml [--host H] [--port P]
[--port-file PATH] [--log-requests]`` (also ``python -m fleet_reimage.emulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from fleet_reimage.errors import InputError

from .app import Emulator, create_app, emulator_of
from .clock import Clock
from .fleet import load_fleet
from .spec import FleetSpec
from .state import EmulatorState

SHUTDOWN_TIMEOUT = 1.0  # delayed ("delay_after") answers are not worth waiting for on exit
access_logger = logging.getLogger("fleet_reimage.emulator.access")


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """A live emulator bound to a TCP port."""

    url: str
    host: str
    port: int
    emulator: Emulator

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    @property
    def spec(self) -> FleetSpec:
        return self.emulator.spec

    @property
    def account_name(self) -> str:
        return self.emulator.spec.account.name

    @property
    def account_key(self) -> str:
        """The base64 Shared Key the emulator verifies (a test key from the fleet file)."""
        return self.emulator.spec.account.key

    def stats(self, pool: str | None = None, include_nodes: bool = True) -> dict[str, Any]:
        """The same document as ``GET /_emulator/stats``."""
        return self.emulator.stats(pool, include_nodes)

    def __repr__(self) -> str:
        return f"RunningEmulator({self.url}, account={self.account_name!r})"


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@asynccontextmanager
async def running_emulator(
    spec_or_path: FleetSpec | str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Clock | None = None,
    log_requests: bool = False,
) -> AsyncIterator[RunningEmulator]:
    """Serve ``spec_or_path`` (a FleetSpec or a fleet file) until the block exits."""
    if isinstance(spec_or_path, FleetSpec):
        spec = spec_or_path
    else:
        spec = await anyio.to_thread.run_sync(load_fleet, Path(spec_or_path))
    app = create_app(spec, clock=clock)
    runner = web.AppRunner(
        app, access_log=access_logger if log_requests else None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningEmulator(_url(host, bound_port), host, bound_port, emulator_of(app))
    finally:
        await runner.cleanup()


def _write_port_file(path: Path, port: int) -> None:
    # Write then rename, so a reader polling for the file never sees it half-written.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    temporary.replace(path)


def _announce(line: str) -> None:
    print(line, flush=True)


async def serve_forever(
    spec_or_path: FleetSpec | str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: str | os.PathLike[str] | None = None,
    *,
    log_requests: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM; announce the URL on stdout once bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        async with running_emulator(spec_or_path, host, port, log_requests=log_requests) as emu:
            if port_file is not None:
                await anyio.to_thread.run_sync(_write_port_file, Path(port_file), emu.port)
            await anyio.to_thread.run_sync(_announce, f"Batch emulator listening on {emu.url}")
            await stop.wait()
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-reimage emulator",
        description="Serve a local Azure Batch emulator for the pools in a fleet file.",
    )
    parser.add_argument(
        "--fleet",
        required=True,
        metavar="FLEET.yaml",
        help="fleet file describing the account, pools, timings and faults",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; any other address is reachable from the "
        "network, and you are warned)",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--port-file",
        metavar="PATH",
        help="write the bound port number to this file once listening",
    )
    parser.add_argument(
        "--log-requests",
        action="store_true",
        help="log every request (access log) to stderr; slows the emulator",
    )
    return parser


def exposure_warning(host: str) -> str | None:
    """What to tell the operator when ``host`` is not a loopback address (None if it is)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False  # a host name: it may well resolve to a public address
    if loopback:
        return None
    return (
        f"fleet-reimage emulator: warning: listening on {host} makes the emulator reachable "
        "from the network: anyone who can reach this machine can call it with the fleet "
        "file's account key (a test key) and change its state; use --host 127.0.0.1 unless "
        "you mean it"
    )


def emulator_main(argv: list[str]) -> int:
    """The ``emulator`` command: exit 0 on a clean stop, 2 on bad arguments or fleet file."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    if not 0 <= args.port <= 65535:
        print(f"fleet-reimage emulator: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host)
    if warning is not None:
        print(warning, file=sys.stderr)
    try:
        spec = load_fleet(args.fleet)  # before the loop starts: blocking I/O is fine here
    except InputError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    if args.log_requests:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(handler)
        access_logger.setLevel(logging.INFO)
    try:
        asyncio.run(
            serve_forever(
                spec, args.host, args.port, args.port_file, log_requests=args.log_requests
            )
        )
    except OSError as exc:
        print(
            f"fleet-reimage emulator: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
