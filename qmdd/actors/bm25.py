"""BM25 actor: owns the in-memory keyword index and its snapshot on disk.

The index is derived data. On start it loads the snapshot (if its fingerprint matches this database
and tokenizer) and then reconciles it with SQLite by chunk id: chunk ids are never reused and a chunk's
text never changes under its id, so equal id sets mean equal indexes, and any difference (a crash
between a SQLite commit and the next snapshot) is repaired by adding or removing just those chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
from pyroaring import BitMap

from qmdd.actors.base import DerivedIndexActor, Generation, Handler, concurrent
from qmdd.actors.messages import ApplyChunks, Bm25Query, ChunkCounts, SaveSnapshot, VerifyIndex
from qmdd.search.bm25index import BM25Index, ChunkHit, SnapshotError
from qmdd.search.fields import index_chunks, query_name_keys, snapshot_meta
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.store import documents as docs
from qmdd.store.documents import ChunkText

log = logging.getLogger("qmdd.bm25")

# A search at most this large runs in the actor's turn on the event loop, the rest in a worker thread
# (`Bm25Actor._query`): a query of up to INLINE_CHARS characters, whose terms have up to INLINE_POSTINGS
# postings (BM25 takes ~0.15 ms + 25 ns a posting: ~1 ms at most) counting the chunks of a filter (a
# filter new to the index costs about as much a chunk), asking for up to INLINE_HITS hits (re-scoring
# and rendering take bounded work a hit: chunks are cut to the model's size, and phrase evidence reads
# TEXT_LIMIT characters of each).
INLINE_CHARS = 1_024
INLINE_POSTINGS = 32_000
INLINE_HITS = 40


class Bm25Actor(DerivedIndexActor):
    name = "bm25"
    snapshot_errors = (SnapshotError,)

    def __init__(self, database: Path, snapshot: Path, database_id: str, *, stem: bool = True,
                 k1: float = 1.3, b: float = 0.55, generation: Generation | None = None) -> None:
        super().__init__(database, snapshot, generation)
        self._tokenizer = Tokenizer(TokenizerConfig(stem=stem))
        self._meta = snapshot_meta(database_id, self._tokenizer, k1, b)
        self.index = BM25Index(k1=k1, b=b)
        self.queries = 0
        self.inline_queries = 0  # of `queries`, run on the event loop (`_query`)

    def handlers(self) -> dict[type, Handler]:
        return {ApplyChunks: self._apply, Bm25Query: self._query, ChunkCounts: concurrent(self._counts),
                SaveSnapshot: self._save, VerifyIndex: self._verify}

    async def setup(self) -> None:
        await super().setup()
        seconds = await self.load()
        log.info("bm25 ready: %s, %d chunks in %.2fs", self.loaded_from, len(self.index.chunk_ids()), seconds)

    def extra_statistics(self) -> dict[str, Any]:
        return {"queries": self.queries, "inline_queries": self.inline_queries, "loaded_from": self.loaded_from,
                "dirty": self._dirty, **self.index.statistics()}

    def _collection_sizes(self) -> dict[int, int]:
        return self.index.collection_sizes()

    def _open_snapshot(self) -> tuple[BM25Index, dict[str, Any]]:
        return BM25Index.load(self._snapshot)

    def _install(self, index: BM25Index) -> None:
        self.index = index

    def _expected_meta(self) -> dict[str, Any]:
        return self._meta

    def _save_index(self) -> None:
        self.index.save(self._snapshot, self._meta)

    def _add(self, chunks: Iterable[ChunkText]) -> None:
        self.index.add(index_chunks(self._tokenizer, chunks))

    def _reconcile(self) -> tuple[int, int]:
        truth = BitMap(docs.all_chunk_ids(self.conn))
        have = self.index.chunk_ids()
        extra = have - truth
        missing = truth - have
        if extra:
            self.index.remove(extra)
        missing_ids = list(missing)
        for start in range(0, len(missing_ids), 5000):
            self._add(docs.chunk_texts(self.conn, missing_ids[start:start + 5000]))
        return len(missing), len(extra)

    def _apply_sync(self, message: ApplyChunks) -> None:
        if message.removed:
            self.index.remove(message.removed)
        # After a restart of this actor, its reconciliation may already hold chunks that a batch
        # queued before the crash announces again: adding is idempotent.
        live = self.index.chunk_ids()
        if message.prepared is not None:
            self.index.add([c for c in message.prepared if c.chunk_id not in live])
            return
        added = list(BitMap(message.added) - live)
        for start in range(0, len(added), 2000):
            self._add(docs.chunk_texts(self.conn, added[start:start + 2000]))

    async def _apply(self, message: ApplyChunks) -> None:
        await trio.to_thread.run_sync(self._apply_sync, message, limiter=self._cpu)
        self._changed()

    def _search_sync(self, message: Bm25Query, weighted: dict[str, int] | None = None) -> Any:
        """The query's terms and hits, or what the message's `then` makes of them."""
        if weighted is None:
            weighted = self._tokenizer.weighted_query_terms(message.text)
        terms, hits = self._hits(message, weighted)
        return (terms, hits) if message.then is None else message.then(terms, hits)

    def _hits(self, message: Bm25Query, weighted: dict[str, int]) -> tuple[list[str], list[ChunkHit]]:
        terms = list(weighted)
        if not terms:
            return terms, []
        allowed = message.allowed
        if message.collection_ids is not None:
            in_collections = BitMap.union(BitMap(), *(self.index.collection_chunks(cid)
                                                      for cid in message.collection_ids))
            allowed = in_collections if allowed is None else allowed & in_collections
        return terms, self.index.search(terms, limit=message.limit, allowed=allowed, explain=message.explain,
                                        term_weights=[float(w) for w in weighted.values()],
                                        names=query_name_keys(self._tokenizer, message.text),
                                        stopwords_only=self._tokenizer.only_stopwords(message.text))

    async def _counts(self, _: ChunkCounts) -> dict[int, int]:
        return self.sizes

    async def _query(self, message: Bm25Query) -> Any:
        """A small search (see INLINE_POSTINGS) runs here, a larger one in a worker thread. Handed to a
        thread, a small one paid two thread wake-ups and two GIL hand-offs, ~0.2 ms (a search for no
        words: 444 -> 201-237 us p50), a third of its work; and a worker running Python holds the GIL,
        and so the event loop, for as long: the loop gets a turn only every switch interval (5 ms),
        or where the worker waits on SQLite. A large one leaves the loop those turns."""
        self.queries += 1
        weighted = None
        if len(message.text) <= INLINE_CHARS and message.limit <= INLINE_HITS:
            weighted = self._tokenizer.weighted_query_terms(message.text)
            if self._work(message, weighted) <= INLINE_POSTINGS:
                self.inline_queries += 1
                return self._search_sync(message, weighted)
        return await trio.to_thread.run_sync(self._search_sync, message, weighted, limiter=self._cpu)

    def _work(self, message: Bm25Query, weighted: dict[str, int]) -> int:
        """What a search reads: its terms' postings, and the chunks its filters let through."""
        work = self.index.postings(weighted)
        if message.allowed is not None:
            work += len(message.allowed)
        if message.collection_ids is not None:
            work += sum(self.sizes.get(cid, 0) for cid in message.collection_ids)
        return work
