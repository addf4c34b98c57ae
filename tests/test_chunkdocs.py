"""ChunkDocs: chunk -> document, asked of SQLite once per chunk, removals remembered."""

from __future__ import annotations

import numpy as np

from qmdd.search.chunkdocs import GONE, ChunkDocs, NearChunk
from qmdd.search.vectorindex import VectorHit


class Store:
    """What SQLite holds (chunk -> document), counting what is asked of it."""

    def __init__(self, owners: dict[int, int]) -> None:
        self.owners = owners
        self.asked: list[list[int]] = []

    def fetch(self, ids: list[int]) -> dict[int, int]:
        self.asked.append(sorted(ids))
        return {i: self.owners[i] for i in ids if i in self.owners}


def test_each_chunk_is_asked_about_once() -> None:
    store = Store({1: 10, 2: 10, 5: 20, 900: 30})
    known = ChunkDocs()
    assert known.documents([5, 1, 5, 900], store.fetch) == [20, 10, 20, 30]
    assert store.asked == [[1, 5, 900]]
    assert known.documents([2, 1, 7], store.fetch) == [10, 10, GONE]  # 7 does not exist
    assert store.asked == [[1, 5, 900], [2, 7]]
    assert known.documents([7, 2, 900], store.fetch) == [GONE, 10, 30]  # all known now
    assert len(store.asked) == 2
    assert known.documents([], store.fetch) == []


def test_a_removed_chunk_stays_gone() -> None:
    store = Store({1: 10, 2: 11})
    known = ChunkDocs()
    known.documents([1, 2], store.fetch)
    known.forget([2, 12_345])  # 12,345 was never asked about
    del store.owners[2]
    assert known.documents([1, 2, 12_345], store.fetch) == [10, GONE, GONE]
    assert len(store.asked) == 1


def test_best_per_document_keeps_each_documents_first_hit() -> None:
    store = Store({1: 10, 2: 10, 3: 20, 4: 30})
    hits = [VectorHit(2, 0.9), VectorHit(3, 0.8), VectorHit(1, 0.7), VectorHit(9, 0.65), VectorHit(4, 0.6)]
    assert ChunkDocs().best_per_document(hits, store.fetch) == [
        NearChunk(10, 2, 0.9), NearChunk(20, 3, 0.8), NearChunk(30, 4, 0.6)]  # 9 is gone
    assert ChunkDocs().best_per_document([], store.fetch) == []


def test_learning_all_at_once_keeps_what_was_removed_meanwhile() -> None:
    store = Store({})
    known = ChunkDocs()
    known.forget([3])  # removed after the bulk read began
    known.learn(np.array([1, 3, 4], dtype=np.int64), np.array([10, 30, 40], dtype=np.int64))
    assert known.documents([4, 3, 1], store.fetch) == [40, GONE, 10]
    assert store.asked == []
    known.learn(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
