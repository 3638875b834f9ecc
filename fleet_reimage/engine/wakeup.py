"""``Wakeup``: a one-shot event for one waiting task, cheap to make.

The executor makes one for every job that waits for a send slot and one each time the
dispatcher goes to sleep: tens of thousands per run. ``anyio.Event()`` costs ~3 µs to create
(it asks which async library is running, then builds an ``asyncio.Event``); a future of the
running loop costs a tenth of that. Runs always use anyio's asyncio backend, so this is
safe, and anyio's cancel scopes cancel a task waiting here like any other.
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """Set once (from the event loop's thread); ``wait`` returns once it is set."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self) -> None:
        if not self._future.done():  # a waiter that was cancelled has cancelled it
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future
