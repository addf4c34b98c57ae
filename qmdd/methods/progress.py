"""Progress of a long job, streamed to the caller with a heartbeat: a client's silence timeout
(QMDD_TIMEOUT) must never fire on a run that is alive, waiting included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from qmdd.methods.call import Emit

HEARTBEAT_S = 2.0


class ProgressPump:
    """Streams the latest progress of a long job: each change at once, and the latest again after every
    HEARTBEAT_S of silence (a wait, a slow page). The only task that emits on the call."""

    def __init__(self, emit: Emit, interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._latest: dict[str, Any] | None = None
        self._changed = trio.Event()
        self._unsent = False

    def update(self, payload: dict[str, Any]) -> None:
        self._latest = payload
        self._unsent = True
        self._changed.set()

    def waiting(self, payload: dict[str, Any]) -> None:
        """What the job waits for: said only if the wait outlasts a heartbeat, so quick runs stay quiet."""
        self._latest = payload
        self._unsent = False

    async def pump(self) -> None:
        while True:
            with trio.move_on_after(self._interval):
                await self._changed.wait()
            self._changed = trio.Event()
            await self.flush(always=True)

    async def flush(self, *, always: bool = False) -> None:
        if self._latest is not None and (always or self._unsent):
            self._unsent = False
            await self._emit("progress", self._latest)

    async def follow(self, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        """Take a job's progress events: those with a "waiting" key say what it waits for."""
        async with events:
            async for event in events:
                if "waiting" in event:
                    self.waiting(event)
                else:
                    self.update(event)


@asynccontextmanager
async def progress_pump(emit: Emit) -> AsyncIterator[ProgressPump]:
    progress = ProgressPump(emit, HEARTBEAT_S)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.pump)
        yield progress
        nursery.cancel_scope.cancel()
    await progress.flush()  # the last count, before the result
