"""Reads for the offline consistency checker: rows that break the store's own rules, and every row
of a kind streamed for checks SQL cannot do (hashes, vector values).

Read-only: each runs on the checker's read-only connection while the daemon is stopped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, NamedTuple

from qmdd.store.db import heading_path


class ChunkAudit(NamedTuple):
    chunk_id: int
    doc_id: int
    collection_id: int
    title: str
    heading_path: tuple[str, ...]
    text: str
    hash: str
    start_line: int
    end_line: int
    doc_lines: int


class ChunkRow(NamedTuple):
    """A chunk as written, in the form the indexer writes it (heading path joined by \\x1f)."""

    seq: int
    start_line: int
    end_line: int
    heading: str
    text: str
    hash: str


def integrity_errors(conn: sqlite3.Connection) -> list[str]:
    """What PRAGMA integrity_check reports; none for a sound database."""
    lines = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    return [] if lines == ["ok"] else lines


def foreign_key_violations(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """(table, rowid, parent table, foreign key index) of rows pointing at rows that do not exist."""
    return [tuple(r) for r in conn.execute("PRAGMA foreign_key_check")]


def orphan_chunks(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT k.id FROM chunks k LEFT JOIN documents d ON d.id = k.doc_id WHERE d.id IS NULL")]


def duplicate_documents(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """(collection id, path) indexed more than once."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT collection_id, path FROM documents GROUP BY 1, 2 HAVING count(*) > 1")]


def duplicate_chunk_seqs(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """(document id, seq) held by more than one chunk."""
    return [(r[0], r[1]) for r in conn.execute("SELECT doc_id, seq FROM chunks GROUP BY 1, 2 HAVING count(*) > 1")]


def docs_with_seq_gaps(conn: sqlite3.Connection) -> list[int]:
    """Documents whose chunk seqs are not 0..n-1: a partially written document."""
    return [r[0] for r in conn.execute(
        "SELECT doc_id FROM chunks GROUP BY doc_id HAVING min(seq) != 0 OR max(seq) != count(*) - 1")]


def chunk_id_sequence(conn: sqlite3.Connection) -> int:
    """The highest chunk id AUTOINCREMENT ever handed out (0 before the first): ids are never reused."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
    return int(row[0]) if row else 0


def chunks_with_documents(conn: sqlite3.Connection) -> Iterator[ChunkAudit]:
    """Every chunk with what its document says about it, streamed: an index of any size fits."""
    for r in conn.execute("SELECT k.id, k.doc_id, d.collection_id, d.title, k.heading, k.text, k.hash,"
                          " k.start_line, k.end_line, d.lines FROM chunks k JOIN documents d ON d.id = k.doc_id"):
        yield ChunkAudit(r[0], r[1], r[2], r[3], heading_path(r[4]), *r[5:])


def document_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM documents").fetchone()[0])


def duplicate_embeddings(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(text hash, fingerprint) stored more than once."""
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT hash, fingerprint FROM embeddings GROUP BY 1, 2 HAVING count(*) > 1")]


def embedding_lengths(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(fingerprint, vector length in bytes, how many vectors of that model have that length)."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT fingerprint, length(vector), count(*) FROM embeddings GROUP BY 1, 2")]


def embeddings(conn: sqlite3.Connection) -> Iterator[tuple[str, str, bytes]]:
    """Every (text hash, fingerprint, vector), streamed: never all vectors in memory at once."""
    for r in conn.execute("SELECT hash, fingerprint, vector FROM embeddings"):
        yield r[0], r[1], r[2]


def orphan_embedding_count(conn: sqlite3.Connection) -> int:
    """Vectors of texts no chunk carries any more (`cleanup` purges them)."""
    return int(conn.execute(
        "SELECT count(*) FROM embeddings e WHERE NOT EXISTS (SELECT 1 FROM chunks k WHERE k.hash = e.hash)"
    ).fetchone()[0])


def problem_codes(conn: sqlite3.Connection, collection_id: int) -> dict[str, str]:
    """path -> code of the files the last scans of a collection had to skip."""
    return {r[0]: r[1] for r in conn.execute("SELECT path, code FROM problems WHERE collection_id = ?",
                                             (collection_id,))}


def stored_chunks(conn: sqlite3.Connection, doc_id: int) -> list[ChunkRow]:
    """A document's chunks in seq order."""
    return [ChunkRow(*r) for r in conn.execute(
        "SELECT seq, start_line, end_line, heading, text, hash FROM chunks WHERE doc_id = ? ORDER BY seq", (doc_id,))]


def title_and_lines(conn: sqlite3.Connection, doc_id: int) -> tuple[str, int] | None:
    row = conn.execute("SELECT title, lines FROM documents WHERE id = ?", (doc_id,)).fetchone()
    return None if row is None else (row[0], row[1])
