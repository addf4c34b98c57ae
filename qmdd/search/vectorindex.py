"""The vector index: usearch HNSW over unit vectors (cosine, float16 storage), with exact-recall answers.

Identical vectors are stored once. Chunks of the same text (a tree indexed twice, a repeated footer)
carry byte-identical vectors, and as separate HNSW nodes they fill each other's neighbour lists and cut
the graph apart (issue 13: tldr indexed twice lost a page at cosine 0.59 to one at 0.29). A graph node
is one distinct float16 vector, keyed by one of its chunks, its *owner*; the other chunks are its
*twins*, in two maps (twin -> owner, owner -> twins) that cost memory only where there are duplicates.
Removing an owner that has twins renames its node to the smallest twin.

A search gathers candidate nodes, re-scores them in numpy on the stored float16 values (so every path
gives a chunk the same similarity), expands each node to its chunks within the filter and orders them
by similarity, then chunk id. The candidates are:
- every node, by brute force, in a small index (EXACT_BELOW);
- the nodes of the allowed chunks, by brute force, where a filter leaves fewer of them than
  EXACT_PER_CANDIDATE times the count the graph would be asked for, or that count reaches
  EXACT_FRACTION of the graph;
- otherwise the graph's nearest `count`: at least CANDIDATE_FLOOR and CANDIDATES_PER_HIT per wanted
  hit, divided under a filter by the share of nodes it allows, and widened by OVERSAMPLE until `limit`
  allowed chunks are among them. usearch's search list is as long as the count asked for (its
  expansion is max(EXPANSION_SEARCH, count)), so the count is also the search effort.

Why so many candidates: real queries sit far from the chunks (all-MiniLM-L6-v2 on tldr's 9,425 English
chunks, 400 queries of 1-4 title words: mean cosine of the best chunk 0.47, of the 10th 0.35), where
HNSW wanders. There, with the old graph (connectivity 16, expansion_add 64), the true top 10 were among
the graph's first 10 / 100 / 400 at recall 0.73 / 0.95 / 0.99; with this graph (32 / 128) and 256
candidates recall@10 is 0.997. On harder synthetic vectors (bench/vector_recall.py, table there)
recall@10 is 0.995 at 100k vectors (old: 0.88) but 0.88 at 1M (old: 0.53; 0.92 with 512 candidates),
where brute force would cost ~70 ms. Brute force over EXACT_BELOW vectors costs ~1.3 ms.

The snapshot is usearch's own file plus a JSON sidecar that ties it to one database and one model
fingerprint and holds the collections and the twins; both are written to temp files and renamed, the
sidecar last, so a crash leaves either the old pair or a sidecar-less file that is ignored. A snapshot
is opened memory-mapped (`view`) and copied into memory only when it must change.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pyroaring import BitMap
from usearch.index import Index, MetricKind
from usearch.index import search as brute_force_search

EXACT_BELOW = 20_000  # distinct vectors; brute force over them costs ~1.3 ms and never misses
CANDIDATE_FLOOR = 256  # the graph is asked for at least this many nodes
CANDIDATES_PER_HIT = 4  # ... and for this many per wanted hit
FILTER_MARGIN = 2  # ... and under a filter this many times that, divided by the share of nodes it allows
OVERSAMPLE = 4  # a filtered search that found too few asks again for this many times more
EXACT_PER_CANDIDATE = 32  # brute force over this many allowed vectors costs about one graph candidate
# (at 100k: ~0.45 us a vector with the copy out of usearch, ~15 us a graph candidate; at 1M ~27 us)
EXACT_FRACTION = 0.2  # a graph search this wide is no cheaper than brute force
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 96  # a floor only: usearch searches with max(this, count)
SNAPSHOT_FORMAT = 2  # 2: graph keyed by owner chunks, twins in the sidecar


class VectorHit(NamedTuple):
    chunk_id: int
    similarity: float  # cosine similarity, -1..1


class VectorSnapshotError(Exception):
    pass


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _crc(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


def fingerprints(rows: np.ndarray) -> np.ndarray:
    """64-bit hashes of float16 rows: a fixed random linear map of their bits, modulo 2**64. Equal rows
    hash equal; a match is still checked byte by byte."""
    bits = np.ascontiguousarray(rows, dtype=np.float16).view(np.uint16)
    weights = _odd_weights(bits.shape[1])
    out = np.empty(len(bits), dtype=np.uint64)
    for start in range(0, len(bits), 8192):  # bounded temporaries
        out[start:start + 8192] = (bits[start:start + 8192].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


@functools.cache
def _odd_weights(ndim: int) -> np.ndarray:
    return np.random.default_rng(ndim).integers(1, 2**63, ndim, dtype=np.uint64) * 2 + 1


class VectorIndex:
    def __init__(self, ndim: int, index: Index | None = None, collections: dict[int, BitMap] | None = None,
                 twins: dict[int, int] | None = None) -> None:
        self.ndim = ndim
        self._index = index if index is not None else self._new_index(ndim)
        self._viewing = False  # set by load(): the index is a read-only view of the snapshot file
        # Nodes removed but still in usearch's graph. usearch aborts the *process* restoring a file
        # where most entries are deleted (seen with 2.21: malloc corruption above ~60%), so save()
        # rebuilds first when they are many; `load` refuses such a file from older versions.
        self._deleted = 0
        self._owners = BitMap(np.asarray(self._index.keys, dtype=np.uint64).tolist()) if len(self._index) else BitMap()
        self._owner_of: dict[int, int] = dict(twins or {})
        self._twins: dict[int, list[int]] = {}
        for twin, owner in self._owner_of.items():
            self._twins.setdefault(owner, []).append(twin)
        self._twin_ids = BitMap(self._owner_of)
        self._keys = self._owners | self._twin_ids
        # fingerprint -> owner, to find a new chunk's twin. Not in the snapshot: derived from the stored
        # vectors on a loaded snapshot's first change.
        self._owner_by_print: dict[int, int] | None = None if len(self._index) else {}
        self.collections: dict[int, BitMap] = collections or {}

    @staticmethod
    def _new_index(ndim: int) -> Index:
        return Index(ndim=ndim, metric="cos", dtype="f16", connectivity=CONNECTIVITY,
                     expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> BitMap:
        return BitMap(self._keys)

    def _stored(self, owners: np.ndarray) -> np.ndarray:
        """The float16 rows of these nodes. Never ask for a removed key: usearch returns garbage."""
        if not len(owners):
            return np.zeros((0, self.ndim), dtype=np.float16)
        return np.asarray(self._index.get(owners, dtype="f16"), dtype=np.float16).reshape(len(owners), self.ndim)

    def _writable(self) -> None:
        if self._viewing:
            # A viewed snapshot is read-only; copy it into memory on the first change: a memory copy
            # of the graph, where rebuilding it would take minutes at 100k vectors.
            self._index = self._index.copy()
            self._viewing = False
        if self._owner_by_print is None:
            owners = _uint64(self._owners)
            self._owner_by_print = dict(zip(fingerprints(self._stored(owners)).tolist(), owners.tolist(), strict=True))

    def _rebuild(self) -> None:
        """A fresh graph of the live nodes only."""
        copy = self._new_index(self.ndim)
        owners = _uint64(self._owners)
        rows = self._stored(owners)
        if len(owners):
            copy.add(owners, rows, threads=0)
        self._index = copy
        self._deleted = 0

    def add(self, chunk_ids: Iterable[int], collection_ids: Iterable[int], vectors: np.ndarray, *,
            threads: int = 1) -> int:
        """Index these chunks' vectors; known chunk ids are skipped. One thread by default: additions
        run beside searches (embed while querying); 0 uses every core, for bulk loads."""
        ids = list(chunk_ids)
        seen: set[int] = set()
        fresh = []
        for i, cid in enumerate(ids):  # new ids only, each once: usearch would fail half-way on a repeat
            if cid not in self._keys and cid not in seen:
                seen.add(cid)
                fresh.append(i)
        if not fresh:
            return 0
        self._writable()
        assert self._owner_by_print is not None
        cols = list(collection_ids)
        rows = np.ascontiguousarray(np.asarray(vectors)[fresh], dtype=np.float16)  # identity: the stored bytes
        new_rows: dict[int, int] = {}  # new owner -> its row in `rows`
        new_prints: dict[int, int] = {}  # fingerprint -> new owner
        twins: list[tuple[int, int]] = []
        for row, fingerprint in enumerate(fingerprints(rows).tolist()):
            cid = ids[fresh[row]]
            owner = self._owner_by_print.get(fingerprint, new_prints.get(fingerprint))
            if owner is not None and self._same_vector(owner, rows, row, new_rows):
                twins.append((cid, owner))
                continue
            new_rows[cid] = row
            new_prints.setdefault(fingerprint, cid)  # on a collision (astronomically rare): another node
        if new_rows:
            self._index.add(_uint64(new_rows), rows[list(new_rows.values())], threads=threads)
            self._owners.update(new_rows)
            for fingerprint, owner in new_prints.items():
                self._owner_by_print.setdefault(fingerprint, owner)
        for twin, owner in twins:
            self._owner_of[twin] = owner
            self._twins.setdefault(owner, []).append(twin)
            self._twin_ids.add(twin)
        for i in fresh:
            self._keys.add(ids[i])
            self.collections.setdefault(cols[i], BitMap()).add(ids[i])
        return len(fresh)

    def _same_vector(self, owner: int, rows: np.ndarray, row: int, new_rows: dict[int, int]) -> bool:
        stored = rows[new_rows[owner]] if owner in new_rows else self._stored(_uint64([owner]))[0]
        return bool(np.array_equal(stored.view(np.uint16), rows[row].view(np.uint16)))

    def remove(self, chunk_ids: Iterable[int]) -> int:
        gone = BitMap(chunk_ids) & self._keys
        if not gone:
            return 0
        self._writable()
        assert self._owner_by_print is not None
        twins_gone = gone & self._twin_ids
        for twin in twins_gone:
            owner = self._owner_of.pop(twin)
            self._twins[owner].remove(twin)
            if not self._twins[owner]:
                del self._twins[owner]
        self._twin_ids -= twins_gone
        owners_gone = _uint64(gone - twins_gone)
        renamed: list[tuple[int, int]] = []
        dropped: list[int] = []
        for owner, fingerprint in zip(owners_gone.tolist(), fingerprints(self._stored(owners_gone)).tolist(),
                                      strict=True):
            heirs = self._twins.pop(owner, None)
            successor = None
            if heirs:  # the vector stays: its node passes to the smallest twin
                successor = min(heirs)
                heirs.remove(successor)
                del self._owner_of[successor]
                for twin in heirs:
                    self._owner_of[twin] = successor
                if heirs:
                    self._twins[successor] = heirs
                renamed.append((owner, successor))
            else:
                dropped.append(owner)
            if self._owner_by_print.get(fingerprint) == owner:
                if successor is None:
                    del self._owner_by_print[fingerprint]
                else:
                    self._owner_by_print[fingerprint] = successor
        if renamed:
            self._index.rename(_uint64([old for old, _ in renamed]), _uint64([new for _, new in renamed]))
            self._twin_ids -= BitMap(new for _, new in renamed)
            self._owners.update(new for _, new in renamed)
        if dropped:
            self._index.remove(_uint64(dropped))
            self._deleted += len(dropped)
        self._owners -= BitMap(owners_gone.tolist())
        self._keys -= gone
        for members in self.collections.values():
            members -= gone
        return len(gone)

    def stored_vectors(self, chunk_ids: Iterable[int]) -> np.ndarray:
        """These chunks' vectors as stored (float16, returned as float32), one row each; KeyError for a
        chunk the index lacks. Twins read their owner's node: their ids are not keys of the graph."""
        ids = list(chunk_ids)
        if missing := BitMap(ids) - self._keys:
            raise KeyError(f"no vector for chunks {missing.to_array().tolist()[:5]}")
        return self._stored(_uint64(self._owner_of.get(c, c) for c in ids)).astype(np.float32)

    def allowed_keys(self, collection_ids: list[int] | None, allowed: BitMap | None) -> BitMap | None:
        if collection_ids is None:
            return allowed
        in_collections = BitMap.union(BitMap(), *(self.collections.get(c, BitMap()) for c in collection_ids))
        return in_collections if allowed is None else allowed & in_collections

    # --- search -------------------------------------------------------------------------------------

    def search(self, query: np.ndarray, limit: int, allowed: BitMap | None = None) -> list[VectorHit]:
        if not self._keys or limit <= 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32)
        nodes = len(self._owners)
        wanted = max(CANDIDATE_FLOOR, CANDIDATES_PER_HIT * limit)  # candidates to re-score
        if allowed is None:
            # Brute force needs no spare candidates: its first `limit` nodes are the nearest (each has a chunk).
            count = min(nodes, limit if nodes <= EXACT_BELOW else wanted)
            found = self._index.search(query, count, exact=nodes <= EXACT_BELOW, threads=1).keys
            return self._best(np.asarray(found, dtype=np.uint64), query, None, limit)
        allowed = allowed & self._keys
        if not allowed:
            return []
        allowed_nodes = self._nodes_of(allowed)
        count = max(wanted, math.ceil(FILTER_MARGIN * CANDIDATES_PER_HIT * limit * nodes / len(allowed_nodes)))
        while True:
            if (nodes <= EXACT_BELOW or len(allowed_nodes) <= EXACT_PER_CANDIDATE * count
                    or count >= EXACT_FRACTION * nodes):
                return self._best(self._brute_force(_uint64(allowed_nodes), query, wanted), query, allowed, limit)
            found = self._index.search(query, count, threads=1).keys
            hits = self._best(_uint64(BitMap(found.tolist()) & allowed_nodes), query, allowed, limit)
            if len(hits) >= limit:
                return hits
            count *= OVERSAMPLE

    def _nodes_of(self, chunks: BitMap) -> BitMap:
        twins = chunks & self._twin_ids
        return (chunks - twins) | BitMap(self._owner_of[t] for t in twins)

    def _brute_force(self, owners: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
        """The nearest `count` of these nodes, by usearch's brute force over their float16 rows (~10x
        faster than numpy, which converts float16 slowly)."""
        if len(owners) <= count:
            return owners
        found = brute_force_search(self._stored(owners), query.astype(np.float16), count, MetricKind.Cos,
                                   exact=True, threads=1)
        return owners[np.asarray(found.keys, dtype=np.int64)]

    def _best(self, owners: np.ndarray, query: np.ndarray, allowed: BitMap | None, limit: int) -> list[VectorHit]:
        """The best `limit` chunks of these nodes, each of which has a chunk in `allowed`."""
        if not len(owners):
            return []
        rows = np.asarray(self._index.get(owners, dtype="f32"), dtype=np.float32).reshape(len(owners), self.ndim)
        norms = np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(query), 1e-12)
        similarity = rows @ query / norms
        if len(owners) > limit:  # every node yields a chunk: the best `limit` nodes, and any tied with them
            kth = np.partition(similarity, len(owners) - limit)[len(owners) - limit]
            chosen = np.flatnonzero(similarity >= kth)
        else:
            chosen = np.arange(len(owners))
        hits = [VectorHit(chunk, float(similarity[i])) for i in chosen.tolist()
                for chunk in (int(owners[i]), *self._twins.get(int(owners[i]), ()))
                if allowed is None or chunk in allowed]
        hits.sort(key=lambda hit: (-hit.similarity, hit.chunk_id))
        return hits[:limit]

    def statistics(self) -> dict[str, Any]:
        return {"vectors": len(self._keys), "distinct_vectors": len(self._owners), "dims": self.ndim,
                "memory_mapped": self._viewing,
                "memory_bytes": int(self._index.memory_usage) if not self._viewing else 0}

    # --- persistence --------------------------------------------------------------------------------

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        if self._deleted * 3 > len(self._owners) and not self._viewing:
            self._rebuild()
        temp = path.with_name(path.name + ".tmp")
        self._index.save(str(temp))
        with temp.open("rb+") as f:
            os.fsync(f.fileno())
        twins = np.asarray(list(self._owner_of.items()), dtype="<u8").reshape(-1, 2)
        sidecar = {**meta, "format": SNAPSHOT_FORMAT, "ndim": self.ndim, "count": len(self._keys),
                   "nodes": len(self._owners), "deleted": self._deleted, "crc32": _crc(temp),
                   "collections": {str(c): m.serialize().hex() for c, m in self.collections.items() if m},
                   "twins": base64.b64encode(twins.tobytes()).decode()}
        temp_meta = _sidecar(temp)
        temp_meta.write_text(json.dumps(sidecar))
        _sidecar(path).unlink(missing_ok=True)  # never a new sidecar beside an old index, or vice versa
        os.replace(temp, path)
        os.replace(temp_meta, _sidecar(path))

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        try:
            meta: dict[str, Any] = json.loads(_sidecar(path).read_text())
            if meta.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"snapshot format {meta.get('format')!r}, not {SNAPSHOT_FORMAT}")
            collections = {int(c): BitMap.deserialize(bytes.fromhex(m)) for c, m in meta.pop("collections").items()}
            pairs = np.frombuffer(base64.b64decode(meta.pop("twins"), validate=True), dtype="<u8").reshape(-1, 2)
            twins = dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))
            deleted, count, nodes, ndim = (int(meta[k]) for k in ("deleted", "count", "nodes", "ndim"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise VectorSnapshotError(f"no usable sidecar: {exc!r}") from None
        if deleted * 3 > nodes + 1:
            raise VectorSnapshotError("too many deleted entries to restore safely")
        if _crc(path) != meta.get("crc32"):
            raise VectorSnapshotError("checksum mismatch")
        try:
            # The expansions are not in the file; connectivity is.
            index = Index.restore(str(path), view=True, expansion_add=EXPANSION_ADD,
                                  expansion_search=EXPANSION_SEARCH)
        except (RuntimeError, ValueError, OSError) as exc:
            raise VectorSnapshotError(str(exc)) from None
        if index is None or len(index) != nodes or index.ndim != ndim:
            raise VectorSnapshotError("size or dimensions differ from the sidecar")
        try:
            vectors = cls(ndim, index, collections, twins)
        except OverflowError as exc:  # a chunk id beyond 32 bits
            raise VectorSnapshotError(str(exc)) from None
        if not vectors._consistent(count, len(pairs)):
            raise VectorSnapshotError("the twins in the sidecar disagree with the index")
        vectors._viewing = True
        vectors._deleted = deleted
        for key in ("format", "ndim", "count", "nodes", "crc32", "deleted"):
            meta.pop(key, None)
        return vectors, meta

    def _consistent(self, count: int, twin_count: int) -> bool:
        """Every twin named once, none of them a node, each owned by a node; and the chunks counted."""
        return (len(self._twin_ids) == len(self._owner_of) == twin_count and not self._twin_ids & self._owners
                and BitMap(self._twins) <= self._owners and len(self._keys) == count)


def _uint64(keys: Iterable[int]) -> np.ndarray:
    return np.asarray(keys.to_array() if isinstance(keys, BitMap) else list(keys), dtype=np.uint64)
