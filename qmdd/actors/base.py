"""The one template every actor follows: an inbox of envelopes, one message handled at a time.

An actor instance lives until it crashes; the supervisor then builds a fresh one from the factory and
hands it the *same* inbox, so messages queued during a restart are not lost. A caller awaiting a reply
always gets one: the result, the typed error the handler raised, or BACKEND_UNAVAILABLE when the actor
crashed or was given up on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import outcome
import trio

from qmdd.protocol import ErrorCode, QmddError
from qmdd.store.db import connect

INBOX_SIZE = 1024


@dataclass
class Envelope:
    message: Any
    reply: trio.MemorySendChannel[outcome.Outcome[Any]] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)


def send_reply(envelope: Envelope, result: outcome.Outcome[Any]) -> None:
    if envelope.reply is None:
        return
    # The caller may have been cancelled and closed its end; nobody is left to tell.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        envelope.reply.send_nowait(result)


class Mailbox:
    """The send side of an actor's inbox: what the daemon's wiring hands to other components."""

    def __init__(self, name: str, size: int = INBOX_SIZE) -> None:
        self.name = name
        self.send_channel, self.receive_channel = trio.open_memory_channel[Envelope](size)

    async def call(self, message: Any) -> Any:
        """Send and wait for the reply; raises the handler's QmddError."""
        reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        async with reply_receive:
            try:
                await self.send_channel.send(Envelope(message, reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor has stopped") from None
            return (await reply_receive.receive()).unwrap()

    def cast_nowait(self, message: Any) -> None:
        """Fire and forget; refuses rather than blocks when the actor is far behind."""
        try:
            self.send_channel.send_nowait(Envelope(message))
        except trio.WouldBlock:
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor is overloaded") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor has stopped") from None

    def queue_depth(self) -> int:
        return self.send_channel.statistics().current_buffer_used


@dataclass
class ActorStats:
    handled: int = 0
    errors: int = 0
    busy_s: float = 0.0
    last_error: str | None = None


Handler = Callable[[Any], Awaitable[Any]]


class Actor:
    """Subclasses set `name`, map message types to handlers in `handlers()`, and may override
    `setup`/`teardown` (resources) and `extra_statistics`."""

    name: ClassVar[str] = "actor"

    def __init__(self) -> None:
        self.stats = ActorStats()
        self._handlers: dict[type, Handler] = {}

    def handlers(self) -> dict[type, Handler]:
        raise NotImplementedError

    async def setup(self) -> None:
        """Open resources; runs before readiness is reported."""

    async def teardown(self) -> None:
        """Release resources; runs shielded on exit, crash or cancellation."""

    def extra_statistics(self) -> dict[str, Any]:
        return {}

    def statistics(self) -> dict[str, Any]:
        return {"handled": self.stats.handled, "errors": self.stats.errors,
                "busy_s": round(self.stats.busy_s, 3), "last_error": self.stats.last_error,
                **self.extra_statistics()}

    async def run(self, inbox: trio.MemoryReceiveChannel[Envelope], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._handlers = self.handlers()
        try:
            await self.setup()
            task_status.started()
            async for envelope in inbox:
                await self._dispatch(envelope)
        finally:
            with trio.CancelScope(shield=True):
                await self.teardown()

    async def _dispatch(self, envelope: Envelope) -> None:
        handler = self._handlers.get(type(envelope.message))
        if handler is None:
            send_reply(envelope, outcome.Error(QmddError(
                ErrorCode.INTERNAL, f"{self.name} cannot handle {type(envelope.message).__name__}")))
            return
        started = time.monotonic()
        result = await outcome.acapture(handler, envelope.message)
        self.stats.busy_s += time.monotonic() - started
        self.stats.handled += 1
        if isinstance(result, outcome.Error):
            exc = result.error
            if not isinstance(exc, Exception):  # trio.Cancelled and friends: never swallowed
                result.unwrap()
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, QmddError):
                # A bug or a broken resource: answer the caller, then crash so the supervisor
                # restarts this actor from a clean state.
                send_reply(envelope, outcome.Error(QmddError(
                    ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor failed: {exc}")))
                result.unwrap()
        send_reply(envelope, result)


class DatabaseActor(Actor):
    """An actor owning one SQLite connection from setup to teardown (used by its worker threads,
    one at a time: the actor handles one message at a time)."""

    def __init__(self, database: Path) -> None:
        super().__init__()
        self._database = database
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "setup() opens the connection"
        return self._conn

    async def setup(self) -> None:
        self._conn = connect(self._database)

    async def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
