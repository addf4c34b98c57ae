"""Embed jobs actor: embeds chunks a page at a time, for `embed` and in the background.

A page goes from SQLite to the embedder (at bulk priority, behind every query), then to the indexer,
which commits it and has the vectors actor index it: each page is kept, so a daemon that is stopped or
killed mid-run still makes progress, and a run started again does only what is left.

`qmdctl embed -c X` chooses X, a bare `embed` every collection there is; the choice is kept in SQLite
(`embed_choices`). In the background (with the watcher), each chosen collection with chunks that lack a
vector is embedded at start (what a stopped or killed run left) and whenever the watcher has indexed
new chunks: the chunks indexed last first, and chunks indexed while it runs before the older backlog,
so a note just saved never waits behind a checkout of thousands. One writer of vectors at a time: a
manual run holds the lock for its whole run (a second one waits, then finds the work done), the
background for one page; the lock is fair, so a manual embed waits for one background page at most.
Nothing runs in the background until vectors exist for the model in use: after a model change the user
says when to pay for re-embedding.

`embed -f` re-embeds every chunk of its collections in place: each page replaces vectors (old ones serve
until then), and `embed-force.json` beside the database records how far it got, so the same run started
again after a crash or a `--timeout` goes on from there. Meanwhile no vector snapshot is written (a
snapshot could hold vectors SQLite has replaced): a daemon killed mid-run rebuilds it from SQLite.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import outcome
import trio

from qmdd import faults
from qmdd.actors.base import DatabaseActor, Handler, Mailbox, concurrent, offer_progress, typed_outcome
from qmdd.actors.messages import (
    CatchUp,
    ChooseForEmbedding,
    ChunksIndexed,
    EmbedCollections,
    EmbedJobsStatus,
    EmbedTexts,
    ModelStatus,
    SaveSnapshot,
    SetFingerprint,
    StoreEmbeddings,
    SuspendSnapshots,
)
from qmdd.chunking import embedding_text
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb
from qmdd.store.embeddings import PendingChunk

log = logging.getLogger("qmdd.embed_jobs")

# Chunks per page of a manual run: ~1 s of CPU here; the embedder's batcher splits a page by tokens.
EMBED_PAGE = 128
# Chunks per background page: ~0.7 s of CPU here, the longest a manual embed waits for the background.
BACKGROUND_PAGE = 32


class EmbedJobsActor(DatabaseActor):
    name = "embed_jobs"

    def __init__(self, database: Path, embedder: Mailbox, indexer: Mailbox, vectors: Mailbox, *,
                 background: bool) -> None:
        super().__init__(database)
        self._embedder = embedder
        self._indexer = indexer
        self._vectors = vectors
        self._background = background
        self._lock = trio.Lock()  # one writer of vectors at a time; fair (see the module's docstring)
        self._reading = trio.CapacityLimiter(1)  # the connection: the manual run and the background share it
        self._wake = trio.Event()
        self._woken: int | None = None  # the collection whose change woke the background first
        self.state = "idle" if background else "off"
        self.collection: str | None = None
        self.done = 0
        self.total = 0
        self.since: float | None = None
        self.last_run: dict[str, Any] | None = None
        self.last_error: str | None = None
        # The manual run in progress (for `status`): its collections, whether it re-embeds (`-f`), the chunks
        # it embeds and how many are done.
        self.manual: dict[str, Any] | None = None
        # (fingerprint, collection id) -> a chunk id up to which every chunk of the collection has a vector,
        # so a wake-up after one saved note counts the chunks above it, not the whole collection again.
        self._embedded_through: dict[tuple[str, int], int] = {}
        self._force_progress = ForceProgress(database.with_name("embed-force.json"))

    def handlers(self) -> dict[type, Handler]:
        # A manual run lasts minutes: status and the watcher's wake-ups are answered meanwhile.
        return {EmbedCollections: concurrent(self._embed), ChunksIndexed: self._chunks_indexed,
                CatchUp: self._catch_up_again, EmbedJobsStatus: self._status}

    async def setup(self) -> None:
        await super().setup()
        if self._background:
            # What a stopped or killed run left of a chosen collection's backlog is taken up at start,
            # not only at the next change of its files.
            self._wake.set()
            self.nursery.start_soon(self._keep_embedded)

    def extra_statistics(self) -> dict[str, Any]:
        return {"state": self.state, "collection": self.collection}

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, self.conn, *args, limiter=self._reading)

    async def _status(self, _: EmbedJobsStatus) -> dict[str, Any]:
        busy = self.state in ("embedding", "paused")
        return {"state": self.state, "collection": self.collection if busy else None,
                "done": self.done if busy else None, "total": self.total if busy else None,
                "since": self.since if busy else None, "last_run": self.last_run, "last_error": self.last_error,
                "manual": dict(self.manual) if self.manual else None}

    async def _embed_page(self, fingerprint: str, page: Sequence[PendingChunk]) -> int:
        """Embed, store and index one page of chunks (at bulk priority); returns the texts embedded."""
        await faults.pause("embed.page")
        unique: dict[str, str] = {}
        for chunk in page:  # identical texts (copies, boilerplate) are embedded once
            unique.setdefault(chunk.hash, embedding_text(chunk.title, chunk.heading_path, chunk.text))
        hashes = list(unique)
        vectors = await self._embedder.call(EmbedTexts(list(unique.values()), "bulk", "passage"))
        await self._indexer.call(StoreEmbeddings(fingerprint, hashes, vectors))
        return len(hashes)

    # --- a manual run ----------------------------------------------------------------------------

    async def _embed(self, message: EmbedCollections) -> dict[str, Any]:
        progress = message.progress
        offer_progress(progress, {"phase": "embed", "done": 0, "total": None, "waiting": "loading the model"})
        model = await self._embedder.call(ModelStatus(load=True))
        ids = message.collection_ids or None  # none named: all of them
        names = {c.id: c.name for c in await self._read(docs.list_collections) if ids is None or c.id in ids}
        # The user's choice, kept: the background keeps these collections embedded from now on.
        await self._indexer.call(ChooseForEmbedding(list(names)))
        try:
            return await self._embed_pending(model, ids, list(names.values()), message)
        finally:
            # What a run stopped short left (Ctrl-C, --timeout, a failed page) is the background's from
            # now on, as a killed run's is at the next start: these collections are chosen.
            self._wake.set()

    async def _embed_pending(self, model: dict[str, Any], collection_ids: list[int] | None, names: list[str],
                             run: EmbedCollections) -> dict[str, Any]:
        """Embed every chunk without a vector for `model` (with `run.force`, every chunk) of these
        collections (or of all), a page at a time, each page committed."""
        fingerprint: str = model["fingerprint"]
        name = model["embedding"]
        progress = run.progress
        offer_progress(progress, {"phase": "embed", "done": 0, "total": None, "model": name,
                                  "waiting": "the embed run or background page in progress"})
        async with self._lock:
            await self._vectors.call(SetFingerprint(fingerprint, model["dims"]))
            total, embedded = await self._read(emb.count_chunks, fingerprint, collection_ids)
            started = time.monotonic()
            deadline = None if not run.timeout_s else started + run.timeout_s
            done = texts = after = 0
            if run.force:
                await self._vectors.call(SuspendSnapshots(True))
                after = await trio.to_thread.run_sync(self._force_progress.start, fingerprint, collection_ids)
            todo = total if run.force else total - embedded
            offer_progress(progress, {"phase": "embed", "done": 0, "total": todo, "model": name})
            stopped = None
            running = self.manual = {"collections": names, "force": run.force, "done": 0, "total": todo,
                                     "since": time.time()}
            try:
                while True:
                    page = _cap_bytes(await self._read(_next_page, fingerprint, after, run, collection_ids),
                                      run.page_bytes)
                    if not page:
                        break
                    after = page[-1].chunk_id
                    texts += await self._embed_page(fingerprint, page)
                    if run.force:
                        await trio.to_thread.run_sync(self._force_progress.advance, after)
                    done += len(page)
                    running["done"] = done
                    elapsed = time.monotonic() - started
                    offer_progress(progress, {"phase": "embed", "done": done, "total": todo, "model": name,
                                              "chunks_per_s": round(done / elapsed, 1) if elapsed else None})
                    stopped = "caller gone" if _caller_gone(progress) else (
                        "timeout" if deadline is not None and time.monotonic() >= deadline else None)
                    if stopped:
                        break
            except Exception:
                # A page failed (the embedder gave up): the pages before it are committed and in the
                # index, so snapshots are true again; left suspended, the next start would rebuild all.
                if run.force:
                    await self._vectors.call(SuspendSnapshots(False))
                raise
            finally:
                self.manual = None
            if run.force:
                if stopped is None:
                    await trio.to_thread.run_sync(self._force_progress.finish)
                # Every committed page is in the index now: a snapshot of it is true again.
                await self._vectors.call(SuspendSnapshots(False))
            await self._vectors.call(SaveSnapshot(force=run.force))
        elapsed = time.monotonic() - started
        return {"model": name, "fingerprint": fingerprint, "chunks": total,
                "already_embedded": embedded, "embedded": done, "texts_embedded": texts,
                "seconds": round(elapsed, 3), "chunks_per_s": round(done / elapsed, 1) if done and elapsed else None,
                "force": run.force, "complete": stopped is None,
                # Pages go by chunk id, so a chunk re-indexed meanwhile (a new id) is still embedded: those
                # missing at the end were removed.
                "removed_meanwhile": max(0, todo - done) if stopped is None else 0}

    # --- the background ------------------------------------------------------------------------

    async def _chunks_indexed(self, message: ChunksIndexed) -> None:
        """A wake-up, not a queue: one already pending covers this change too (every chosen collection
        is looked at)."""
        if self._woken is None:
            self._woken = message.collection_id
        self._wake.set()

    async def _catch_up_again(self, _: CatchUp) -> None:
        self._wake.set()

    async def _keep_embedded(self) -> None:
        """Runs while the daemon serves. A failure (no model, an embedder given up on) is logged and shown
        in the status, and waits for the next change: it must never crash this actor into a restart loop.
        A bug still crashes it."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            woken, self._woken = self._woken, None
            ran = await typed_outcome(self._catch_up, woken)
            self.state, self.collection = "idle", None
            # The last attempt's: one that failed because the model changed is not the news after the
            # next one went through.
            self.last_error = f"{ran.error}" if isinstance(ran, outcome.Error) else None
            if isinstance(ran, outcome.Error):
                log.warning("embedding the watcher's changes failed: %s", ran.error)

    async def _catch_up(self, woken: int | None) -> None:
        model = await self._embedder.call(ModelStatus())
        fingerprint = model["fingerprint"]
        if not fingerprint or not await self._read(emb.has_vectors, fingerprint):
            return
        chosen: dict[int, str] = await self._read(emb.chosen_collections)
        for collection_id in sorted(chosen, key=lambda cid: cid != woken):  # the collection that changed first
            await self._embed_collection(fingerprint, collection_id, chosen[collection_id])

    async def _embed_collection(self, fingerprint: str, collection_id: int, name: str) -> None:
        key = (fingerprint, collection_id)
        backlog = Backlog(fingerprint, collection_id, self._embedded_through.get(key, 0))
        total = await self._read(backlog.grow)
        if total == 0:
            self._embedded_through[key] = backlog.top
            return
        if (await self._embedder.call(ModelStatus(load=True)))["fingerprint"] != fingerprint:
            return  # the model changed meanwhile
        self.state, self.collection, self.done, self.total, self.since = "embedding", name, 0, total, time.time()
        started = time.monotonic()
        while True:
            if self._lock.locked():
                self.state = "paused"  # a manual `embed` runs; this one goes on after it
            async with self._lock:
                self.state = "embedding"
                if (await self._embedder.call(ModelStatus()))["fingerprint"] != fingerprint:
                    return  # `model use` switched models between two pages
                self.total += await self._read(backlog.grow)
                page = await self._read(backlog.next_page, BACKGROUND_PAGE)
                if not page:
                    break
                await self._embed_page(fingerprint, page)
            self.done += len(page)
        self._embedded_through[key] = backlog.top
        await self._vectors.call(SaveSnapshot())
        seconds = round(time.monotonic() - started, 3)
        self.last_run = {"collection": name, "embedded": self.done, "seconds": seconds, "finished_at": time.time()}
        self.last_error = None
        log.info("collection %s: embedded %d new chunk(s) in %.2fs", name, self.done, seconds)


def _next_page(conn: sqlite3.Connection, fingerprint: str, after: int, run: EmbedCollections,
               collection_ids: list[int] | None) -> list[PendingChunk]:
    limit = run.page_chunks or EMBED_PAGE
    if run.force:
        return emb.chunks_after(conn, after, limit, collection_ids)
    return emb.pending_chunks(conn, fingerprint, after, limit, collection_ids)


def _cap_bytes(page: list[PendingChunk], page_bytes: int | None) -> list[PendingChunk]:
    """The first chunks of the page whose text fits in `page_bytes` (at least one: a chunk larger than the
    cap goes alone); the rest come with the next page."""
    if page_bytes is None:
        return page
    size = 0
    for i, chunk in enumerate(page):
        size += len(chunk.text.encode("utf-8"))
        if size > page_bytes and i:
            return page[:i]
    return page


class ForceProgress:
    """How far an `embed -f` got, in a small JSON file: the model, the collections (None: all) and the
    last chunk id re-embedded. Started again with the same model and collections, the run goes on
    after that id; with others, it starts over. Removed when a run completes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._run: dict[str, Any] = {}

    def start(self, fingerprint: str, collection_ids: list[int] | None) -> int:
        run = {"fingerprint": fingerprint, "collections": sorted(collection_ids) if collection_ids else None}
        try:
            saved = json.loads(self._path.read_text())
        except (OSError, ValueError):  # none, or torn by a crash: start over
            saved = {}
        resumed = isinstance(saved, dict) and all(saved.get(k) == v for k, v in run.items())
        after = saved.get("after") if resumed else 0
        self._run = {**run, "after": after if isinstance(after, int) else 0}
        self._write()
        return int(self._run["after"])

    def advance(self, after: int) -> None:
        self._run["after"] = after
        self._write()

    def finish(self) -> None:
        self._path.unlink(missing_ok=True)

    def _write(self) -> None:
        temp = self._path.with_name(self._path.name + ".tmp")
        temp.write_text(json.dumps(self._run))
        os.replace(temp, self._path)


def _caller_gone(progress: trio.MemorySendChannel[dict[str, Any]] | None) -> bool:
    """Nobody listens to the run's progress any more: the caller was cancelled (its client left), so the
    run stops after the page it committed, as the call would have."""
    return progress is not None and progress.statistics().open_receive_channels == 0


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
