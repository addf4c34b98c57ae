"""One request's reads of chunks and documents: each row read from SQLite once, however many of the
request's steps need it (phrase evidence, collapsing, results).

A search reads its top chunks to re-score them, the documents of its hits to collapse copies, then the
shown hits' chunks and documents again for their snippets; read through this, the later steps find
them read. A request's steps run one after another (some in a worker thread), never at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from qmdd.store import documents as docs
from qmdd.store.documents import ChunkText, DocRow


class Reads:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._chunks: dict[int, ChunkText | None] = {}  # None: no such chunk (removed meanwhile)
        self._docs: dict[int, DocRow | None] = {}

    def chunk_texts(self, ids: Iterable[int]) -> dict[int, ChunkText]:
        wanted = list(dict.fromkeys(ids))
        if missing := [i for i in wanted if i not in self._chunks]:
            found = {c.chunk_id: c for c in docs.chunk_texts(self.conn, missing)}
            self._chunks.update((i, found.get(i)) for i in missing)
        return {i: chunk for i in wanted if (chunk := self._chunks[i]) is not None}

    def documents(self, ids: Iterable[int]) -> dict[int, DocRow]:
        wanted = list(dict.fromkeys(ids))
        if missing := [i for i in wanted if i not in self._docs]:
            found = docs.docs_by_ids(self.conn, missing)
            self._docs.update((i, found.get(i)) for i in missing)
        return {i: row for i in wanted if (row := self._docs[i]) is not None}
