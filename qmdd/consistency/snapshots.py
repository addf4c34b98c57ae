"""The derived indexes against SQLite: the BM25 snapshot and the vector snapshot with its sidecar."""

from __future__ import annotations

import random
import sqlite3

import numpy as np
from pyroaring import BitMap

from qmdd.config import Config
from qmdd.consistency.report import Facts, Report
from qmdd.protocol.errors import QmddError
from qmdd.search.bm25index import BM25Index, SnapshotError
from qmdd.search.bm25store import read_snapshot
from qmdd.search.fields import snapshot_meta
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.search.vectorindex import VectorIndex, VectorSnapshotError
from qmdd.search.vectorstore import OutdatedSnapshotError
from qmdd.store import embeddings as emb


def check_bm25(report: Report, config: Config, facts: Facts, current: bool) -> None:
    path = config.paths.bm25_snapshot
    if not path.exists():
        if facts.owners:
            report.add(current, "bm25_snapshot_absent", "no BM25 snapshot: the daemon rebuilds it from SQLite")
        return
    try:
        index, meta = BM25Index.load(path)
        columns = read_snapshot(path).arrays
    except SnapshotError as exc:  # snapshots are written atomically: a crash never leaves a torn one
        report.add(True, "bm25_snapshot_corrupt", "the BM25 snapshot cannot be loaded", exc)
        return
    # No database id (an unfinished database): "" matches no snapshot, which is then stale.
    expected = snapshot_meta(facts.database_id or "", Tokenizer(TokenizerConfig(stem=config.stem)), config.k1, config.b)
    if meta != expected:
        report.add(current, "bm25_snapshot_stale", "the BM25 snapshot was made for other settings or another "
                   "database: the daemon rebuilds it (stale, would be rebuilt)", f"{meta} != {expected}")
        return
    _compare_ids(report, "bm25", index.chunk_ids(), BitMap(facts.owners), facts, current)
    for chunk_id, doc_id, collection_id in zip(columns["ids"].tolist(), columns["docs"].tolist(),
                                               columns["colls"].tolist(), strict=True):
        owner = facts.owners.get(chunk_id)
        if owner is not None and owner != (doc_id, collection_id):
            report.add(True, "bm25_chunk_owner", "a BM25 chunk belongs to another document than in SQLite "
                       "(a reused chunk id?)", f"chunk {chunk_id}: {(doc_id, collection_id)} != {owner}")


def _compare_ids(report: Report, name: str, have: BitMap, truth: BitMap, facts: Facts, current: bool) -> None:
    """A derived index is reconciled with SQLite by chunk id on start; that is sound only while every id
    it holds was handed out by this database (ids are never reused)."""
    report.counts[f"{name}_chunks"] = len(have)
    unknown = [i for i in have - truth if i > facts.max_chunk_id]
    for chunk_id in unknown:
        report.add(True, f"{name}_unknown_chunk", f"the {name} index holds chunk ids SQLite never handed out "
                   "(SQLite lost commits?)", chunk_id)
    stale, missing = len(have - truth) - len(unknown), len(truth - have)
    if stale or missing:
        report.add(current, f"{name}_snapshot_behind", f"the {name} snapshot lags SQLite; the daemon reconciles it "
                   "on start", f"{missing} chunk(s) missing, {stale} removed chunk(s) still in it")


def _daemon_fingerprint(config: Config) -> str | None:
    """The embedding fingerprint the daemon would serve, exactly as it computes it at start."""
    from qmdd.models.placement import embedding_runtime
    from qmdd.models.registry import ModelRegistry

    registry = ModelRegistry(config.paths)
    try:
        return embedding_runtime(config, registry).fingerprint(registry)
    except QmddError:
        return None


def check_vectors(conn: sqlite3.Connection, report: Report, config: Config, facts: Facts, current: bool,
                   sample: int, rng: random.Random) -> None:
    path = config.paths.vector_snapshot
    sidecar = path.with_name(path.name + ".json")
    serving = _daemon_fingerprint(config)
    embedded = BitMap(emb.embedded_chunk_ids(conn, serving)) if serving else BitMap()
    report.counts["embedded_chunks"] = len(embedded)
    if not path.exists():
        if embedded:
            report.add(current, "vector_snapshot_absent", "no vector snapshot: the daemon rebuilds it from SQLite")
        return
    if not sidecar.exists():  # left by a crash between the two renames of a save: by design, ignored
        report.add(current and bool(embedded), "vector_snapshot_without_sidecar",
                   "a vector snapshot without its sidecar: the daemon ignores it and rebuilds (stale)")
        return
    try:
        index, meta = VectorIndex.load(path)
    except OutdatedSnapshotError as exc:  # an older version's file (a usearch graph): rebuilt by design
        report.add(current and bool(embedded), "vector_snapshot_stale", "the vector snapshot is of another "
                   "format: the daemon rebuilds it (stale)", exc)
        return
    except VectorSnapshotError as exc:  # the checks in `load`: size, checksum, unique keys, twins
        report.add(True, "vector_snapshot_corrupt", "the vector snapshot cannot be loaded", exc)
        return
    fingerprint = meta.get("fingerprint")
    if meta.get("database_id") != facts.database_id:
        report.add(current, "vector_snapshot_stale", "the vector snapshot belongs to another database: the daemon "
                   "rebuilds it (stale, would be rebuilt)")
        return
    if fingerprint != serving:
        report.add(current and bool(embedded), "vector_snapshot_stale", "the vector snapshot is of another model "
                   "than the one in use: the daemon rebuilds it (stale)", f"{fingerprint} != {serving}")
        current = False  # compared below against its own model's vectors, which may lag
    truth = BitMap(emb.embedded_chunk_ids(conn, fingerprint)) if isinstance(fingerprint, str) else BitMap()
    have = index.keys()
    _compare_ids(report, "vector", have, truth, facts, current)
    for chunk_id in (have - truth) & BitMap(facts.owners):
        report.add(True, "vector_without_embedding", "the vector index holds a chunk SQLite has no vector for",
                   chunk_id)
    members = [(collection, keys) for collection, keys in index.collections.items()]
    if sum(len(keys) for _, keys in members) != len(have) or BitMap.union(BitMap(), *(k for _, k in members)) != have:
        report.add(True, "vector_collection_map", "the vector sidecar's collection map does not cover its keys once")
    for collection, keys in members:
        for chunk_id in keys & BitMap(facts.owners):
            if facts.owners[chunk_id][1] != collection:
                report.add(True, "vector_collection", "a vector is filed under another collection than its chunk",
                           chunk_id)
    if isinstance(fingerprint, str):
        _compare_vectors(conn, report, index, fingerprint, facts, list(have & truth), sample, rng)


def _compare_vectors(conn: sqlite3.Connection, report: Report, index: VectorIndex, fingerprint: str,
                     facts: Facts, keys: list[int], sample: int, rng: random.Random) -> None:
    ndim = index.ndim
    lengths = facts.vector_bytes.get(fingerprint, set())
    if lengths and lengths != {ndim * 2}:
        report.add(True, "embedding_length", f"stored vectors are not {ndim} float16 values", sorted(lengths))
        return
    chosen = sorted(rng.sample(keys, min(sample, len(keys))))
    if not chosen:
        return
    stored = {r.chunk_id: r.vector for r in emb.vectors_for_chunks(conn, fingerprint, chosen)}
    served = index.stored_vectors(chosen)  # chunks sharing a vector read it from its one node
    for chunk_id, vector in zip(chosen, served.reshape(len(chosen), -1), strict=True):
        truth = np.frombuffer(stored[chunk_id], dtype=emb.VECTOR_DTYPE).astype(np.float32)
        if not np.allclose(vector, truth, atol=2e-3):
            report.add(True, "vector_differs", "a served vector differs from the one stored in SQLite", chunk_id)
    for chunk_id in index.misquantized(chosen):  # the int8 copy the search scans
        report.add(True, "vector_code_differs", "a vector's int8 copy is not its float16 row quantized: "
                   "searches rank it wrongly", chunk_id)
    report.counts["vectors_compared"] = len(chosen)
