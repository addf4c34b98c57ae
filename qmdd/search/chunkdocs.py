"""Which document each chunk belongs to, remembered for the vector index, which knows only chunks
while `vsearch` and `query` rank documents.

A chunk's document never changes: chunk ids are never reused (SQLite AUTOINCREMENT) and no chunk is
ever moved (an edited document gets new chunks). So what SQLite said of a chunk once stays true, and a
chunk found gone stays gone. Asking SQLite afresh on every query read ~150 rows by primary key per
`query` (0.35 ms, plus 0.2 ms building the answer, on the event loop); an array indexed by chunk id
answers them in microseconds: 8 bytes per id up to the largest (1M chunks: 8 MB). The vectors actor
fills it from SQLite once after loading, and as vectors arrive (their rows name the document anyway);
a chunk it still lacks is asked about on its first hit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from qmdd.search.vectorindex import VectorHit

UNKNOWN = -1  # not asked yet
GONE = -2  # removed from SQLite: never comes back


class NearChunk(NamedTuple):
    doc_id: int
    chunk_id: int
    similarity: float  # cosine similarity, -1..1


class ChunkDocs:
    def __init__(self) -> None:
        self._doc_of = np.empty(0, dtype=np.int64)

    def learn(self, chunk_ids: np.ndarray, doc_ids: np.ndarray) -> None:
        """What SQLite holds (read all at once, in the background): chunks not yet known get their
        document; one removed meanwhile (`forget`) stays gone."""
        if chunk_ids.size:
            self._reserve(int(chunk_ids.max()))
            unknown = self._doc_of[chunk_ids] == UNKNOWN
            self._doc_of[chunk_ids[unknown]] = doc_ids[unknown]

    def _reserve(self, largest: int) -> None:
        if largest >= len(self._doc_of):
            grown = np.full(max(largest + 1, 2 * len(self._doc_of)), UNKNOWN, dtype=np.int64)
            grown[:len(self._doc_of)] = self._doc_of
            self._doc_of = grown

    def documents(self, chunk_ids: Sequence[int], fetch: Callable[[list[int]], dict[int, int]]) -> list[int]:
        """Each chunk's document id (GONE for a removed chunk). `fetch` answers for chunks never asked
        about: chunk id -> document id for those that exist."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if not ids.size:
            return []
        self._reserve(int(ids.max()))
        found = self._doc_of[ids]
        if (found == UNKNOWN).any():
            missing = np.unique(ids[found == UNKNOWN]).tolist()
            owners = fetch(missing)
            self._doc_of[missing] = [owners.get(chunk, GONE) for chunk in missing]
            found = self._doc_of[ids]
        return found.tolist()

    def forget(self, chunk_ids: Sequence[int]) -> None:
        """These chunks were removed (perhaps while `learn`'s read was under way)."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if ids.size:
            self._reserve(int(ids.max()))
            self._doc_of[ids] = GONE

    def best_per_document(self, hits: Sequence[VectorHit],
                          fetch: Callable[[list[int]], dict[int, int]]) -> list[NearChunk]:
        """The hits (best first) reduced to each document's first, removed chunks left out."""
        seen: set[int] = set()
        out = []
        for hit, doc_id in zip(hits, self.documents([h.chunk_id for h in hits], fetch), strict=True):
            if doc_id >= 0 and doc_id not in seen:
                seen.add(doc_id)
                out.append(NearChunk(doc_id, hit.chunk_id, hit.similarity))
        return out

    def statistics(self) -> dict[str, int]:
        return {"chunk_documents_bytes": self._doc_of.nbytes}
