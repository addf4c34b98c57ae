"""The vector index: exact cosine nearest neighbours of float16 vectors, found by an int8 scan.

Identical vectors are stored once. Chunks of the same text (a tree indexed twice, a repeated footer)
carry byte-identical vectors; a *node* is one distinct float16 vector, keyed by one of its chunks, its
*owner*; the other chunks are its *twins*, in two maps (twin -> owner, owner -> twins) that cost memory
only where there are duplicates. Removing an owner that has twins renames its node to the smallest twin.

Each node is a row of a float16 matrix and of an int8 copy: the row at unit length, divided by a
per-dimension scale, rounded to -127..127. The query times the scales, rounded alike, has with each row
an int8 dot product proportional to the cosine, give or take the rounding (0.0045 at most at 1M). Rows
stay dense (a removal moves the last row into the hole) and capacity doubles as they grow. `_row_of`,
an int32 array indexed by chunk id, holds each chunk's row: 4 bytes per id up to the largest, where a
dict of 1M ids takes 97 MB. SQLite never reuses a chunk id, so a tree edited for years carries ids far
above its chunk count: 10M ids ever made cost 40 MB here (`memory_bytes` counts it).

A search scans the int8 rows (SimSIMD's dot product, one thread) for the best max(CANDIDATE_FLOOR,
CANDIDATES_PER_HIT * limit) nodes, re-scores them on their float16 rows (SimSIMD's float16 cosine, the
query rounded to float16: within 1e-4 of float32 arithmetic; every path gives a chunk the same
similarity), expands each node to its chunks within the filter and orders them by similarity, then
chunk id. A filter allowing under GATHER_BELOW of the nodes has their rows gathered and scanned alone; a
wider one scans every row for proportionally more.

Why a scan: the HNSW graph it replaced (usearch, connectivity 32, 256+ candidates) reached recall@10
0.99 at 100k vectors but 0.885 at 1M, where it took 588 s to build. With bench/vector_recall.py (table
there: 384 dims, 30% duplicates, 2-core VM) recall@10 and @100 are 0.994-1.000, with and without
filters, and a query costs 1.6 ms at 100k vectors and 23 ms at 1M (70k / 700k nodes). The true top 10
were always within the scan's best 12, and the 256th best cosine at least 0.046 below the 10th: the
candidate floor leaves a wide margin. Memory: 3 bytes per dimension and node (700k x 384: 778 MiB). A
snapshot (vectorstore) loads memory-mapped (`memory_mapped`), 1M vectors in 0.4 s, and is copied into
memory on its first change (2.3 s there, with the twins' fingerprints).

Why SimSIMD: usearch's exact search, which the scan used first, calls its kernel (SimSIMD's, which
usearch is built on) once per row, ~30 ns a row; one `cdist` call scores all rows, with the same
results to the bit. Same run, old / new: 100k 2.33 / 1.55 ms, 1M 40.4 / 23.2 ms, recall unchanged; a
tldr `query` (9.4k vectors, 300 nearest chunks) 0.95 / 0.66 ms in the index, 0.35 ms less end to end.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import simsimd
from pyroaring import BitMap

from qmdd.search.vectorstore import VectorSnapshotError, read_snapshot, write_snapshot

CANDIDATE_FLOOR = 256  # the int8 scan picks at least this many nodes to re-score
CANDIDATES_PER_HIT = 4  # ... and this many per wanted hit
GATHER_BELOW = 0.25  # a filter allowing fewer nodes than this share has its rows gathered and scanned
# (700k x 384 nodes: 14% of them gathered and scanned in 7.0 ms, all scanned for 7x the candidates 16.9 ms;
# 27%: 16.8 vs 16.3 ms; 38%: 22.7 vs 16.0 ms)
FILTER_MARGIN = 2  # a wide filter's scan asks for this many times the candidates its share should hold
HEADROOM = 1.25  # a (re)quantization sets each scale this far above the largest component seen
CLIP_TOLERANCE = 0.005  # the most an int8 score may lose to saturation before every row is re-quantized
_BLOCK = 16384  # rows converted at once: bounded temporaries


def _scores(query: np.ndarray, rows: np.ndarray, metric: Literal["dot", "cosine"]) -> np.ndarray:
    """`metric` ("dot" of int8, "cosine" distance of float16) of the query with each row, as float64:
    SimSIMD's kernels for this CPU (AVX-512 where it has them), one call for all rows, one thread: two
    halve a scan alone (9.4k rows: 78 vs 181 us) but in the daemon, beside the embedder's threads,
    made `query` no faster (+0.09 ms p50, bench/ab_latency.py)."""
    scores: np.ndarray = np.asarray(simsimd.cdist(query[None, :], rows, metric=metric))[0]
    return scores


def _best_first(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the `count` highest scores, best first (ties: the lower position first)."""
    top = np.argpartition(scores, len(scores) - count)[len(scores) - count:] if count < len(scores) \
        else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


class VectorHit(NamedTuple):
    chunk_id: int
    similarity: float  # cosine similarity, -1..1


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


def _unit(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-30))
    return x


def _quantize(rows: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, float]:
    """The int8 codes of these float16 rows, and the largest length saturation cut off a unit row: the
    most it lowers or raises that row's int8 score for a unit query."""
    x = _unit(rows)
    x *= 127 / scales
    clipped = np.clip(x, -127, 127)
    cut = np.linalg.norm((x - clipped) * (scales / 127), axis=1).max(initial=0.0)
    return np.rint(clipped).astype(np.int8), float(cut)


def _resized(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    out = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)  # untouched pages cost no memory
    out[:used] = array[:used]
    return out


class VectorIndex:
    def __init__(self, ndim: int) -> None:
        self.ndim = ndim
        self._n = 0  # nodes: rows 0.._n-1 of the arrays below are live
        self._rows = np.empty((0, ndim), dtype=np.float16)
        self._codes = np.empty((0, ndim), dtype=np.int8)
        self._row_keys = np.empty(0, dtype=np.uint32)  # each row's owner
        self._row_of = np.empty(0, dtype=np.int32)  # chunk id -> its node's row (twins too), -1 for none
        # A component of a random unit vector: the first rows quantized raise the scales to their own.
        # Scales only grow, so each re-quantization raises one by HEADROOM at least: they are few.
        self._scales = np.full(ndim, 1 / math.sqrt(ndim), dtype=np.float32)
        self._viewing = False  # set by load(): the arrays are read-only views of the snapshot file
        self._owners = BitMap()
        self._owner_of: dict[int, int] = {}
        self._twins: dict[int, list[int]] = {}
        self._twin_ids = BitMap()
        self._keys = BitMap()
        # fingerprint -> owner, to find a new chunk's twin. Not in the snapshot: derived from the stored
        # rows on a loaded snapshot's first change.
        self._owner_by_print: dict[int, int] | None = {}
        self.collections: dict[int, BitMap] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> BitMap:
        return BitMap(self._keys)

    def _set_twins(self, twins: dict[int, int]) -> None:
        self._owner_of = dict(twins)
        self._twins = {}
        for twin, owner in self._owner_of.items():
            self._twins.setdefault(owner, []).append(twin)
        self._twin_ids = BitMap(self._owner_of)
        self._keys = self._owners | self._twin_ids

    def _writable(self) -> None:
        if self._viewing:  # a viewed snapshot is read-only: copy it into memory on the first change
            self._reserve(max(1024, 2 * self._n))
            self._viewing = False
        if self._owner_by_print is None:
            prints = fingerprints(self._rows[:self._n]).tolist()
            self._owner_by_print = dict(zip(prints, self._row_keys[:self._n].tolist(), strict=True))

    def _reserve(self, capacity: int) -> None:
        """Room for `capacity` rows, the live ones copied into fresh arrays."""
        self._rows, self._codes, self._row_keys = (_resized(a, self._n, capacity)
                                                   for a in (self._rows, self._codes, self._row_keys))

    def _map(self, keys: np.ndarray, rows: np.ndarray) -> None:
        if len(keys) and int(keys.max()) >= len(self._row_of):
            self._row_of = np.concatenate([self._row_of, np.full(max(int(keys.max()) + 1, 2 * len(self._row_of))
                                                                 - len(self._row_of), -1, dtype=np.int32)])
        self._row_of[keys] = rows

    def _append(self, keys: np.ndarray, rows: np.ndarray) -> None:
        start, stop = self._n, self._n + len(keys)
        if stop > len(self._rows):
            self._reserve(max(stop, 2 * len(self._rows), 1024))
        self._rows[start:stop] = rows
        self._row_keys[start:stop] = keys
        self._map(keys, np.arange(start, stop))
        self._n = stop
        codes, cut = _quantize(rows, self._scales)
        # A component beyond its scale saturates. A little of that the candidate margin absorbs (at 1M,
        # rounding moved an int8 cosine by 0.0045 at most, and the 256th best cosine was >= 0.046 below
        # the 10th); more, and a row could sink below the candidates: all rows are quantized again.
        if cut > CLIP_TOLERANCE:
            self._requantize()
        else:
            self._codes[start:stop] = codes

    def _requantize(self) -> None:
        rows, codes = self._rows[:self._n], self._codes[:self._n]
        top = np.zeros(self.ndim, dtype=np.float32)
        for start in range(0, self._n, _BLOCK):
            np.maximum(top, np.abs(_unit(rows[start:start + _BLOCK])).max(axis=0), out=top)
        self._scales = np.maximum(self._scales, HEADROOM * top)
        for start in range(0, self._n, _BLOCK):
            codes[start:start + _BLOCK] = _quantize(rows[start:start + _BLOCK], self._scales)[0]

    def add(self, chunk_ids: Iterable[int], collection_ids: Iterable[int], vectors: np.ndarray) -> int:
        """Index these chunks' vectors; known chunk ids are skipped."""
        ids = list(chunk_ids)
        seen: set[int] = set()
        fresh = []
        for i, cid in enumerate(ids):  # new ids only, each once
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
            self._append(np.asarray(list(new_rows), dtype=np.uint32), rows[list(new_rows.values())])
            self._owners.update(new_rows)
            for fingerprint, owner in new_prints.items():
                self._owner_by_print.setdefault(fingerprint, owner)
        for twin, owner in twins:
            self._owner_of[twin] = owner
            self._twins.setdefault(owner, []).append(twin)
            self._twin_ids.add(twin)
        if twins:
            found, owners = (np.asarray(side, dtype=np.uint32) for side in zip(*twins, strict=True))
            self._map(found, self._row_of[owners])
        for i in fresh:
            self._keys.add(ids[i])
            self.collections.setdefault(cols[i], BitMap()).add(ids[i])
        return len(fresh)

    def _same_vector(self, owner: int, rows: np.ndarray, row: int, new_rows: dict[int, int]) -> bool:
        stored = rows[new_rows[owner]] if owner in new_rows else self._rows[self._row_of[owner]]
        return bool(np.array_equal(stored.view(np.uint16), rows[row].view(np.uint16)))

    def remove(self, chunk_ids: Iterable[int]) -> int:
        gone = BitMap(chunk_ids) & self._keys
        if not gone:
            return 0
        self._writable()
        assert self._owner_by_print is not None
        twins_gone = gone & self._twin_ids
        self._row_of[_keys_array(twins_gone)] = -1
        for twin in twins_gone:
            owner = self._owner_of.pop(twin)
            self._twins[owner].remove(twin)
            if not self._twins[owner]:
                del self._twins[owner]
        self._twin_ids -= twins_gone
        owners_gone = _keys_array(gone - twins_gone)
        renamed: list[tuple[int, int]] = []
        dropped: list[int] = []
        prints = fingerprints(self._rows[self._row_of[owners_gone]]).tolist()
        for owner, fingerprint in zip(owners_gone.tolist(), prints, strict=True):
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
        if renamed:  # the successors, twins until now, already point at the row
            old, new = (np.asarray(side, dtype=np.uint32) for side in zip(*renamed, strict=True))
            self._row_keys[self._row_of[old]] = new
            self._row_of[old] = -1
            self._twin_ids -= BitMap(new)
            self._owners.update(new.tolist())
        if dropped:
            self._delete(np.asarray(dropped, dtype=np.uint32))
        self._owners -= BitMap(owners_gone)
        self._keys -= gone
        for members in self.collections.values():
            members -= gone
        return len(gone)

    def _delete(self, owners: np.ndarray) -> None:
        """Drop these nodes' rows; the last rows move into the holes, so the live rows stay dense."""
        rows = self._row_of[owners].astype(np.int64)
        self._row_of[owners] = -1
        stop = self._n - len(rows)
        holes = rows[rows < stop]
        movers = np.setdiff1d(np.arange(stop, self._n), rows, assume_unique=True)
        for array in (self._rows, self._codes, self._row_keys):
            array[holes] = array[movers]
        moved = self._row_keys[holes]
        self._row_of[moved] = holes
        for owner, row in zip(moved.tolist(), holes.tolist(), strict=True):
            if twins := self._twins.get(owner):
                self._row_of[twins] = row
        self._n = stop

    def stored_vectors(self, chunk_ids: Iterable[int]) -> np.ndarray:
        """These chunks' vectors as stored (float16, returned as float32), one row each; KeyError for a
        chunk the index lacks. Twins read their owner's row."""
        ids = list(chunk_ids)
        if missing := BitMap(ids) - self._keys:
            raise KeyError(f"no vector for chunks {missing.to_array().tolist()[:5]}")
        return self._rows[self._row_of[ids]].astype(np.float32).reshape(len(ids), self.ndim)

    def misquantized(self, chunk_ids: Iterable[int]) -> list[int]:
        """Those of these indexed chunks whose int8 row is not their float16 row quantized (beyond a
        rounding): the scan would rank them wrongly. For `qmdctl doctor`."""
        ids = list(chunk_ids)
        rows = self._row_of[ids]
        expected = _quantize(self._rows[rows], self._scales)[0].astype(np.int16)
        off = np.abs(expected - self._codes[rows]).max(axis=1, initial=0) > 1
        return [c for c, bad in zip(ids, off.tolist(), strict=True) if bad]

    def collection_sizes(self) -> dict[int, int]:
        """collection id -> the chunks it has a vector for."""
        return {cid: len(members) for cid, members in self.collections.items()}

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
        wanted = max(CANDIDATE_FLOOR, CANDIDATES_PER_HIT * limit)  # nodes to re-score
        if allowed is None:  # every node has a chunk: the best `wanted` nodes hold the best chunks
            return self._best(self._nearest(None, query, wanted), query, None, limit)
        allowed = allowed & self._keys
        if not allowed:
            return []
        chosen = np.zeros(self._n, dtype=bool)  # the rows of the allowed chunks' nodes
        chosen[self._row_of[_keys_array(allowed)]] = True
        rows = np.flatnonzero(chosen)  # in row order: a gather that reads forward
        found = self._scan_for(chosen, len(rows), query, wanted) if len(rows) >= GATHER_BELOW * self._n else None
        if found is None:
            found = self._nearest(rows, query, wanted)
        return self._best(found, query, allowed, limit)

    def _scan_for(self, chosen: np.ndarray, count: int, query: np.ndarray, wanted: int) -> np.ndarray | None:
        """The best `wanted` of the `count` chosen rows, from a scan of all rows asked for enough candidates;
        None where that is every row, or too few of them were chosen (the filter is far from the query)."""
        scan = math.ceil(FILTER_MARGIN * wanted * self._n / count)
        if scan >= self._n:
            return None
        found = self._nearest(None, query, scan)  # best first
        inside = found[chosen[found]]
        return inside[:wanted] if len(inside) >= min(wanted, count) else None

    def _nearest(self, rows: np.ndarray | None, query: np.ndarray, count: int) -> np.ndarray:
        """The `count` rows, of these or of all, with the best int8 scores; all of them if no more."""
        if rows is None:
            if self._n <= count:
                return np.arange(self._n)
            codes = self._codes[:self._n]
        else:
            if len(rows) <= count:
                return rows
            codes = np.take(self._codes, rows, axis=0)  # twice as fast as codes[rows]
        scaled = query * self._scales  # the int8 dot product then follows the float one
        top = float(np.abs(scaled).max())
        code = np.rint(scaled * (127 / top) if top > 0 else scaled).astype(np.int8)
        found = _best_first(_scores(code, codes, "dot"), count)
        return found if rows is None else rows[found]

    def _best(self, rows: np.ndarray, query: np.ndarray, allowed: BitMap | None, limit: int) -> list[VectorHit]:
        """The best `limit` chunks of these rows' nodes, each of which has a chunk in `allowed`."""
        if not len(rows):
            return []
        # SimSIMD's float16 kernel: numpy converts float16 slowly (1,200 rows: 0.03 ms vs 0.7).
        similarity = 1.0 - _scores(query.astype(np.float16), np.take(self._rows, rows, axis=0), "cosine")
        # Every node yields a chunk: the best `limit` nodes, and any tied with them.
        cut = len(rows) - min(limit, len(rows))
        best = np.flatnonzero(similarity >= np.partition(similarity, cut)[cut])
        chunks, similarities = self._row_keys[rows[best]], similarity[best]
        if allowed is not None or not self._twins.keys().isdisjoint(chunks.tolist()):
            chunks, similarities = self._allowed_chunks(chunks.tolist(), similarities.tolist(), allowed)
        order = np.lexsort((chunks, -similarities))[:limit]  # best first, ties by chunk id
        # Built from lists: indexing numpy arrays item by item took twice as long (300 hits: 175 vs 52 us).
        return list(map(VectorHit._make, zip(chunks[order].tolist(), similarities[order].tolist(), strict=True)))

    def _allowed_chunks(self, owners: list[int], similarities: list[float],
                        allowed: BitMap | None) -> tuple[np.ndarray, np.ndarray]:
        """The chunks of these nodes (each node's owner and its twins) that are in `allowed`, with their
        node's similarity."""
        chunks, kept = [], []
        for owner, similarity in zip(owners, similarities, strict=True):
            twins = self._twins.get(owner)
            for chunk in (owner,) if twins is None else (owner, *twins):
                if allowed is None or chunk in allowed:
                    chunks.append(chunk)
                    kept.append(similarity)
        return np.array(chunks, dtype=np.int64), np.array(kept, dtype=np.float64)

    def statistics(self) -> dict[str, Any]:
        held = self._row_of.nbytes + (0 if self._viewing else self._n * (3 * self.ndim + 4))
        return {"vectors": len(self._keys), "distinct_vectors": self._n, "dims": self.ndim,
                "memory_mapped": self._viewing, "memory_bytes": held}

    # --- persistence (the format: vectorstore) ----------------------------------------------------

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        arrays: dict[str, np.ndarray] = {"keys": self._row_keys[:self._n], "scales": self._scales, "rows": self._rows,
                                         "codes": self._codes}
        write_snapshot(path, arrays, self.collections, self._owner_of, len(self._keys), meta)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        snapshot = read_snapshot(path)
        arrays, pairs = snapshot.arrays, snapshot.twins
        index = cls(len(arrays["scales"]))
        index._scales = arrays["scales"].astype(np.float32)
        if not np.all(np.isfinite(index._scales) & (index._scales > 0)):
            raise VectorSnapshotError("quantization scales that are not positive")
        index._rows, index._codes, index._row_keys = arrays["rows"], arrays["codes"], arrays["keys"]
        index._n = len(index._row_keys)
        index._owners = BitMap(index._row_keys)
        if len(index._owners) != index._n:
            raise VectorSnapshotError("a chunk id owns two rows")
        index._map(index._row_keys, np.arange(index._n))
        try:
            index._set_twins(dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True)))
        except OverflowError as exc:  # a chunk id beyond 32 bits
            raise VectorSnapshotError(str(exc)) from None
        index.collections = snapshot.collections
        if not index._consistent(snapshot.chunks, len(pairs)):
            raise VectorSnapshotError("the twins in the sidecar disagree with the index")
        index._map(pairs[:, 0].astype(np.uint32), index._row_of[pairs[:, 1].astype(np.uint32)])
        index._owner_by_print = None
        index._viewing = True
        return index, snapshot.meta

    def _consistent(self, count: int, twin_count: int) -> bool:
        """Every twin named once, none of them a node, each owned by a node; and the chunks counted."""
        return (len(self._twin_ids) == len(self._owner_of) == twin_count and not self._twin_ids & self._owners
                and BitMap(self._twins) <= self._owners and len(self._keys) == count)


def _keys_array(keys: BitMap) -> np.ndarray:
    return np.asarray(keys.to_array(), dtype=np.uint32)
