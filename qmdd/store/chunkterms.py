"""Each chunk's phrase terms (`chunks.phrase`), stored by the indexer beside the chunk's text so that
phrase matching at search time reads them instead of tokenizing the chunk again.

What they are is not this module's business (`qmdd.search.phrases.stored_terms` makes them); which
tokenizer made them is, as a version string in `meta`: terms made another way are forgotten (NULL),
and NULL means "not stored": the search then works them out from the text, and the indexer fills them
in. A chunk's text never changes (an edited document gets new chunks), so stored terms stay true.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from qmdd.store.db import select_in, transaction
from qmdd.store.documents import MARKS_COLS, DocMarks

VERSION_KEY = "phrase_terms"


def forget_other_versions(conn: sqlite3.Connection, version: str) -> None:
    """Terms stored by another version are dropped (one rewrite of the column, when the tokenizer or
    the format changed); from now on `version` is what is stored."""
    with transaction(conn):
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_KEY,)).fetchone()
        if row is not None and row[0] == version:
            return
        conn.execute("UPDATE chunks SET phrase = NULL WHERE phrase IS NOT NULL")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (VERSION_KEY, version))


def store_terms(conn: sqlite3.Connection, rows: Sequence[tuple[int, bytes]]) -> None:
    """(chunk id, its terms) for chunks that exist; others are skipped."""
    with transaction(conn):
        conn.executemany("UPDATE chunks SET phrase = ? WHERE id = ?", [(terms, chunk) for chunk, terms in rows])


def read_terms(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, tuple[bytes | None, DocMarks]]:
    """chunk id -> (its stored terms (None: not stored), its document's marks), for the chunks that
    exist: a search re-scores its top hits by their terms and then collapses their documents' copies,
    and one statement reads what both need."""
    return {r[0]: (r[1], DocMarks(*r[2:])) for r in select_in(
        conn, f"SELECT k.id, k.phrase, {MARKS_COLS} FROM chunks k JOIN documents d ON d.id = k.doc_id"
              " JOIN collections c ON c.id = d.collection_id WHERE k.id IN ({in})", ids)}


def without_terms(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` chunks past chunk id `after` with no stored terms, as (id, text), in id order:
    walking the ids forward reads each row once, however many batches it takes."""
    return conn.execute("SELECT id, text FROM chunks WHERE id > ? AND phrase IS NULL ORDER BY id LIMIT ?",
                        (after, limit)).fetchall()
