"""One request's reads of chunks and documents: each row read from SQLite once, however many of the
request's steps need it (phrase evidence, collapsing, results).

A search reads its top chunks' phrase terms (their texts where none are stored) to re-score them, what
tells copies apart of its hits' documents to collapse them, then the shown hits' chunks and whole
document rows for their results; read through this, a later step finds read what an earlier one read.
A request's steps run one after another (some in a worker thread), never at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import TypeVar

from qmdd.store import chunkterms
from qmdd.store import documents as docs
from qmdd.store.documents import ChunkText, DocMarks, DocRow

R = TypeVar("R")


class Reads:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._chunks: dict[int, ChunkText | None] = {}  # None: no such chunk (removed meanwhile)
        self._docs: dict[int, DocRow | None] = {}
        self._marks: dict[int, DocMarks | None] = {}
        self._terms: dict[int, tuple[bytes | None] | None] = {}  # a chunk's row: (its stored terms,)

    def chunk_texts(self, ids: Iterable[int]) -> dict[int, ChunkText]:
        """The chunks, their documents' rows read with them (a result shows both)."""
        return _read_through(self._chunks, ids, self._chunks_and_documents)

    def documents(self, ids: Iterable[int]) -> dict[int, DocRow]:
        return _read_through(self._docs, ids, lambda missing: docs.docs_by_ids(self.conn, missing))

    def marks(self, ids: Iterable[int]) -> dict[int, DocMarks]:
        """What collapsing copies needs of each document: less than `documents` reads."""
        return _read_through(self._marks, ids, lambda missing: docs.marks_by_ids(self.conn, missing))

    def phrase_terms(self, ids: Iterable[int]) -> dict[int, bytes | None]:
        """Each existing chunk's stored phrase terms (None: not stored yet), their documents' marks read
        with them (collapsing comes next)."""
        rows = _read_through(self._terms, ids, self._terms_and_marks)
        return {i: row[0] for i, row in rows.items()}

    def _chunks_and_documents(self, ids: list[int]) -> dict[int, ChunkText]:
        found = {}
        for chunk, doc in docs.chunks_with_documents(self.conn, ids):
            found[chunk.chunk_id] = chunk
            self._docs.setdefault(doc.id, doc)
        return found

    def _terms_and_marks(self, ids: list[int]) -> dict[int, tuple[bytes | None]]:
        found: dict[int, tuple[bytes | None]] = {}
        for chunk_id, (terms, marks) in chunkterms.read_terms(self.conn, ids).items():
            found[chunk_id] = (terms,)
            self._marks.setdefault(marks.id, marks)
        return found


def _read_through(read: dict[int, R | None], ids: Iterable[int],
                  fetch: Callable[[list[int]], dict[int, R]]) -> dict[int, R]:
    """The rows of `ids` that exist, fetching only those not read yet (and remembering the absent)."""
    wanted = list(dict.fromkeys(ids))
    if missing := [i for i in wanted if i not in read]:
        found = fetch(missing)
        read.update((i, found.get(i)) for i in missing)
    return {i: row for i in wanted if (row := read[i]) is not None}
