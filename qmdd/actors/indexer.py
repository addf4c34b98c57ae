"""Indexer actor: the single writer of SQLite. Scans collections and manages collections and contexts.

Scans run in a worker thread; every committed batch is announced to the BM25 actor, and a scan ends
with a snapshot request to it, which doubles as a barrier: when `update` returns, what it indexed is
searchable and persisted. Embedded vectors, likewise, are committed and then handed to the vectors actor.
Chunks' phrase terms are stored beside them in the background, after they are indexed (`store.chunkterms`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import outcome
import trio

from qmdd.actors.base import DatabaseActor, Handler, Mailbox, offer_progress, typed_outcome
from qmdd.actors.collection_rules import check_collection_name, check_new_root, filesystem_error
from qmdd.actors.messages import (
    AddCollection,
    ApplyChunks,
    ChooseForEmbedding,
    Cleanup,
    IndexEmbedded,
    IndexPaths,
    RemoveCollection,
    RenameCollection,
    SaveSnapshot,
    ScanCollections,
    SetCollectionPlugins,
    SetContext,
    StoreEmbeddings,
    VerifyIndex,
)
from qmdd.chunking import CHUNK_RULES, ChunkerConfig
from qmdd.indexing import (
    BatchSink,
    ProgressSink,
    ScanSummary,
    Transforms,
    scan_collection,
    update_paths,
    walk_config,
)
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.registry import PluginRegistry
from qmdd.store import chunkterms, walguard
from qmdd.store import documents as docs
from qmdd.store.contexts import no_context, remove_context, set_context
from qmdd.store.db import compact, connect
from qmdd.store.documents import ChunkText, CollectionRow, collection_not_found
from qmdd.store.embeddings import VECTOR_DTYPE, choose_collections, purge_embeddings, store_vectors
from qmdd.walk import DEFAULT_MASKS, PathFilter, WalkConfig

log = logging.getLogger("qmdd.indexer")

FILL_BATCH = 64  # chunks given phrase terms per transaction of the background fill (~2 ms of work)
# After each batch the fill rests as long as the batch took, leaving the GIL to what starts with the
# daemon and to queries: 100k vectors rebuilt from SQLite beside a fill of 135k chunks took 8.5 s at
# full speed, 4.1 s so (4.1 s with no fill), for a fill twice as long (~8 s).
FILL_PAUSE = 1.0
BACKLOG_LOGGED = 10_000  # a fill of this many chunks is logged (an upgraded index, another tokenizer)


@dataclass(frozen=True)
class PhraseTerms:
    """How chunks' phrase terms are made (`qmdd.search.phrases.stored_terms`), and by which version."""

    make: Callable[[str], bytes]
    version: str


class IndexerActor(DatabaseActor):
    name = "indexer"

    def __init__(self, database: Path, bm25: Mailbox, prepare: Callable[[list[ChunkText]], list[Any]], *,
                 max_file_bytes: int, batch_files: int, chunker: ChunkerConfig | None = None,
                 vectors: Mailbox | None = None, plugins: PluginRegistry | None = None,
                 phrase_terms: PhraseTerms | None = None) -> None:
        super().__init__(database)
        self._bm25 = bm25
        self._vectors = vectors
        self._plugins = plugins
        # Tokenizes a committed batch for BM25 in this actor's worker thread, while the text is at
        # hand: one CPU-bound thread at a time (two would fight over the GIL and stall the I/O).
        self._prepare = prepare
        self._phrase_terms = phrase_terms
        self._terms_wanted = trio.Event()  # chunks were added: the fill has work
        self.phrase_terms_filled = 0
        self._max_file_bytes = max_file_bytes
        self._batch_files = batch_files
        self._chunker = chunker or ChunkerConfig()
        self._writer = trio.CapacityLimiter(1)
        self.scans = 0
        self.path_updates = 0
        self.files_indexed = 0
        self.current: str | None = None
        # Per collection: the settings a PathFilter was built for, and the filter (its ignore files
        # are read lazily and cached, so it is kept between the watcher's batches).
        self._filters: dict[int, tuple[WalkConfig, PathFilter]] = {}

    def handlers(self) -> dict[type, Handler]:
        return {ScanCollections: self._scan, AddCollection: self._add, RemoveCollection: self._remove,
                RenameCollection: self._rename, SetContext: self._context, Cleanup: self._cleanup,
                StoreEmbeddings: self._store_embeddings, IndexPaths: self._index_paths,
                SaveSnapshot: self._checkpoint, ChooseForEmbedding: self._choose_for_embedding,
                SetCollectionPlugins: self._set_plugins}

    def extra_statistics(self) -> dict[str, Any]:
        return {"scans": self.scans, "path_updates": self.path_updates, "files_indexed": self.files_indexed,
                "scanning": self.current, "phrase_terms_filled": self.phrase_terms_filled}

    async def setup(self) -> None:
        await super().setup()
        if self._phrase_terms is not None:
            await trio.to_thread.run_sync(chunkterms.forget_other_versions, self.conn, self._phrase_terms.version)
            self.nursery.start_soon(self._fill_phrase_terms, self._phrase_terms.make)

    async def _fill_phrase_terms(self, make: Callable[[str], bytes]) -> None:
        """Chunks get their phrase terms stored here, after they are indexed (making them while
        indexing slowed a full index by a fifth: 30 us a chunk, most of it Python's regex engine):
        those indexed before terms were stored, or by another tokenizer, at start; new ones after each
        scan or change. A batch at a time, between scans, on a connection of its own (handlers use this
        actor's). Until a chunk has its terms a search works them out from its text, with the same
        result. Chunk ids only grow, so walking them forward finds every chunk once."""
        conn = await trio.to_thread.run_sync(connect, self._database)
        after = 0

        def fill() -> int | None:
            rows = chunkterms.without_terms(conn, after, FILL_BATCH)
            chunkterms.store_terms(conn, [(chunk, make(text)) for chunk, text in rows])
            self.phrase_terms_filled += len(rows)
            return rows[-1][0] if rows else None

        try:
            while True:
                started, before = time.monotonic(), self.phrase_terms_filled
                while True:
                    batch_started = time.monotonic()
                    if (last := await trio.to_thread.run_sync(fill, limiter=self._writer)) is None:
                        break
                    after = last
                    await trio.sleep(FILL_PAUSE * (time.monotonic() - batch_started))
                if self.phrase_terms_filled - before >= BACKLOG_LOGGED:
                    log.info("phrase terms stored for %d chunks in %.1fs", self.phrase_terms_filled - before,
                             time.monotonic() - started)
                await self._terms_wanted.wait()
                self._terms_wanted = trio.Event()
        finally:
            conn.close()

    def _want_terms(self) -> None:
        self._terms_wanted.set()  # in trio's thread: never the event the fill has just replaced

    async def _write(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._writer)

    async def _scan(self, message: ScanCollections) -> list[dict[str, object]]:
        collections = docs.list_collections(self.conn)
        if message.names:
            known = {c.name for c in collections}
            for name in message.names:
                if name not in known:
                    raise collection_not_found(name)
            collections = [c for c in collections if c.name in message.names]
        progress = message.progress
        summaries: list[ScanSummary] = []
        on_batch = self._batch_sink()

        def on_progress(event: dict[str, object]) -> None:
            if progress is not None:
                trio.from_thread.run_sync(offer_progress, progress, event)

        failures: list[dict[str, object]] = []
        for collection in collections:
            self.current = collection.name
            self._filters.pop(collection.id, None)  # its ignore files may have changed
            try:
                config = walk_config(collection.masks, collection.excludes, self._max_file_bytes)
                summary = await self._write(self._scan_one, collection, config, on_batch, on_progress)
            except QmddError as exc:
                # One unmounted or unreadable root must not stop the other collections' updates.
                if len(collections) == 1:
                    raise
                failures.append({"collection": collection.name, "error": exc.to_wire()})
                continue
            finally:
                self.current = None
            self.scans += 1
            self.files_indexed += summary.indexed
            summaries.append(summary)
            log.info("scanned %s: %d files, %d indexed, %d removed, %d problems in %.2fs", collection.name,
                     summary.files, summary.indexed, summary.removed, len(summary.problems), summary.seconds)
        await self._save_snapshots()
        return [s.to_wire() for s in summaries] + failures

    def _batch_sink(self) -> BatchSink:
        """Announces a committed batch to BM25 and vectors; called from the scan's worker thread."""
        bm25, vectors, prepare = self._bm25, self._vectors, self._prepare

        def on_batch(added: list[ChunkText], removed: list[int]) -> None:
            if added:
                trio.from_thread.run_sync(self._want_terms)
            # Awaited, for back-pressure: queued batches of term-frequency dicts would otherwise
            # pile up in BM25's inbox (hundreds of MB on a large tree). BM25 only adds arrays here.
            added_ids = [c.chunk_id for c in added]
            trio.from_thread.run(bm25.call, ApplyChunks(added_ids, removed, prepare(added)))
            if vectors is not None:
                trio.from_thread.run(vectors.call, ApplyChunks(added_ids, removed))

        return on_batch

    async def _index_paths(self, message: IndexPaths) -> dict[str, object] | None:
        """The watcher's changes. Searchable on return; the snapshots are saved later, on the watcher's
        `SaveSnapshot` after a quiet spell (SQLite is the truth, so a crash before then loses nothing)."""
        collection = docs.collection_by_id(self.conn, message.collection_id)
        if collection is None:
            return None  # removed while its changes were on the way
        config = walk_config(collection.masks, collection.excludes, self._max_file_bytes)
        summary = None
        self.current = collection.name
        try:
            if not message.full:
                path_filter = await trio.to_thread.run_sync(self._path_filter, collection, config)
                summary = await self._write(self._update_one, collection, path_filter, list(message.changes))
            if summary is None:
                self._filters.pop(collection.id, None)  # ignore files may have changed
                summary = await self._write(self._scan_one, collection, config, self._batch_sink(), lambda _: None)
                self.scans += 1
            else:
                self.path_updates += 1
        finally:
            self.current = None
        self.files_indexed += summary.indexed
        return summary.to_wire()

    def _update_one(self, collection: CollectionRow, path_filter: PathFilter,
                    relpaths: list[str]) -> ScanSummary | None:
        try:
            return update_paths(self.conn, collection, path_filter, relpaths, max_file_bytes=self._max_file_bytes,
                                batch_files=self._batch_files, chunker=self._chunker, on_batch=self._batch_sink(),
                                transforms=self._transforms(collection))
        except OSError as exc:  # the root vanished or was replaced since the watcher saw the change
            raise filesystem_error(exc, f"root of collection {collection.name!r} ({collection.root})") from None

    def _path_filter(self, collection: CollectionRow, config: WalkConfig) -> PathFilter:
        cached = self._filters.get(collection.id)
        if cached is None or cached[0] != config:
            try:
                cached = (config, PathFilter(Path(collection.root), config))
            except OSError as exc:
                raise filesystem_error(exc, f"root of collection {collection.name!r} ({collection.root})") from None
            self._filters[collection.id] = cached
        return cached[1]

    async def _checkpoint(self, message: SaveSnapshot) -> bool:
        await self._save_snapshots()
        return True

    async def _save_snapshots(self) -> None:
        await self._bm25.call(SaveSnapshot())
        if self._vectors is not None:
            await self._vectors.call(SaveSnapshot())

    def _scan_one(self, collection: CollectionRow, config: WalkConfig, on_batch: BatchSink,
                  on_progress: ProgressSink) -> ScanSummary:
        def scan(row: CollectionRow) -> tuple[ScanSummary, str]:
            transforms = self._transforms(row)
            return scan_collection(self.conn, row, config, batch_files=self._batch_files, chunker=self._chunker,
                                   on_batch=on_batch, on_progress=on_progress,
                                   checkpoint=trio.from_thread.check_cancelled, transforms=transforms), transforms.key

        try:
            summary, key = scan(collection)
            if self._transforms(collection).key != key:
                # A transform was disabled (or enabled) meanwhile: what it indexed is redone now.
                log.info("the transforms of %s changed during its scan; scanning it again", collection.name)
                summary, _ = scan(docs.collection_by_id(self.conn, collection.id) or collection)
            return summary
        except OSError as exc:  # the root itself vanished or became unreadable mid-scan
            raise filesystem_error(exc, f"root of collection {collection.name!r} ({collection.root})") from None

    def _transforms(self, collection: CollectionRow) -> Transforms:
        """The transform plugins the collection runs now (installed and enabled), as the scan applies them."""
        if self._plugins is None or not collection.plugins:
            return Transforms()
        chain, key = self._plugins.transform_chain(collection.plugins)
        if chain is None:
            return Transforms()

        return Transforms(lambda documents: chain([(f"{collection.name}/{path}", text) for path, text in documents]),
                          key)

    async def _set_plugins(self, message: SetCollectionPlugins) -> dict[str, object]:
        row = await self._write(docs.set_collection_plugins, self.conn, message.collection, message.plugins)
        return {"collection": row.name, "plugins": list(row.plugins)}

    async def _add(self, message: AddCollection) -> dict[str, object]:
        name = check_collection_name(message.name)
        existing = docs.list_collections(self.conn)
        if any(c.name == name for c in existing):
            raise QmddError(ErrorCode.COLLECTION_EXISTS, f"a collection named {name!r} already exists")
        masks = message.masks or list(DEFAULT_MASKS)
        root, root_key = await trio.to_thread.run_sync(check_new_root, message.path, masks, message.excludes,
                                                       existing)
        walk_config(masks, message.excludes, self._max_file_bytes)
        if message.dry_run:
            return {"name": name, "root": str(root), "masks": masks, "excludes": list(message.excludes)}
        row = await self._write(docs.add_collection, self.conn, name, str(root), masks, message.excludes, root_key,
                                CHUNK_RULES)
        await self._save_collections()
        return {"name": row.name, "root": row.root, "masks": list(row.masks), "excludes": list(row.excludes)}

    async def _remove(self, message: RemoveCollection) -> dict[str, object]:
        removed = await self._write(docs.remove_collection, self.conn, message.name)
        await self._save_collections()
        if removed:
            await self._bm25.call(ApplyChunks([], removed))
            if self._vectors is not None:
                await self._vectors.call(ApplyChunks([], removed))
        await self._save_snapshots()
        return {"name": message.name, "chunks_removed": len(removed)}

    async def _rename(self, message: RenameCollection) -> dict[str, object]:
        new = check_collection_name(message.new)
        if message.dry_run:
            old = docs.collection_by_name(self.conn, message.old)
            if new != old.name and any(c.name == new for c in docs.list_collections(self.conn)):
                raise docs.name_taken(new)
            return {"name": new, "root": old.root}
        row = await self._write(docs.rename_collection, self.conn, message.old, new)
        await self._save_collections()
        return {"name": row.name, "root": row.root}

    async def _context(self, message: SetContext) -> bool:
        collection_id = None
        if message.collection is not None:
            collection_id = docs.collection_by_name(self.conn, message.collection).id
        if message.text is None:
            removed: bool = await self._write(remove_context, self.conn, collection_id, message.prefix)
            if not removed:
                raise no_context(message.collection, message.prefix)
            await self._save_collections()
            return removed
        await self._write(set_context, self.conn, collection_id, message.prefix, message.text)
        await self._save_collections()
        return True

    async def _save_collections(self) -> None:
        """What a lost WAL would take with it, kept beside the database (see qmdd.store.walguard). The
        change itself is committed: a full disk here only costs the record, and is logged."""
        saved = await typed_outcome(self._write, walguard.save_collections, self.conn, self._database)
        if isinstance(saved, outcome.Error):
            log.warning("collections not recorded beside the index: %s", saved.error)

    async def _store_embeddings(self, message: StoreEmbeddings) -> int:
        """Commit a page of vectors, then have them indexed: searchable when this returns."""
        stored = np.asarray(message.vectors, dtype=VECTOR_DTYPE)
        await self._write(store_vectors, self.conn, message.fingerprint, message.hashes, stored)
        if self._vectors is not None:
            await self._vectors.call(IndexEmbedded(message.fingerprint, message.hashes, message.vectors))
        return len(message.hashes)

    async def _choose_for_embedding(self, message: ChooseForEmbedding) -> None:
        await self._write(choose_collections, self.conn, message.collection_ids)

    async def _cleanup(self, message: Cleanup) -> dict[str, object]:
        def vacuum() -> tuple[int, int, int]:
            before = self._database.stat().st_size
            purged = purge_embeddings(self.conn, message.keep_fingerprints)
            docs.drop_orphan_problems(self.conn)
            compact(self.conn)
            return before, self._database.stat().st_size, purged

        before, after, purged = await self._write(vacuum)
        repaired = await self._bm25.call(VerifyIndex())
        await self._bm25.call(SaveSnapshot(force=True))
        answer: dict[str, object] = {"database_bytes_before": before, "database_bytes_after": after,
                                     "bm25_repaired": repaired, "embeddings_purged": purged}
        if walguard.has_notice(self.conn):
            # A lost WAL: rescan everything once more, and only then stop reporting it.
            await self._scan(ScanCollections())
            await self._write(docs.clear_index_notice, self.conn, walguard.NOTICE_KEY)
            log.info("rescanned every collection after the lost WAL; notice cleared")
        if self._vectors is not None:
            answer["vectors_repaired"] = await self._vectors.call(VerifyIndex())
            await self._vectors.call(SaveSnapshot(force=True))
        return answer


def incomplete_add_error(name: str, indexed: int, total: int | None, cause: QmddError) -> QmddError:
    """The answer to an add whose first scan failed on storage (a full disk): the collection stays
    registered with what was committed, and an update, which skips what is indexed, completes it."""
    done = f"{indexed:,} of {total:,}" if total is not None else f"{indexed:,}"
    return QmddError(
        ErrorCode.STORAGE_ERROR,
        f"collection {name!r} is registered, but its first scan stopped with {done} files indexed: {cause.message}",
        hints=(f"Free space where the index lives, then run `qmdctl update -c {name}` to index the rest.",
               f"What is indexed is searchable meanwhile; `qmdctl collection remove {name}` drops it instead."),
        details={"collection": name, "registered": True, "indexed": indexed, "total": total})
