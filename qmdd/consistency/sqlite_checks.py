"""SQLite against itself (integrity, keys, chunk and embedding rows) and against the files the
indexer's own walk selects."""

from __future__ import annotations

import contextlib
import hashlib
import random
import sqlite3

import numpy as np

from qmdd.chunking import CHUNK_RULES, ChunkerConfig, embedding_text
from qmdd.config import Config
from qmdd.consistency.report import Facts, Report
from qmdd.decoding import Decoded, decode_text
from qmdd.indexing import FileProblem, document_hash, open_root, read_document, walk_config
from qmdd.protocol.errors import QmddError
from qmdd.safefiles import ConfinedRoot
from qmdd.store import audit
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb
from qmdd.store.db import stored_database_id
from qmdd.walk import FileStat, walk_collection


def check_sqlite(conn: sqlite3.Connection, report: Report) -> Facts:
    facts = Facts()
    for line in audit.integrity_errors(conn):
        report.add(True, "sqlite_integrity", "PRAGMA integrity_check failed", line)
    for row in audit.foreign_key_violations(conn):
        report.add(True, "sqlite_foreign_key", "rows point at rows that do not exist", row)
    facts.database_id = stored_database_id(conn)
    for chunk_id in audit.orphan_chunks(conn):
        report.add(True, "orphan_chunk", "chunks whose document is gone", f"chunk {chunk_id}")
    for collection_path in audit.duplicate_documents(conn):
        report.add(True, "duplicate_document", "a path is indexed more than once in one collection", collection_path)
    for doc_seq in audit.duplicate_chunk_seqs(conn):
        report.add(True, "duplicate_chunk_seq", "a document has two chunks with the same seq", doc_seq)
    for doc_id in audit.docs_with_seq_gaps(conn):
        report.add(True, "chunk_seq_gap", "a document's chunk seqs are not 0..n-1 (a partial document)",
                   f"doc {doc_id}")
    facts.max_chunk_id = audit.chunk_id_sequence(conn)
    for c in audit.chunks_with_documents(conn):
        facts.owners[c.chunk_id] = (c.doc_id, c.collection_id)
        facts.chunks_per_doc[c.doc_id] += 1
        facts.max_chunk_id = max(facts.max_chunk_id, c.chunk_id)
        if hashlib.sha256(embedding_text(c.title, c.heading_path, c.text).encode()).hexdigest() != c.hash:
            report.add(True, "chunk_hash", "a chunk's hash is not the hash of its embedding text",
                       f"chunk {c.chunk_id}")
        if not 1 <= c.start_line <= c.end_line <= max(c.doc_lines, 1):
            report.add(True, "chunk_lines", "a chunk's line range lies outside its document",
                       f"chunk {c.chunk_id}: {c.start_line}-{c.end_line} of {c.doc_lines}")
    report.counts.update(documents=audit.document_count(conn), chunks=len(facts.owners))
    _check_embedding_rows(conn, report, facts)
    return facts


def _check_embedding_rows(conn: sqlite3.Connection, report: Report, facts: Facts) -> None:
    for duplicate in audit.duplicate_embeddings(conn):
        report.add(True, "duplicate_embedding", "two vectors for one (text hash, model)", duplicate)
    for fingerprint, length, count in audit.embedding_lengths(conn):
        facts.vector_bytes.setdefault(fingerprint, set()).add(length)
        report.counts["embeddings"] += count
    for fingerprint, lengths in facts.vector_bytes.items():
        if len(lengths) > 1 or min(lengths) == 0 or min(lengths) % 2:
            report.add(True, "embedding_length", "vectors of one model differ in length (a partial row?)",
                       f"{fingerprint}: {sorted(lengths)} bytes")
    for text_hash, fingerprint, blob in audit.embeddings(conn):
        if len(blob) % 2 or not np.isfinite(np.frombuffer(blob, dtype=emb.VECTOR_DTYPE)).all():
            report.add(True, "embedding_not_finite", "a stored vector is truncated or not finite",
                       f"{text_hash[:12]} {fingerprint}")
    report.counts["orphan_embeddings"] = audit.orphan_embedding_count(conn)


def check_tree(conn: sqlite3.Connection, report: Report, config: Config, facts: Facts, strict: bool,
                rechunk: int | None, rng: random.Random) -> None:
    """Documents against the files the indexer's own walk selects; `strict`: they must match exactly."""
    with contextlib.ExitStack() as roots:  # each root stays open until its sampled documents are re-read
        _check_tree(conn, report, config, facts, strict, rechunk, rng, roots)


def _check_tree(conn: sqlite3.Connection, report: Report, config: Config, facts: Facts, strict: bool,
                rechunk: int | None, rng: random.Random, roots: contextlib.ExitStack) -> None:
    up_to_date: list[tuple[ConfinedRoot, FileStat, docs.DocState]] = []
    chunker = ChunkerConfig()
    for collection in docs.list_collections(conn):
        try:
            root = roots.enter_context(open_root(collection))  # as the indexer reads: pinned, confined
            walk = walk_collection(root, walk_config(collection.masks, collection.excludes, config.max_file_bytes))
        except (OSError, QmddError) as exc:
            report.add(True, "root_unreadable", "a collection's root cannot be walked", f"{collection.name}: {exc}")
            continue
        files = {f.relpath: f for f in walk.files}
        states = docs.doc_states(conn, collection.id)
        recorded = audit.problem_codes(conn, collection.id)
        report.counts["files_selected"] += len(files)
        where = f"{collection.name}:"
        for path, state in states.items():
            st = files.get(path)
            if st is None:
                report.add(strict, "document_not_in_tree", "indexed documents whose file is gone or no longer "
                           "selected (the next update removes them)", where + path)
                continue
            try:
                data = root.read(path, config.max_file_bytes)
            except OSError as exc:
                report.add(strict, "document_unreadable", "indexed files that cannot be read now",
                           f"{where}{path}: {exc}")
                continue
            same_stat = (st.size, st.mtime_ns) == (state.size, state.mtime_ns)
            # A transformed document's hash also names its transforms (one it failed on is plain).
            plain_hash = document_hash(data)
            if state.hash not in (plain_hash, document_hash(data, collection.transform_key)):
                if same_stat:
                    report.add(True, "content_differs_under_same_stat", "a document's file changed but kept its "
                               "size and mtime: an update would skip it forever", where + path)
                elif isinstance(read_document(root, st, chunker, config.max_file_bytes), FileProblem):
                    report.add(strict, "document_now_unindexable", "documents whose file can no longer be indexed "
                               "(the next update removes them)", where + path)
                else:
                    report.add(strict, "document_outdated", "documents older than their file (the next update "
                               "re-indexes them)", where + path)
                continue
            report.counts["documents_current"] += 1
            if not same_stat:
                report.add(strict, "document_stat_outdated", "documents whose file was touched but not changed "
                           "(the next update refreshes their stat)", where + path)
            decoded = decode_text(data)
            text = decoded.text if isinstance(decoded, Decoded) else ""
            transformed = state.hash != plain_hash  # a transform may have emptied it
            if not transformed and bool(text.strip()) != (facts.chunks_per_doc[state.id] > 0):
                report.add(True, "document_without_chunks", "a document with text has no chunks, or a blank one "
                           "has some", where + path)
            if collection.chunk_rules == CHUNK_RULES:  # else cut by older rules, which its next scan replaces
                up_to_date.append((root, st, state))
            if path in recorded:
                report.add(strict, "problem_for_indexed_file", "a file is both indexed and listed as a problem",
                           where + path)
        for path in files.keys() - states.keys():
            result = read_document(root, files[path], chunker, config.max_file_bytes)
            if isinstance(result, FileProblem):
                report.counts["files_unindexable"] += 1
                if recorded.get(path) != result.code:
                    report.add(strict, "problem_not_recorded", "files skipped as unindexable without a matching "
                               "problem row", f"{where}{path} ({result.code})")
            elif result is not None:
                report.add(strict, "file_not_indexed", "selected files with no document (the next update "
                           "indexes them)", where + path)
    sample = up_to_date if rechunk is None or rechunk >= len(up_to_date) else rng.sample(up_to_date, rechunk)
    for root, st, state in sample:
        _compare_chunks(conn, report, root, st, state, chunker, config.max_file_bytes)
    report.counts["documents_rechunked"] = len(sample)


def _compare_chunks(conn: sqlite3.Connection, report: Report, root: ConfinedRoot, st: FileStat, state: docs.DocState,
                    chunker: ChunkerConfig, max_bytes: int) -> None:
    """Re-read and re-chunk an up-to-date document as the indexer would; its stored chunks must be the same."""
    parsed = read_document(root, st, chunker, max_bytes)
    if parsed is None or isinstance(parsed, FileProblem):
        return  # changed since the pass above read it
    expected = [(c.seq, c.start_line, c.end_line, "\x1f".join(c.heading_path), c.text, h)
                for c, h in zip(parsed.chunks, parsed.chunk_hashes, strict=True)]
    stored = audit.stored_chunks(conn, state.id)
    if parsed.hash == state.hash and (stored != expected
                                      or audit.title_and_lines(conn, state.id) != (parsed.title, parsed.lines)):
        report.add(True, "chunks_differ_from_file", "an up-to-date document's chunks are not what indexing its "
                   "file gives (a partial or mixed version)", f"{root.path}/{st.relpath}")
