"""Embeddings in SQLite: one row per (embedded text hash, model fingerprint), vectors as float16 bytes.

The vector index is derived from these rows; chunks find their vector through their hash.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from qmdd.store.db import heading_path, placeholders, select_in, transaction

VECTOR_DTYPE = np.float16


class PendingChunk(NamedTuple):
    """A chunk without a vector, with what the model's input is made of (`chunking.embedding_text`)."""

    chunk_id: int
    hash: str  # the hash of that input
    title: str
    heading_path: tuple[str, ...]
    text: str


class IndexedVector(NamedTuple):
    chunk_id: int
    doc_id: int
    collection_id: int
    vector: bytes


# CROSS JOIN keeps SQLite walking the chunks in id order from the cursor: a page then costs the chunks
# between two pages. Left to itself it reads every chunk of a collection filter and sorts them, per page:
# quadratic in the backlog (146 ms a page in a collection of 18k chunks).
def _pending_query(where: str, order: str) -> str:
    return ("SELECT k.id, k.hash, d.title, k.heading, k.text FROM chunks k CROSS JOIN documents d ON d.id = k.doc_id"
            " WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = k.hash AND e.fingerprint = ?)"
            f" AND {where} ORDER BY k.id {order} LIMIT ?")


def _collection_filter(collection_ids: Sequence[int] | None) -> str:
    # Not batched: collections are few, and a page of chunks must come from one statement.
    return f" AND d.collection_id IN ({placeholders(len(collection_ids))})" if collection_ids else ""


def _pending(rows: Iterable[tuple[int, str, str, str, str]]) -> list[PendingChunk]:
    return [PendingChunk(r[0], r[1], r[2], heading_path(r[3]), r[4]) for r in rows]


def pending_chunks(conn: sqlite3.Connection, fingerprint: str, after_id: int, limit: int,
                   collection_ids: Sequence[int] | None = None) -> list[PendingChunk]:
    """Chunks whose text has no vector under `fingerprint`, in id order after `after_id`."""
    return _pending(conn.execute(_pending_query("k.id > ?" + _collection_filter(collection_ids), "ASC"),
                                 (fingerprint, after_id, *(collection_ids or ()), limit)))


def chunks_after(conn: sqlite3.Connection, after_id: int, limit: int,
                 collection_ids: Sequence[int] | None = None) -> list[PendingChunk]:
    """Every chunk, vector or not, in id order after `after_id` (`embed -f` re-embeds them all)."""
    return _pending(conn.execute(
        "SELECT k.id, k.hash, d.title, k.heading, k.text FROM chunks k CROSS JOIN documents d ON d.id = k.doc_id"
        f" WHERE k.id > ?{_collection_filter(collection_ids)} ORDER BY k.id ASC LIMIT ?",
        (after_id, *(collection_ids or ()), limit)))


def newest_pending_chunks(conn: sqlite3.Connection, fingerprint: str, above_id: int, below_id: int, limit: int,
                          collection_ids: Sequence[int]) -> list[PendingChunk]:
    """Chunks without a vector whose ids lie between `above_id` and `below_id`, newest first: chunk ids
    only grow (AUTOINCREMENT), so the highest are the chunks indexed last, the user's latest changes."""
    return _pending(conn.execute(
        _pending_query("k.id > ? AND k.id < ?" + _collection_filter(collection_ids), "DESC"),
        (fingerprint, above_id, below_id, *collection_ids, limit)))


def count_pending(conn: sqlite3.Connection, fingerprint: str, collection_ids: Sequence[int], above_id: int,
                  through_id: int) -> int:
    """Chunks of these collections with ids in (`above_id`, `through_id`] and no vector under `fingerprint`."""
    return int(conn.execute(
        "SELECT count(*) FROM chunks k CROSS JOIN documents d ON d.id = k.doc_id WHERE k.id > ? AND k.id <= ?"
        f"{_collection_filter(collection_ids)} AND NOT EXISTS (SELECT 1 FROM embeddings e"
        " WHERE e.hash = k.hash AND e.fingerprint = ?)",
        (above_id, through_id, *collection_ids, fingerprint)).fetchone()[0])


def last_chunk_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0])


_EMBEDDED = "coalesce(sum(EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = k.hash AND e.fingerprint = ?)), 0)"


def count_chunks(conn: sqlite3.Connection, fingerprint: str,
                 collection_ids: Sequence[int] | None = None) -> tuple[int, int]:
    """(chunks in all, chunks with a vector under `fingerprint`), of these collections or of all."""
    total, embedded = conn.execute(
        f"SELECT count(*), {_EMBEDDED} FROM chunks k JOIN documents d ON d.id = k.doc_id WHERE 1"
        f"{_collection_filter(collection_ids)}", (fingerprint, *(collection_ids or ()))).fetchone()
    return int(total), int(embedded)


def coverage(conn: sqlite3.Connection, fingerprint: str | None) -> dict[int, tuple[int, int]]:
    """collection id -> (chunks, chunks with a vector under `fingerprint`), in one pass over the chunks."""
    return {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(
        f"SELECT d.collection_id, count(*), {_EMBEDDED} FROM chunks k JOIN documents d ON d.id = k.doc_id"
        " GROUP BY d.collection_id", (fingerprint,))}


def choose_collections(conn: sqlite3.Connection, collection_ids: Sequence[int]) -> None:
    """Record that the user chose to embed these collections: the background embedder keeps them embedded."""
    now = time.time()
    with transaction(conn):
        conn.executemany("INSERT OR IGNORE INTO embed_choices (collection_id, chosen_at) VALUES (?, ?)",
                         [(cid, now) for cid in collection_ids])


def chosen_collections(conn: sqlite3.Connection) -> dict[int, str]:
    """id -> name of the collections the user chose to embed, in the order they were added."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT c.id, c.name FROM embed_choices x JOIN collections c ON c.id = x.collection_id ORDER BY c.id")}


def store_vectors(conn: sqlite3.Connection, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
    rows = [(h, fingerprint, np.asarray(v, dtype=VECTOR_DTYPE).tobytes()) for h, v in zip(hashes, vectors, strict=True)]
    with transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO embeddings (hash, fingerprint, vector) VALUES (?, ?, ?)", rows)


def has_vectors(conn: sqlite3.Connection, fingerprint: str | None) -> bool:
    return fingerprint is not None and conn.execute(
        "SELECT EXISTS (SELECT 1 FROM embeddings WHERE fingerprint = ?)", (fingerprint,)).fetchone()[0] == 1


def embedded_chunk_ids(conn: sqlite3.Connection, fingerprint: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT k.id FROM chunks k WHERE EXISTS (SELECT 1 FROM embeddings e"
        " WHERE e.hash = k.hash AND e.fingerprint = ?)", (fingerprint,))]


def vectors_for_chunks(conn: sqlite3.Connection, fingerprint: str, chunk_ids: Sequence[int]) -> list[IndexedVector]:
    return [IndexedVector(*r) for r in select_in(
        conn, "SELECT k.id, k.doc_id, d.collection_id, e.vector FROM chunks k JOIN documents d ON d.id = k.doc_id"
        " JOIN embeddings e ON e.hash = k.hash AND e.fingerprint = ? WHERE k.id IN ({in})", chunk_ids, (fingerprint,))]


def chunks_with_hashes(conn: sqlite3.Connection, hashes: Sequence[str]) -> list[tuple[int, int, int, str]]:
    """(chunk id, document id, collection id, hash) of every chunk carrying one of `hashes`."""
    return [(r[0], r[1], r[2], r[3]) for r in select_in(
        conn, "SELECT k.id, k.doc_id, d.collection_id, k.hash FROM chunks k JOIN documents d ON d.id = k.doc_id"
        " WHERE k.hash IN ({in})", hashes)]


def purge_embeddings(conn: sqlite3.Connection, keep_fingerprints: Sequence[str]) -> int:
    """Drop vectors of texts no chunk carries any more, and of models other than `keep_fingerprints`
    (none given, e.g. while the model is not installed: other models' vectors are all kept)."""
    orphans = "NOT EXISTS (SELECT 1 FROM chunks k WHERE k.hash = embeddings.hash)"
    other_models = f" OR fingerprint NOT IN ({placeholders(len(keep_fingerprints))})" if keep_fingerprints else ""
    with transaction(conn):
        return conn.execute(f"DELETE FROM embeddings WHERE {orphans}{other_models}", tuple(keep_fingerprints)).rowcount
