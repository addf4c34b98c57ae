"""Typed reads and writes of collections, documents, chunks and problems (contexts: `contexts.py`).

Plain functions over a `sqlite3.Connection`: the caller decides which thread and which transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple, Protocol

import numpy as np

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.safefiles import RootKey
from qmdd.store.db import heading_path, placeholders, select_in, transaction


@dataclass(frozen=True)
class CollectionRow:
    id: int
    name: str
    root: str
    masks: tuple[str, ...]
    excludes: tuple[str, ...]
    created_at: float
    updated_at: float | None
    root_dev: int | None = None
    root_ino: int | None = None
    plugins: tuple[str, ...] = ()
    """Run by default: on its searches (scorers, filters) and its documents (transforms)."""
    transform_key: str = ""
    """The transforms its documents were indexed with (qmdd.sandbox.registry.transform_key)."""
    chunk_rules: str = ""
    """The chunking rules its documents were cut by (qmdd.chunking.CHUNK_RULES)."""

    @property
    def root_key(self) -> RootKey | None:
        """The root directory's pinned identity; None for a row from before pinning, until its next scan."""
        return None if self.root_dev is None or self.root_ino is None else (self.root_dev, self.root_ino)


class DocState(NamedTuple):
    """Built once per document on every rescan: a tuple is several times cheaper than a dataclass."""

    id: int
    size: int
    mtime_ns: int
    hash: str


class StoredChunk(Protocol):
    """What the store keeps of a chunk (the chunker's `Chunk` fits; the store does not import it)."""

    @property
    def seq(self) -> int: ...
    @property
    def start_line(self) -> int: ...
    @property
    def end_line(self) -> int: ...
    @property
    def heading_path(self) -> tuple[str, ...]: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class ParsedFile:
    """A file read and chunked by the indexer, ready to be written in one transaction."""

    path: str
    size: int
    mtime_ns: int
    hash: str
    title: str
    lines: int
    chunks: Sequence[StoredChunk]
    chunk_hashes: Sequence[str]


@dataclass(frozen=True)
class DocRow:
    id: int
    collection_id: int
    collection: str
    root: str
    path: str
    size: int
    mtime_ns: int
    hash: str
    title: str
    lines: int
    root_dev: int | None = None
    root_ino: int | None = None
    plugins: tuple[str, ...] = ()
    """Run by default: on its searches (scorers, filters) and its documents (transforms)."""
    transform_key: str = ""
    """The transforms its documents were indexed with (qmdd.sandbox.registry.transform_key)."""

    @property
    def root_key(self) -> RootKey | None:
        return None if self.root_dev is None or self.root_ino is None else (self.root_dev, self.root_ino)

    @property
    def docid(self) -> str:
        return "#" + self.hash[:6]

    @property
    def uri(self) -> str:
        return document_uri(self.collection, self.path)


def document_uri(collection: str, path: str) -> str:
    return f"qmd://{collection}/{path}"


class DocMarks(NamedTuple):
    """What tells a document's copies (qmdd.search.collapse), and what names one: a third of a `DocRow`'s
    reading time, for the many documents a search collapses and the few it shows."""

    id: int
    collection_id: int
    collection: str
    path: str
    hash: str

    @property
    def uri(self) -> str:
        return document_uri(self.collection, self.path)


_COLLECTION_COLS = ("id, name, root, masks, excludes, created_at, updated_at, root_dev, root_ino, plugins,"
                    " transform_key, chunk_rules")
_DOC_COLS = ("d.id, d.collection_id, c.name, c.root, d.path, d.size, d.mtime_ns, d.hash, d.title, d.lines,"
             " c.root_dev, c.root_ino")


def _collection(row: Sequence[Any]) -> CollectionRow:
    return CollectionRow(row[0], row[1], row[2], tuple(json.loads(row[3])), tuple(json.loads(row[4])),
                         row[5], row[6], row[7], row[8], tuple(json.loads(row[9])), row[10], row[11])


# --- collections ---------------------------------------------------------------------------------

def list_collections(conn: sqlite3.Connection) -> list[CollectionRow]:
    rows = conn.execute(f"SELECT {_COLLECTION_COLS} FROM collections ORDER BY name").fetchall()
    return [_collection(r) for r in rows]


def collection_by_name(conn: sqlite3.Connection, name: str) -> CollectionRow:
    row = conn.execute(f"SELECT {_COLLECTION_COLS} FROM collections WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise collection_not_found(name)
    return _collection(row)


def collection_not_found(name: str) -> QmddError:
    """qmd's own words ("Collection not found: NAME"), which scripts written for qmd look for."""
    return QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"Collection not found: {name}")


def collection_by_id(conn: sqlite3.Connection, collection_id: int) -> CollectionRow | None:
    row = conn.execute(f"SELECT {_COLLECTION_COLS} FROM collections WHERE id = ?", (collection_id,)).fetchone()
    return None if row is None else _collection(row)


def add_collection(conn: sqlite3.Connection, name: str, root: str, masks: Sequence[str],
                   excludes: Sequence[str], root_key: RootKey | None = None, chunk_rules: str = "") -> CollectionRow:
    """A new collection; `chunk_rules` are those its documents will be cut by (it has none yet)."""
    dev, ino = root_key or (None, None)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone():
            raise QmddError(ErrorCode.COLLECTION_EXISTS, f"a collection named {name!r} already exists")
        conn.execute("INSERT INTO collections (name, root, masks, excludes, created_at, root_dev, root_ino,"
                     " chunk_rules) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (name, root, json.dumps(list(masks)), json.dumps(list(excludes)), time.time(), dev, ino,
                      chunk_rules))
    return collection_by_name(conn, name)


def pin_root(conn: sqlite3.Connection, collection_id: int, root_key: RootKey) -> None:
    """Record the identity of a root not pinned yet (a row from before pinning); a pin is never moved."""
    with transaction(conn):
        conn.execute("UPDATE collections SET root_dev = ?, root_ino = ? WHERE id = ? AND root_dev IS NULL",
                     (*root_key, collection_id))


def set_collection_plugins(conn: sqlite3.Connection, name: str, plugins: Sequence[str]) -> CollectionRow:
    with transaction(conn):
        row = collection_by_name(conn, name)
        conn.execute("UPDATE collections SET plugins = ? WHERE id = ?", (json.dumps(list(plugins)), row.id))
    return collection_by_name(conn, name)


def set_indexed_with(conn: sqlite3.Connection, collection_id: int, transform_key: str, chunk_rules: str) -> None:
    """After a whole scan with these transforms and chunking rules: every document was indexed by them."""
    with transaction(conn):
        conn.execute("UPDATE collections SET transform_key = ?, chunk_rules = ? WHERE id = ?",
                     (transform_key, chunk_rules, collection_id))


def collection_chunk_ids(conn: sqlite3.Connection, collection_id: int) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.collection_id = ?",
        (collection_id,))]


def remove_collection(conn: sqlite3.Connection, name: str) -> list[int]:
    """Delete a collection with its documents; returns the chunk ids that went with it."""
    with transaction(conn):
        row = collection_by_name(conn, name)
        removed = collection_chunk_ids(conn, row.id)
        conn.execute("DELETE FROM collections WHERE id = ?", (row.id,))
    return removed


def name_taken(new: str) -> QmddError:
    """A rename to a name in use (the catalogue's hint speaks of `collection add --name`)."""
    return QmddError(ErrorCode.COLLECTION_EXISTS, f"a collection named {new!r} already exists", hints=(
        "Rename it to another name, or remove the other collection first (`qmdctl collection remove NAME`).",))


def rename_collection(conn: sqlite3.Connection, old: str, new: str) -> CollectionRow:
    with transaction(conn):
        collection_by_name(conn, old)
        if conn.execute("SELECT 1 FROM collections WHERE name = ?", (new,)).fetchone():
            raise name_taken(new)
        conn.execute("UPDATE collections SET name = ? WHERE name = ?", (new, old))
    return collection_by_name(conn, new)


def touch_collection(conn: sqlite3.Connection, collection_id: int) -> None:
    conn.execute("UPDATE collections SET updated_at = ? WHERE id = ?", (time.time(), collection_id))


# --- indexing ------------------------------------------------------------------------------------

def doc_states(conn: sqlite3.Connection, collection_id: int) -> dict[str, DocState]:
    rows = conn.execute("SELECT path, id, size, mtime_ns, hash FROM documents WHERE collection_id = ?",
                        (collection_id,))
    make = DocState._make
    return {r[0]: make(r[1:]) for r in rows}


# A path or anything below it. The range from the path to its sibling path + "0" ("/" + 1 is "0")
# is what SQLite seeks in the (collection_id, path) index (it cannot for `path = ? OR path >= ...`);
# the test then drops siblings such as "path.md" that sort inside it.
AT_OR_BELOW = "(path >= ? AND path < ? AND (path = ? OR path >= ?))"


def at_or_below(path: str) -> tuple[str, str, str, str]:
    return path, path + "0", path, path + "/"


def doc_states_for(conn: sqlite3.Connection, collection_id: int, paths: Sequence[str]) -> dict[str, DocState]:
    """`doc_states` for a few paths (the watcher's), without reading the whole collection."""
    make = DocState._make
    states = {}
    for path in paths:
        row = conn.execute("SELECT path, id, size, mtime_ns, hash FROM documents WHERE collection_id = ? AND path = ?",
                           (collection_id, path)).fetchone()
        if row is not None:
            states[row[0]] = make(row[1:])
    return states


def paths_under(conn: sqlite3.Connection, collection_id: int, paths: Sequence[str]) -> list[str]:
    """The indexed documents at these paths or below them (a deleted path may have been a directory)."""
    found: list[str] = []
    for path in paths:
        found.extend(r[0] for r in conn.execute(
            f"SELECT path FROM documents WHERE collection_id = ? AND {AT_OR_BELOW}",
            (collection_id, *at_or_below(path))))
    return found


def write_batch(conn: sqlite3.Connection, collection_id: int, parsed: Sequence[ParsedFile],
                touched: Sequence[tuple[str, int, int]], removed_paths: Sequence[str]
                ) -> tuple[list[ChunkText], list[int]]:
    """Apply one batch atomically; returns (the added chunks, with their new ids; removed chunk ids).

    `touched` are (path, size, mtime_ns) of files whose stat changed but whose content hash did not:
    only their stat is refreshed, so the next rescan takes the cheap path again.
    """
    added: list[ChunkText] = []
    removed: list[int] = []
    now = time.time()
    with transaction(conn):
        for path in removed_paths:
            removed.extend(_delete_document(conn, collection_id, path))
        conn.executemany("UPDATE documents SET size = ?, mtime_ns = ? WHERE collection_id = ? AND path = ?",
                         [(size, mtime, collection_id, path) for path, size, mtime in touched])
        for f in parsed:
            removed.extend(_delete_document(conn, collection_id, f.path))
            cur = conn.execute(
                "INSERT INTO documents (collection_id, path, size, mtime_ns, hash, title, lines, indexed_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (collection_id, f.path, f.size, f.mtime_ns, f.hash, f.title, f.lines, now))
            doc_id = cur.lastrowid
            assert doc_id is not None
            for chunk, chunk_hash in zip(f.chunks, f.chunk_hashes, strict=True):
                cur = conn.execute(
                    "INSERT INTO chunks (doc_id, seq, start_line, end_line, heading, text, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, chunk.seq, chunk.start_line, chunk.end_line, "\x1f".join(chunk.heading_path),
                     chunk.text, chunk_hash))
                assert cur.lastrowid is not None
                added.append(ChunkText(cur.lastrowid, doc_id, collection_id, f.path, f.title, chunk.heading_path,
                                       chunk.start_line, chunk.text))
    return added, removed


def _delete_document(conn: sqlite3.Connection, collection_id: int, path: str) -> list[int]:
    row = conn.execute("SELECT id FROM documents WHERE collection_id = ? AND path = ?",
                       (collection_id, path)).fetchone()
    if row is None:
        return []
    ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (row[0],))]
    conn.execute("DELETE FROM documents WHERE id = ?", (row[0],))
    return ids


def replace_problems(conn: sqlite3.Connection, collection_id: int,
                     problems: Iterable[tuple[str, str, str]]) -> None:
    """Replace the files a full scan of this collection had to skip; the scan is then complete."""
    now = time.time()
    with transaction(conn):
        touch_collection(conn, collection_id)
        conn.execute("DELETE FROM problems WHERE collection_id = ?", (collection_id,))
        conn.executemany("INSERT OR REPLACE INTO problems (collection_id, path, code, message, seen_at)"
                         " VALUES (?, ?, ?, ?, ?)", [(collection_id, p, c, m, now) for p, c, m in problems])


def has_problems(conn: sqlite3.Connection, collection_id: int, paths: Sequence[str]) -> bool:
    return any(conn.execute(f"SELECT 1 FROM problems WHERE collection_id = ? AND {AT_OR_BELOW} LIMIT 1",
                            (collection_id, *at_or_below(path))).fetchone() for path in paths)


def same_content(conn: sqlite3.Connection, collection_id: int, paths: Sequence[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the other documents of this collection whose content is, as indexed,
    that of one of `paths`: their copies, and the symlinks leading to them."""
    return list(select_in(conn, "SELECT DISTINCT o.path, o.size, o.mtime_ns FROM documents d JOIN documents o"
                                " ON o.hash = d.hash AND o.collection_id = d.collection_id AND o.id != d.id"
                                " WHERE d.collection_id = ? AND d.path IN ({in})", paths, (collection_id,)))


def problem_paths(conn: sqlite3.Connection, collection_id: int, code: str, limit: int) -> list[str]:
    """Up to `limit` paths of this collection recorded with the problem `code`."""
    return [r[0] for r in conn.execute("SELECT path FROM problems WHERE collection_id = ? AND code = ? LIMIT ?",
                                       (collection_id, code, limit))]


def update_problems(conn: sqlite3.Connection, collection_id: int, paths: Sequence[str],
                    problems: Iterable[tuple[str, str, str]]) -> None:
    """Replace the recorded problems of just these paths (and below them: a deleted directory)."""
    now = time.time()
    with transaction(conn):
        touch_collection(conn, collection_id)
        for path in paths:
            conn.execute(f"DELETE FROM problems WHERE collection_id = ? AND {AT_OR_BELOW}",
                         (collection_id, *at_or_below(path)))
        conn.executemany("INSERT OR REPLACE INTO problems (collection_id, path, code, message, seen_at)"
                         " VALUES (?, ?, ?, ?, ?)", [(collection_id, p, c, m, now) for p, c, m in problems])


def drop_orphan_problems(conn: sqlite3.Connection) -> None:
    """Delete the problems of collections that are gone: the foreign key cascades only where
    foreign keys were enforced when the collection was removed."""
    with transaction(conn):
        conn.execute("DELETE FROM problems WHERE collection_id NOT IN (SELECT id FROM collections)")


def list_problems(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The index's own notices (collection and path empty) first, then the files scans had to skip."""
    notices = conn.execute("SELECT substr(key, 8), value FROM meta WHERE key LIKE 'notice:%' ORDER BY key")
    rows = conn.execute("SELECT c.name, p.path, p.code, p.message FROM problems p JOIN collections c"
                        " ON c.id = p.collection_id ORDER BY p.seen_at DESC LIMIT ?", (limit,))
    return ([{"collection": "", "path": "", "code": code, "message": message} for code, message in notices]
            + [{"collection": r[0], "path": r[1], "code": r[2], "message": r[3]} for r in rows])


def set_index_notice(conn: sqlite3.Connection, code: str, message: str) -> None:
    """A problem of the whole index (shown first by `status`), kept until `clear_index_notice`."""
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"notice:{code}", message))


def clear_index_notice(conn: sqlite3.Connection, code: str) -> bool:
    with transaction(conn):
        return conn.execute("DELETE FROM meta WHERE key = ?", (f"notice:{code}",)).rowcount > 0


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkText:
    chunk_id: int
    doc_id: int
    collection_id: int
    path: str
    title: str
    heading: tuple[str, ...]
    start_line: int
    text: str


def _chunk_texts(rows: Iterable[Sequence[Any]]) -> list[ChunkText]:
    return [ChunkText(r[0], r[1], r[2], r[3], r[4], heading_path(r[5]), r[6], r[7])
            for r in rows]


_CHUNK_TEXT_SQL = ("SELECT k.id, k.doc_id, d.collection_id, d.path, d.title, k.heading, k.start_line, k.text"
                   " FROM chunks k JOIN documents d ON d.id = k.doc_id WHERE k.id IN ({in})")


def chunk_texts(conn: sqlite3.Connection, ids: Sequence[int]) -> list[ChunkText]:
    return _chunk_texts(select_in(conn, _CHUNK_TEXT_SQL, ids))


def chunk_owners(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, int]:
    """chunk id -> document id, for the chunks that still exist."""
    return dict(select_in(conn, "SELECT id, doc_id FROM chunks WHERE id IN ({in})", ids))


def chunk_documents(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """Every chunk's id and its document's, as two arrays."""
    pairs = np.fromiter(chain.from_iterable(conn.execute("SELECT id, doc_id FROM chunks")), dtype=np.int64)
    return pairs[0::2], pairs[1::2]


def all_chunk_ids(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM chunks")]


DOCS_SQL = f"SELECT {_DOC_COLS} FROM documents d JOIN collections c ON c.id = d.collection_id"
"""Every column of a `DocRow`, in its order, from documents `d` and collections `c`."""


def docs_by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, DocRow]:
    return {r[0]: DocRow(*r) for r in select_in(conn, f"{DOCS_SQL} WHERE d.id IN ({{in}})", ids)}


MARKS_COLS = "d.id, d.collection_id, c.name, d.path, d.hash"
"""Every column of a `DocMarks`, in its order, from documents `d` and collections `c`."""


def marks_by_ids(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, DocMarks]:
    return {r[0]: DocMarks(*r) for r in select_in(
        conn, f"SELECT {MARKS_COLS} FROM documents d JOIN collections c ON c.id = d.collection_id"
              " WHERE d.id IN ({in})", ids)}


def chunks_with_documents(conn: sqlite3.Connection, ids: Sequence[int]) -> list[tuple[ChunkText, DocRow]]:
    """Chunks with their documents' whole rows, in one statement: what a result shows of a hit."""
    out = []
    for r in select_in(conn, f"SELECT k.id, k.heading, k.start_line, k.text, {_DOC_COLS} FROM chunks k"
                             " JOIN documents d ON d.id = k.doc_id JOIN collections c ON c.id = d.collection_id"
                             " WHERE k.id IN ({in})", ids):
        doc = DocRow(*r[4:])
        out.append((ChunkText(r[0], doc.id, doc.collection_id, doc.path, doc.title,
                              heading_path(r[1]), r[2], r[3]), doc))
    return out


def doc_chunk_ids_under(conn: sqlite3.Connection, collection_ids: Sequence[int] | None,
                        prefix: str | None) -> list[int]:
    """Chunk ids of documents in the given collections and/or at or below a path (for filters).

    The path is matched whole components at a time, as `ls` and contexts match it: "pages" selects
    the file or folder "pages" and what is inside, never "pages.ru/" nor "pages2.md"."""
    clauses: list[str] = []
    args: list[object] = []
    if collection_ids is not None:
        clauses.append(f"d.collection_id IN ({placeholders(len(collection_ids))})")  # collections: few
        args.extend(collection_ids)
    if prefix:
        clauses.append(AT_OR_BELOW.replace("path", "d.path"))
        args.extend(at_or_below(prefix))
    where = " AND ".join(clauses) or "1"
    return [r[0] for r in conn.execute(
        f"SELECT k.id FROM chunks k JOIN documents d ON d.id = k.doc_id WHERE {where}", args)]


# --- statistics ----------------------------------------------------------------------------------

def counts(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """collection id -> (documents, chunks)."""
    docs = dict(conn.execute("SELECT collection_id, COUNT(*) FROM documents GROUP BY collection_id").fetchall())
    chunks = dict(conn.execute("SELECT d.collection_id, COUNT(*) FROM chunks k JOIN documents d"
                               " ON d.id = k.doc_id GROUP BY d.collection_id").fetchall())
    return {cid: (docs.get(cid, 0), chunks.get(cid, 0)) for cid in set(docs) | set(chunks)}
