"""Embeddings in SQLite: one row per (embedded text hash, model fingerprint), vectors as float16 bytes.

The vector index is derived from these rows; chunks find their vector through their hash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from qmdd.chunking import embedding_text
from qmdd.store.db import transaction

VECTOR_DTYPE = np.float16


class PendingChunk(NamedTuple):
    chunk_id: int
    hash: str
    text: str  # the model's input (title and heading path, then the chunk)


class IndexedVector(NamedTuple):
    chunk_id: int
    collection_id: int
    vector: bytes


def _in_clause(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def pending_chunks(conn: sqlite3.Connection, fingerprint: str, after_id: int, limit: int,
                   collection_ids: Sequence[int] | None = None) -> list[PendingChunk]:
    """Chunks whose text has no vector under `fingerprint`, in id order after `after_id`."""
    where = f" AND d.collection_id IN ({_in_clause(collection_ids)})" if collection_ids else ""
    rows = conn.execute(
        "SELECT k.id, k.hash, d.title, k.heading, k.text FROM chunks k JOIN documents d ON d.id = k.doc_id"
        " WHERE k.id > ? AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = k.hash AND e.fingerprint = ?)"
        f"{where} ORDER BY k.id LIMIT ?", (after_id, fingerprint, *(collection_ids or ()), limit))
    return [PendingChunk(r[0], r[1], embedding_text(r[2], tuple(r[3].split("\x1f")) if r[3] else (), r[4]))
            for r in rows]


def count_chunks(conn: sqlite3.Connection, fingerprint: str) -> tuple[int, int]:
    """(chunks in all, chunks with a vector under `fingerprint`)."""
    total = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    embedded = conn.execute("SELECT count(*) FROM chunks k WHERE EXISTS (SELECT 1 FROM embeddings e"
                            " WHERE e.hash = k.hash AND e.fingerprint = ?)", (fingerprint,)).fetchone()[0]
    return int(total), int(embedded)


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


def chunk_collections(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT k.id, d.collection_id FROM chunks k JOIN documents d"
                                               " ON d.id = k.doc_id")]


def vectors_for_chunks(conn: sqlite3.Connection, fingerprint: str, chunk_ids: Sequence[int]) -> list[IndexedVector]:
    out: list[IndexedVector] = []
    for start in range(0, len(chunk_ids), 900):
        part = chunk_ids[start:start + 900]
        out.extend(IndexedVector(*r) for r in conn.execute(
            "SELECT k.id, d.collection_id, e.vector FROM chunks k JOIN documents d ON d.id = k.doc_id"
            f" JOIN embeddings e ON e.hash = k.hash AND e.fingerprint = ? WHERE k.id IN ({_in_clause(part)})",
            (fingerprint, *part)))
    return out


def chunks_with_hashes(conn: sqlite3.Connection, hashes: Sequence[str]) -> list[tuple[int, int, str]]:
    """(chunk id, collection id, hash) of every chunk carrying one of `hashes`."""
    out: list[tuple[int, int, str]] = []
    for start in range(0, len(hashes), 900):
        part = hashes[start:start + 900]
        out.extend((r[0], r[1], r[2]) for r in conn.execute(
            "SELECT k.id, d.collection_id, k.hash FROM chunks k JOIN documents d ON d.id = k.doc_id"
            f" WHERE k.hash IN ({_in_clause(part)})", part))
    return out


def purge_embeddings(conn: sqlite3.Connection, keep_fingerprints: Sequence[str]) -> int:
    """Drop vectors of texts no chunk carries any more, and of models other than `keep_fingerprints`
    (none given, e.g. while the model is not installed: other models' vectors are all kept)."""
    orphans = "NOT EXISTS (SELECT 1 FROM chunks k WHERE k.hash = embeddings.hash)"
    other_models = f" OR fingerprint NOT IN ({_in_clause(keep_fingerprints)})" if keep_fingerprints else ""
    with transaction(conn):
        return conn.execute(f"DELETE FROM embeddings WHERE {orphans}{other_models}", tuple(keep_fingerprints)).rowcount
