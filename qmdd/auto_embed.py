"""The background embedder: keeps the collections the user chose to embed embedded, newest chunks first.

`qmdctl embed -c X` chooses X, a bare `embed` every collection there is; the choice is kept in SQLite
(`embed_choices`). When the watcher has indexed new chunks, each chosen collection with chunks that lack a
vector is embedded a page at a time at bulk priority (behind every query): the chunks indexed last first,
and chunks indexed while it runs before the older backlog, so a note just saved never waits behind a
checkout of thousands. It holds the embed lock for one page at a time, while a manual `embed` holds it for
its whole run: the lock is fair, so a manual embed waits for one page at most. Nothing runs until vectors
exist for the model in use: after a model change the user says when to pay for re-embedding.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import outcome
import trio

from qmdd.actors.base import typed_outcome
from qmdd.actors.messages import ModelStatus, SaveSnapshot
from qmdd.store import embeddings as emb
from qmdd.store.embeddings import PendingChunk

if TYPE_CHECKING:
    from qmdd.semantic import SemanticApi

log = logging.getLogger("qmdd.auto_embed")

# Chunks per page: ~0.7 s of CPU here, the longest a manual embed waits for the background to let go.
BACKGROUND_PAGE = 32


class BackgroundEmbedder:
    def __init__(self, semantic: SemanticApi, *, enabled: bool) -> None:
        self._semantic = semantic
        self._s = semantic.s
        self.state = "idle" if enabled else "off"
        self.collection: str | None = None
        self.done = 0
        self.total = 0
        self.since: float | None = None
        self.last_run: dict[str, Any] | None = None
        self.last_error: str | None = None
        # (fingerprint, collection id) -> a chunk id up to which every chunk of the collection has a vector,
        # so a wake-up after one saved note counts the chunks above it, not the whole collection again.
        self._embedded_through: dict[tuple[str, int], int] = {}

    def status(self) -> dict[str, Any]:
        busy = self.state in ("embedding", "paused")
        return {"state": self.state, "collection": self.collection if busy else None,
                "done": self.done if busy else None, "total": self.total if busy else None,
                "since": self.since if busy else None, "last_run": self.last_run, "last_error": self.last_error}

    async def run(self, indexed: trio.MemoryReceiveChannel[int]) -> None:
        """Runs while the daemon serves, woken with the id of a collection the watcher indexed chunks in.
        A failure (no model, an embedder given up on) is logged and shown in `status`, and waits for the
        next change: it must never take the daemon down."""
        async for collection_id in indexed:
            ran = await typed_outcome(self._catch_up, collection_id)
            self.state, self.collection = "idle", None
            if isinstance(ran, outcome.Error):
                self.last_error = f"{ran.error}"
                log.warning("embedding the watcher's changes failed: %s", ran.error)

    async def _catch_up(self, woken: int) -> None:
        model = await self._s.embedder.call(ModelStatus())
        fingerprint = model["fingerprint"]
        if not fingerprint or not await trio.to_thread.run_sync(emb.has_vectors, self._s.reader, fingerprint):
            return
        chosen = await trio.to_thread.run_sync(emb.chosen_collections, self._s.reader)
        for collection_id in sorted(chosen, key=lambda cid: cid != woken):  # the collection that changed first
            await self._embed_collection(fingerprint, collection_id, chosen[collection_id])

    async def _embed_collection(self, fingerprint: str, collection_id: int, name: str) -> None:
        reader, key = self._s.reader, (fingerprint, collection_id)
        backlog = Backlog(fingerprint, collection_id, self._embedded_through.get(key, 0))
        total = await trio.to_thread.run_sync(backlog.grow, reader)
        if total == 0:
            self._embedded_through[key] = backlog.top
            return
        if (await self._s.embedder.call(ModelStatus(load=True)))["fingerprint"] != fingerprint:
            return  # the model changed meanwhile
        self.state, self.collection, self.done, self.total, self.since = "embedding", name, 0, total, time.time()
        started = time.monotonic()
        lock = self._semantic.embed_lock
        while True:
            if lock.locked():
                self.state = "paused"  # a manual `embed` runs; this one goes on after it
            async with lock:
                self.state = "embedding"
                if (await self._s.embedder.call(ModelStatus()))["fingerprint"] != fingerprint:
                    return  # `model use` switched models between two pages
                self.total += await trio.to_thread.run_sync(backlog.grow, reader)
                page = await trio.to_thread.run_sync(backlog.next_page, reader, BACKGROUND_PAGE)
                if not page:
                    break
                await self._semantic.embed_page(fingerprint, page)
            self.done += len(page)
        self._embedded_through[key] = backlog.top
        await self._s.vectors.call(SaveSnapshot())
        seconds = round(time.monotonic() - started, 3)
        self.last_run = {"collection": name, "embedded": self.done, "seconds": seconds, "finished_at": time.time()}
        self.last_error = None
        log.info("collection %s: embedded %d new chunk(s) in %.2fs", name, self.done, seconds)


class Backlog:
    """A collection's chunks still to look at, as a stack of id ranges: the chunks indexed while a run goes
    on are pushed on top, so the newest are always embedded first (chunk ids only grow: AUTOINCREMENT)."""

    def __init__(self, fingerprint: str, collection_id: int, through: int) -> None:
        self.fingerprint = fingerprint
        self.collection_id = collection_id
        self.top = through  # the highest chunk id taken in
        self._ranges: list[tuple[int, int]] = []  # (above, below): the ids strictly between

    def grow(self, conn: sqlite3.Connection) -> int:
        """Take in the chunks indexed since the last look; returns how many of them lack a vector."""
        latest = emb.last_chunk_id(conn)
        if latest <= self.top:
            return 0
        pending = emb.count_pending(conn, self.fingerprint, [self.collection_id], self.top, latest)
        if pending:
            self._ranges.append((self.top, latest + 1))
        self.top = latest
        return pending

    def next_page(self, conn: sqlite3.Connection, limit: int) -> list[PendingChunk]:
        """The newest chunks without a vector, from the most recent range that has any."""
        while self._ranges:
            above, below = self._ranges[-1]
            page = emb.newest_pending_chunks(conn, self.fingerprint, above, below, limit, [self.collection_id])
            if page:
                self._ranges[-1] = (above, page[-1].chunk_id)
                return page
            self._ranges.pop()
        return []
