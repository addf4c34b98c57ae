"""Vector actor: owns the vector index of chunk vectors for the embedding model in use.

Like BM25's index it is derived data. Truth is SQLite: a chunk is indexed exactly when its text hash
has a vector under the current model fingerprint. On start (and on a model change) the snapshot is
loaded if it was made for this database and fingerprint, then reconciled with SQLite by chunk id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio
from pyroaring import BitMap

from qmdd import faults
from qmdd.actors.base import DerivedIndexActor, Generation, Handler, concurrent
from qmdd.actors.messages import (
    ApplyChunks,
    IndexEmbedded,
    SaveSnapshot,
    SetFingerprint,
    SuspendSnapshots,
    VectorCoverage,
    VectorQuery,
    VerifyIndex,
)
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.chunkdocs import ChunkDocs, NearChunk
from qmdd.search.vectorindex import VectorIndex, VectorSnapshotError
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb
from qmdd.store.embeddings import IndexedVector

log = logging.getLogger("qmdd.vectors")

READY_WAIT_S = 2.0
# Vectors added per hold of the index lock, which queries wait for: ~1.5 ms at 100k vectors (a
# re-quantization, rare, takes 0.2 s there; see vectorindex).
ADD_SLICE = 256


class VectorsActor(DerivedIndexActor):
    name = "vectors"
    snapshot_errors = (VectorSnapshotError,)

    def __init__(self, database: Path, snapshot: Path, database_id: str, fingerprint: str | None,
                 dims: int, *, generation: Generation | None = None) -> None:
        super().__init__(database, snapshot, generation)
        self._database_id = database_id
        self.fingerprint = fingerprint
        self.index = VectorIndex(dims) if dims else None
        self._chunk_docs = ChunkDocs()  # hits are answered per document
        # Set once the snapshot is loaded and reconciled. Until then the daemon already serves
        # everything else: rebuilding 100k vectors from SQLite takes ~15 s, and keyword search must
        # not wait for it.
        self._ready = trio.Event()
        self._any_stored = False  # a vector of this model exists in SQLite (once true, stays true)
        self._snapshots_suspended = False  # an `embed -f` replaces vectors: see SuspendSnapshots
        self.queries = 0

    def handlers(self) -> dict[type, Handler]:
        return {ApplyChunks: self._apply, IndexEmbedded: self._index_embedded, SaveSnapshot: self._save,
                SuspendSnapshots: self._suspend_snapshots,
                VerifyIndex: self._verify, SetFingerprint: self._set_fingerprint,
                # Queries are answered beside index changes; coverage is a glance at the index as it is.
                VectorQuery: concurrent(self._query), VectorCoverage: concurrent(self._coverage)}

    async def wait_until_ready(self) -> None:
        await self._ready.wait()  # changes queue up behind the initial load

    def _expected_meta(self) -> dict[str, Any]:
        return {"database_id": self._database_id, "fingerprint": self.fingerprint}

    async def setup(self) -> None:
        await super().setup()
        if self.fingerprint is None:
            self._ready.set()
            return
        self.nursery.start_soon(self._load_in_background)

    async def _load_in_background(self) -> None:
        await faults.pause("vectors.load")
        seconds = await self.load()
        self._ready.set()
        log.info("vectors ready: %s, %d vectors in %.2fs", self.loaded_from, len(self.index or ()), seconds)
        await self._learn_chunk_documents()

    async def _learn_chunk_documents(self) -> None:
        """Every chunk's document, read once after the index is ready: then queries never wait on
        SQLite for it (chunks embedded later are learned with their vectors)."""
        chunk_ids, doc_ids = await trio.to_thread.run_sync(docs.chunk_documents, self.conn, limiter=self._cpu)
        async with self._lock:
            self._chunk_docs.learn(chunk_ids, doc_ids)

    def extra_statistics(self) -> dict[str, Any]:
        return {"queries": self.queries, "ready": self._ready.is_set(), "loaded_from": self.loaded_from,
                "dirty": self._dirty,
                "fingerprint": self.fingerprint, **(self.index.statistics() if self.index else {"vectors": 0}),
                **self._chunk_docs.statistics()}

    async def _coverage(self, _: VectorCoverage) -> dict[int, int]:
        """collection id -> chunks with a vector in the index, as of the last change searches can see."""
        return self.sizes

    def _collection_sizes(self) -> dict[int, int]:
        return self.index.collection_sizes() if self.index is not None else {}

    def _open_snapshot(self) -> tuple[VectorIndex, dict[str, Any]]:
        return VectorIndex.load(self._snapshot)

    def _install(self, index: VectorIndex) -> None:
        self.index = index

    def _save_index(self) -> None:
        if self.index is not None and self.fingerprint is not None and not self._snapshots_suspended:
            self.index.save(self._snapshot, self._expected_meta())

    def _add_rows(self, rows: Sequence[IndexedVector]) -> int:
        if not rows:
            return 0
        vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype=emb.VECTOR_DTYPE).reshape(len(rows), -1)
        if self.index is None:
            self.index = VectorIndex(vectors.shape[1])
        if vectors.shape[1] != self.index.ndim:
            raise QmddError(ErrorCode.INDEX_NOT_READY, "stored vectors do not match the index dimensions",
                            hints=("Run `qmdctl embed` to re-embed with the current model.",))
        chunk_ids = [r.chunk_id for r in rows]
        self._chunk_docs.learn(np.array(chunk_ids, dtype=np.int64), np.array([r.doc_id for r in rows], dtype=np.int64))
        return self.index.add(chunk_ids, [r.collection_id for r in rows], vectors.astype(np.float32))

    def _reconcile(self) -> tuple[int, int]:
        if self.fingerprint is None:
            return 0, 0
        truth = BitMap(emb.embedded_chunk_ids(self.conn, self.fingerprint))
        have = self.index.keys() if self.index is not None else BitMap()
        extra, missing = have - truth, truth - have
        if extra and self.index is not None:
            self.index.remove(extra)
        missing_ids = list(missing)
        for start in range(0, len(missing_ids), 5000):
            self._add_rows(emb.vectors_for_chunks(self.conn, self.fingerprint, missing_ids[start:start + 5000]))
        return len(missing), len(extra)

    async def _suspend_snapshots(self, message: SuspendSnapshots) -> None:
        async with self._lock:  # not while a snapshot is being written
            self._snapshots_suspended = message.suspended
            if message.suspended:
                self._snapshot.unlink(missing_ok=True)

    async def _set_fingerprint(self, message: SetFingerprint) -> dict[str, int]:
        if message.fingerprint == self.fingerprint:
            return {"added": 0, "removed": 0}
        self.fingerprint = message.fingerprint
        self._any_stored = False
        self.index = VectorIndex(message.dims) if message.dims else None
        self.sizes = self._collection_sizes()
        self.loaded_from = "rebuilt"
        self._snapshot.unlink(missing_ok=True)
        self._generation.advance()  # another model: every semantic answer changes
        return await self._verify(VerifyIndex())

    def _apply_sync(self, message: ApplyChunks) -> None:
        if message.removed:
            self._chunk_docs.forget(message.removed)
            if self.index is not None:
                self.index.remove(message.removed)
        if self.fingerprint is not None and message.added and self._stored_vectors():
            # Chunks whose text was embedded before (a rename, a copy, an edit elsewhere in the file)
            # get their vector back without the model.
            self._add_rows(emb.vectors_for_chunks(self.conn, self.fingerprint, message.added))

    def _stored_vectors(self) -> bool:
        """Does SQLite hold any vector of the current model? Until the first `embed`, indexing a large
        tree must not pay a lookup per chunk for vectors that cannot exist."""
        if not self._any_stored:
            self._any_stored = emb.has_vectors(self.conn, self.fingerprint)
        return self._any_stored

    async def _apply(self, message: ApplyChunks) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._apply_sync, message, limiter=self._cpu)
        self._changed()

    async def _index_embedded(self, message: IndexEmbedded) -> int:
        if message.fingerprint != self.fingerprint:
            return 0
        position = {h: i for i, h in enumerate(message.hashes)}
        carriers = await trio.to_thread.run_sync(emb.chunks_with_hashes, self.conn, message.hashes,
                                                 limiter=self._cpu)
        if not carriers:
            return 0
        vectors = np.asarray(message.vectors, dtype=np.float32)[[position[h] for *_, h in carriers]]
        if self.index is None:
            self.index = VectorIndex(vectors.shape[1])
        index, added = self.index, 0
        for start in range(0, len(carriers), ADD_SLICE):
            part = carriers[start:start + ADD_SLICE]
            async with self._lock:
                added += await trio.to_thread.run_sync(
                    _replace, index, self._chunk_docs, part, vectors[start:start + ADD_SLICE])
        if added:
            self._changed()
        return added

    def _search_sync(self, message: VectorQuery) -> Any:
        """Per vector its nearest documents' best chunks, or what the message's `then` makes of them."""
        assert self.index is not None
        allowed = self.index.allowed_keys(message.collection_ids, message.allowed)
        found: list[list[NearChunk]] = [
            self._chunk_docs.best_per_document(self.index.search(vector, message.limit, allowed),
                                               lambda ids: docs.chunk_owners(self.conn, ids))
            for vector in np.atleast_2d(message.vectors)]
        return found if message.then is None else message.then(found)

    async def _query(self, message: VectorQuery) -> Any:
        with trio.move_on_after(READY_WAIT_S):  # a snapshot loads in well under this
            await self._ready.wait()
        if not self._ready.is_set():
            raise QmddError(ErrorCode.INDEX_NOT_READY, "the vector index is being rebuilt from SQLite",
                            hints=("Retry in a few seconds; `qmdctl status` shows the vectors actor's state.",))
        if self.fingerprint is None or self.index is None or not len(self.index):
            raise QmddError(ErrorCode.INDEX_NOT_READY, "no chunk has a vector yet",
                            hints=("Run `qmdctl embed` to embed the indexed documents.",))
        self.queries += 1
        async with self._lock:
            return await trio.to_thread.run_sync(self._search_sync, message)


def _replace(index: VectorIndex, chunk_docs: ChunkDocs, carriers: list[tuple[int, int, int, str]],
             vectors: np.ndarray) -> int:
    """Give these chunks (id, document, collection, hash) these vectors: an `embed -f` re-embeds chunks
    the index has (for a plain embed none of them is there, and the removal costs a bitmap intersection)."""
    chunk_ids = [chunk for chunk, *_ in carriers]
    chunk_docs.learn(np.array(chunk_ids, dtype=np.int64), np.array([doc for _, doc, _, _ in carriers], dtype=np.int64))
    index.remove(chunk_ids)
    return index.add(chunk_ids, [collection for _, _, collection, _ in carriers], vectors)
