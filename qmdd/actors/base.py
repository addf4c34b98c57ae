"""The one template every actor follows: an inbox of envelopes, each message handled by one rule.

An actor instance lives until it crashes; the supervisor then builds a fresh one from the factory and
hands it the *same* inbox, so messages queued during a restart are not lost. A caller awaiting a reply
always gets one: the result, the typed error the handler raised, or BACKEND_UNAVAILABLE when the actor
crashed or was given up on.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import outcome
import trio

from qmdd import faults
from qmdd.actors.messages import SaveSnapshot, VerifyIndex
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store.db import connect
from qmdd.tracing import span, trace_id_var

log = logging.getLogger("qmdd.actors")

INBOX_SIZE = 1024


@dataclass
class Envelope:
    message: Any
    reply: trio.MemorySendChannel[outcome.Outcome[Any]] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    trace_id: str = field(default_factory=trace_id_var.get)
    """The request's that sent it: the actor's log lines about it carry it too."""
    attempts: int = 0  # how many instances of the actor ended (crashed) while holding this message


async def typed_outcome(fn: Callable[..., Awaitable[Any]], *args: Any) -> outcome.Outcome[Any]:
    """The outcome of `fn(*args)` when it returns or raises a QmddError: a typed answer the caller can act
    on (log it, fall back, report it). Anything else, a bug or trio.Cancelled, propagates."""
    result = await outcome.acapture(fn, *args)
    if isinstance(result, outcome.Error) and not isinstance(result.error, QmddError):
        result.unwrap()
    return result


def send_reply(envelope: Envelope, result: outcome.Outcome[Any]) -> None:
    if envelope.reply is None:
        return
    # The caller may have been cancelled and closed its end; nobody is left to tell.
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
        envelope.reply.send_nowait(result)


def offer_progress(channel: trio.MemorySendChannel[Any] | None, event: dict[str, Any]) -> None:
    """Progress is advisory: a slow or vanished listener must never stall the work (a full channel
    drops the event)."""
    if channel is None:
        return
    with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        channel.send_nowait(event)


class Mailbox:
    """The send side of an actor's inbox: what the daemon's wiring hands to other components.

    Messages the actor handles beside the inbox (`concurrent`) go to a second channel once its instance
    has said which (`beside`): in the inbox they were read only after the message handled in turn before
    them, so a vector query waited for a snapshot save, a query embedding for a rerank, a plugin call for
    an install. Both channels outlive a crash of the actor: the next instance reads on."""

    def __init__(self, name: str, size: int = INBOX_SIZE) -> None:
        self.name = name
        self.send_channel, self.receive_channel = trio.open_memory_channel[Envelope](size)
        self.beside_send, self.beside_receive = trio.open_memory_channel[Envelope](size)
        self.beside: frozenset[type] = frozenset()

    def _channel(self, message: Any) -> trio.MemorySendChannel[Envelope]:
        return self.beside_send if type(message) in self.beside else self.send_channel

    async def call(self, message: Any) -> Any:
        """Send and wait for the reply; raises the handler's QmddError."""
        reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        with span(f"{self.name}.{type(message).__name__}"):
            async with reply_receive:
                try:
                    await self._channel(message).send(Envelope(message, reply_send))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor has stopped") from None
                return (await reply_receive.receive()).unwrap()

    def cast_nowait(self, message: Any) -> None:
        """Fire and forget; refuses rather than blocks when the actor is far behind."""
        try:
            self.send_nowait(Envelope(message))
        except trio.WouldBlock:
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor is overloaded") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor has stopped") from None

    def send_nowait(self, envelope: Envelope) -> None:
        """An envelope into the channel its message goes to (an actor handing a request back)."""
        self._channel(envelope.message).send_nowait(envelope)

    def close(self) -> None:
        """No more messages: the actor answers those already sent, then ends."""
        self.send_channel.close()
        self.beside_send.close()

    def queue_depth(self) -> int:
        return (self.send_channel.statistics().current_buffer_used
                + self.beside_send.statistics().current_buffer_used)


@dataclass
class ActorStats:
    handled: int = 0
    errors: int = 0
    busy_s: float = 0.0  # time the inbox was held by messages handled in turn
    last_error: str | None = None


HandlerFn = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Concurrent:
    """A handler run beside the inbox, in the actor's nursery (see `concurrent`)."""

    fn: HandlerFn


def concurrent(fn: HandlerFn) -> Concurrent:
    """Mark a handler to run beside the inbox instead of in turn: a query that must not wait behind
    changes, a glance at the state that must not wait for a load, a request whose answer comes when
    other tasks finish. Replies, typed errors and crashes follow the same rule as for any handler."""
    return Concurrent(fn)


Handler = HandlerFn | Concurrent


class Actor:
    """Subclasses set `name`, map message types to handlers in `handlers()` (wrapped in `concurrent` for
    those that run beside the inbox), and may override `setup`/`teardown` (resources),
    `wait_until_ready`, `abandon` and `extra_statistics`. Background tasks of an actor (workers,
    watches) go in `self.nursery`, from `setup` on: they live as long as this instance, and a crash in
    one is a crash of the actor."""

    name: ClassVar[str] = "actor"

    def __init__(self) -> None:
        self.stats = ActorStats()
        self._handlers: dict[type, Handler] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "run() opens the nursery before setup()"
        return self._nursery

    def handlers(self) -> dict[type, Handler]:
        raise NotImplementedError

    async def setup(self) -> None:
        """Open resources; runs before readiness is reported."""

    async def teardown(self) -> None:
        """Release resources; runs shielded on exit, crash or cancellation."""

    async def wait_until_ready(self) -> None:
        """Awaited before each message handled in turn (concurrent ones never wait): an actor whose state
        loads in the background holds the inbox until it is loaded."""

    def abandon(self, envelope: Envelope) -> None:
        """Called for each request this instance took and ends without answering (it crashed, or the
        daemon is stopping). The caller is told; an actor whose requests are safe to redo may give it
        to the next instance instead."""
        send_reply(envelope, outcome.Error(QmddError(
            ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor stopped while handling this request")))

    def extra_statistics(self) -> dict[str, Any]:
        return {}

    def statistics(self) -> dict[str, Any]:
        return {"handled": self.stats.handled, "errors": self.stats.errors,
                "busy_s": round(self.stats.busy_s, 3), "last_error": self.stats.last_error,
                **self.extra_statistics()}

    async def run(self, mailbox: Mailbox, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until the mailbox is closed: its inbox in turn, and beside it the messages handled beside."""
        self._handlers = self.handlers()
        mailbox.beside = frozenset(kind for kind, handler in self._handlers.items() if isinstance(handler, Concurrent))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self.setup()
                task_status.started()
                beside_read = trio.Event()
                nursery.start_soon(self._read_beside, mailbox.beside_receive, beside_read)
                async for envelope in mailbox.receive_channel:
                    await self._dispatch(envelope)
                await beside_read.wait()  # closed too: what was sent before is started, not dropped
            finally:
                with trio.CancelScope(shield=True):
                    await self.teardown()
            nursery.cancel_scope.cancel()

    async def _read_beside(self, channel: trio.MemoryReceiveChannel[Envelope], read: trio.Event) -> None:
        async for envelope in channel:
            await self._dispatch(envelope)  # each started at once (messages sent here are `concurrent`)
        read.set()

    async def _dispatch(self, envelope: Envelope) -> None:
        handler = self._handlers.get(type(envelope.message))
        if handler is None:
            send_reply(envelope, outcome.Error(QmddError(
                ErrorCode.INTERNAL, f"{self.name} cannot handle {type(envelope.message).__name__}")))
            return
        if isinstance(handler, Concurrent):
            self.nursery.start_soon(self._handle, handler.fn, envelope)
            return
        await self.wait_until_ready()
        started = time.monotonic()
        try:
            await self._handle(handler, envelope)
        finally:
            self.stats.busy_s += time.monotonic() - started

    async def _handle(self, handler: HandlerFn, envelope: Envelope) -> None:
        """The one rule: reply with the result or the typed error; on anything else (a bug, a broken
        resource) reply BACKEND_UNAVAILABLE, then crash, so the supervisor restarts this actor from a
        clean state. Cancelled (a crash elsewhere in this actor, a stop) is never swallowed: the
        request is abandoned instead."""
        answered = False
        trace_id_var.set(envelope.trace_id)
        try:
            injected = self._injected_fault(envelope) if faults.enabled else None
            result = injected or await outcome.acapture(handler, envelope.message)
            self.stats.handled += 1
            if isinstance(result, outcome.Error):
                exc = result.error
                if not isinstance(exc, Exception):  # trio.Cancelled and friends
                    result.unwrap()
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, QmddError):
                    answered = True
                    send_reply(envelope, outcome.Error(QmddError(
                        ErrorCode.BACKEND_UNAVAILABLE, f"the {self.name} actor failed: {exc}")))
                    result.unwrap()
            answered = True
            send_reply(envelope, result)
        finally:
            if not answered:
                self.abandon(envelope)

    def _injected_fault(self, envelope: Envelope) -> outcome.Error | None:
        """The fault point `actor.<name>.<Message>` (see qmdd.faults): fails as the handler would."""
        try:
            faults.check(f"actor.{self.name}.{type(envelope.message).__name__}")
        except faults.InjectedFault as exc:
            return outcome.Error(exc)
        return None


class Generation:
    """A number that grows each time an in-memory index changes what a search can find. With SQLite's
    data_version (every commit) it keys the result cache: a cached answer is served only while neither
    moved since it was computed."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def advance(self) -> None:
        self.value += 1


class CatchUp:
    """The collections whose start-up rescan has not finished: until it has, what changed while the
    daemon was down is not searchable (a file edited then is found by its old words, a deleted one is
    still found). The watcher marks them; searches wait for theirs a little, then answer with a warning
    (`qmdd.methods.freshness`). Each one finished advances the index generation, so an answer cached
    meanwhile is not served again."""

    def __init__(self, generation: Generation) -> None:
        self._generation = generation
        self._pending: dict[int, str] = {}  # collection id -> name
        self._progress = trio.Event()  # set (and replaced) each time one finishes

    def begin(self, collection_id: int, name: str) -> None:
        self._pending[collection_id] = name

    def done(self, collection_id: int) -> None:
        if self._pending.pop(collection_id, None) is not None:
            self._generation.advance()
            self._progress.set()
            self._progress = trio.Event()

    def behind(self, names: Collection[str] | None) -> set[str]:
        """Those of `names` (None: any) still being rescanned."""
        return {n for n in self._pending.values() if names is None or n in names}

    async def wait(self, names: Collection[str] | None, timeout_s: float) -> set[str]:
        """Wait up to `timeout_s` for the rescans of `names` (None: all); those still not done."""
        with trio.move_on_after(timeout_s):
            while self.behind(names):
                await self._progress.wait()
        return self.behind(names)


class DatabaseActor(Actor):
    """An actor owning one SQLite connection from setup to teardown, used by one worker thread at a
    time: handlers in turn take it one after the other; concurrent ones must not touch it unguarded."""

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


class DerivedIndexActor(DatabaseActor):
    """An actor owning an index derived from SQLite (BM25, vectors): loaded from its snapshot when the
    snapshot was made for the same settings, reconciled with SQLite, saved when dirty and on exit.

    Subclasses provide `_open_snapshot` (index and metadata, or raise one of `snapshot_errors`),
    `_install`, `_expected_meta`, `_save_index`, `_reconcile` (returns chunks added, removed) and
    `_collection_sizes`. Index work runs in threads under `_cpu`; `_lock` serialises it with anything
    else that must not see the index half-changed.

    `sizes`, what the index holds per collection, is replaced on the event loop after the load and after
    each change, never mutated: it can be answered at once, even while a worker thread changes the index.
    """

    snapshot_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self, database: Path, snapshot: Path, generation: Generation | None = None) -> None:
        super().__init__(database)
        self._snapshot = snapshot
        self._generation = generation or Generation()
        self._cpu = trio.CapacityLimiter(1)
        self._lock = trio.Lock()  # fair: a waiting query gets the index after the current step
        self._dirty = False
        self.loaded_from = "empty"
        self.sizes: dict[int, int] = {}

    def _open_snapshot(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def _install(self, index: Any) -> None:
        raise NotImplementedError

    def _expected_meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def _save_index(self) -> None:
        raise NotImplementedError

    def _reconcile(self) -> tuple[int, int]:
        raise NotImplementedError

    def _collection_sizes(self) -> dict[int, int]:
        """collection id -> the chunks (BM25) or vectors the index holds of it."""
        raise NotImplementedError

    def _changed(self) -> None:
        """Called after each change to the index, once searches can see it."""
        self._dirty = True
        self._generation.advance()
        self.sizes = self._collection_sizes()

    def _remove_stale_temps(self) -> None:
        """A kill -9 during a snapshot write leaves its temp file (as big as the snapshot) behind; the
        instance lock makes sure no other daemon is writing one now."""
        name = self._snapshot.name
        for pattern in (f".{name}.*.tmp", f".{name}.tmp", f"{name}.tmp*"):
            for leftover in self._snapshot.parent.glob(pattern):
                log.info("removing %s, left by an interrupted snapshot write", leftover)
                leftover.unlink(missing_ok=True)

    def _load_snapshot(self) -> None:
        self._remove_stale_temps()
        if not self._snapshot.exists():
            return
        try:
            index, meta = self._open_snapshot()
        except self.snapshot_errors as exc:
            log.warning("%s snapshot unusable (%s); rebuilding from SQLite", self.name, exc)
            self.loaded_from = "rebuilt"
            return
        if meta != self._expected_meta():
            log.info("%s snapshot was made with other settings or data; rebuilding from SQLite", self.name)
            self.loaded_from = "rebuilt"
            return
        self._install(index)
        self._generation.advance()
        self.loaded_from = "snapshot"

    def _write_snapshot(self) -> None:
        try:
            self._save_index()
        except (OSError, RuntimeError) as exc:
            # The snapshot only saves start-up time (SQLite is the truth): a full or read-only disk
            # must not take search down. It stays dirty, so the next save tries again.
            log.warning("cannot write the %s snapshot %s: %s", self.name, self._snapshot, exc)
            return
        self._dirty = False

    async def load(self) -> float:
        """Snapshot, then reconciliation; returns the seconds it took."""
        started = time.monotonic()
        await trio.to_thread.run_sync(self._load_snapshot, limiter=self._cpu)
        await self._verify(VerifyIndex())
        self.sizes = self._collection_sizes()
        return time.monotonic() - started

    async def teardown(self) -> None:
        if self._conn is not None and self._dirty:
            await trio.to_thread.run_sync(self._write_snapshot, limiter=self._cpu)
        await super().teardown()

    async def _verify(self, _: VerifyIndex) -> dict[str, int]:
        async with self._lock:
            added, removed = await trio.to_thread.run_sync(self._reconcile, limiter=self._cpu)
        if added or removed:
            self._changed()
            log.info("%s reconciled with SQLite: +%d -%d", self.name, added, removed)
            await self._save(SaveSnapshot())
        return {"added": added, "removed": removed}

    async def _save(self, message: SaveSnapshot) -> bool:
        if not (self._dirty or message.force):
            return False
        async with self._lock:
            await trio.to_thread.run_sync(self._write_snapshot, limiter=self._cpu)
        return True
