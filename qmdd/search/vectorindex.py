"""The vector index: usearch HNSW over unit vectors (cosine, float16 storage), keyed by chunk id.

Exact search is used where it is as fast and exact: small indexes, and filters that leave few
candidates. The snapshot is usearch's own file plus a JSON sidecar that ties it to one database and
one model fingerprint; both are written to temp files and renamed, the sidecar last, so a crash leaves
either the old pair or a sidecar-less file that is ignored. A snapshot is opened memory-mapped
(`view`) and copied into memory only when it must change.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pyroaring import BitMap
from usearch.index import Index

EXACT_BELOW = 5_000  # at this size brute force costs ~0.3 ms and never misses
OVERSAMPLE = 4
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 96


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


class VectorIndex:
    def __init__(self, ndim: int, index: Index | None = None, collections: dict[int, BitMap] | None = None) -> None:
        self.ndim = ndim
        self._index = index if index is not None else self._new_index(ndim)
        self._viewing = False  # set by load(): the index is a read-only view of the snapshot file
        # Entries removed but still in usearch's graph. usearch aborts the *process* restoring a file
        # where most entries are deleted (seen with 2.21: malloc corruption above ~60%), so save()
        # rebuilds first when they are many; `load` refuses such a file from older versions.
        self._deleted = 0
        self._keys = BitMap(np.asarray(self._index.keys, dtype=np.uint64).tolist()) if len(self._index) else BitMap()
        self.collections: dict[int, BitMap] = collections or {}

    @staticmethod
    def _new_index(ndim: int) -> Index:
        return Index(ndim=ndim, metric="cos", dtype="f16", connectivity=CONNECTIVITY,
                     expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> BitMap:
        return BitMap(self._keys)

    def _writable(self) -> None:
        if self._viewing:
            # A viewed snapshot is read-only; copy it into memory on the first change.
            self._rebuild()
            self._viewing = False

    def _rebuild(self) -> None:
        """A fresh graph of the live entries only."""
        copy = self._new_index(self.ndim)
        keys = np.asarray(self._keys.to_array(), dtype=np.uint64)
        if len(keys):
            vectors = np.asarray(self._index.get(keys, dtype="f32"), dtype=np.float32).reshape(len(keys), -1)
            copy.add(keys, vectors, threads=0)
        self._index = copy
        self._deleted = 0

    def add(self, chunk_ids: Iterable[int], collection_ids: Iterable[int], vectors: np.ndarray) -> int:
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
        cols = list(collection_ids)
        keys = np.asarray([ids[i] for i in fresh], dtype=np.uint64)
        # One thread: additions run beside searches (embed while querying); rebuilds use them all.
        self._index.add(keys, np.ascontiguousarray(vectors[fresh], dtype=np.float32), threads=1)
        for i in fresh:
            self._keys.add(ids[i])
            self.collections.setdefault(cols[i], BitMap()).add(ids[i])
        return len(fresh)

    def remove(self, chunk_ids: Iterable[int]) -> int:
        gone = BitMap(chunk_ids) & self._keys
        if not gone:
            return 0
        self._writable()
        self._index.remove(np.asarray(gone.to_array(), dtype=np.uint64))
        self._deleted += len(gone)
        self._keys -= gone
        for members in self.collections.values():
            members -= gone
        return len(gone)

    def allowed_keys(self, collection_ids: list[int] | None, allowed: BitMap | None) -> BitMap | None:
        if collection_ids is None:
            return allowed
        in_collections = BitMap.union(BitMap(), *(self.collections.get(c, BitMap()) for c in collection_ids))
        return in_collections if allowed is None else allowed & in_collections

    def search(self, query: np.ndarray, limit: int, allowed: BitMap | None = None) -> list[VectorHit]:
        if not self._keys or limit <= 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32)
        if allowed is not None:
            allowed = allowed & self._keys
            if len(allowed) <= max(EXACT_BELOW, limit * OVERSAMPLE):
                return self._exact_subset(query, allowed, limit)
        exact = len(self._keys) <= EXACT_BELOW
        count = limit if allowed is None else limit * OVERSAMPLE
        while True:
            found = self._index.search(query, min(count, len(self._keys)), exact=exact, threads=1)
            hits = [VectorHit(int(k), 1.0 - float(d)) for k, d in zip(found.keys, found.distances, strict=True)
                    if allowed is None or int(k) in allowed]
            if len(hits) >= limit or count >= len(self._keys):
                return hits[:limit]
            count *= OVERSAMPLE

    def _exact_subset(self, query: np.ndarray, allowed: BitMap, limit: int) -> list[VectorHit]:
        if not allowed:
            return []
        keys = np.asarray(allowed.to_array(), dtype=np.uint64)
        matrix = np.asarray(self._index.get(keys, dtype="f32"), dtype=np.float32).reshape(len(keys), -1)
        similarity = matrix @ query / np.maximum(np.linalg.norm(matrix, axis=1) * np.linalg.norm(query), 1e-12)
        top = np.argsort(-similarity)[:limit]
        return [VectorHit(int(keys[i]), float(similarity[i])) for i in top]

    def statistics(self) -> dict[str, Any]:
        return {"vectors": len(self._keys), "dims": self.ndim, "memory_mapped": self._viewing,
                "memory_bytes": int(self._index.memory_usage) if not self._viewing else 0}

    # --- persistence --------------------------------------------------------------------------------

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        if self._deleted * 3 > len(self._keys) and not self._viewing:
            self._rebuild()
        temp = path.with_name(path.name + ".tmp")
        self._index.save(str(temp))
        with temp.open("rb+") as f:
            os.fsync(f.fileno())
        sidecar = {**meta, "ndim": self.ndim, "count": len(self._keys), "deleted": self._deleted,
                   "crc32": _crc(temp),
                   "collections": {str(c): m.serialize().hex() for c, m in self.collections.items() if m}}
        temp_meta = _sidecar(temp)
        temp_meta.write_text(json.dumps(sidecar))
        _sidecar(path).unlink(missing_ok=True)  # never a new sidecar beside an old index, or vice versa
        os.replace(temp, path)
        os.replace(temp_meta, _sidecar(path))

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, dict[str, Any]]:
        try:
            meta: dict[str, Any] = json.loads(_sidecar(path).read_text())
            collections = {int(c): BitMap.deserialize(bytes.fromhex(m)) for c, m in meta.pop("collections").items()}
            deleted, count, ndim = int(meta.get("deleted", 0)), int(meta["count"]), int(meta["ndim"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise VectorSnapshotError(f"no usable sidecar: {exc!r}") from None
        if deleted * 3 > count + 1:
            raise VectorSnapshotError("too many deleted entries to restore safely")
        if _crc(path) != meta.get("crc32"):
            raise VectorSnapshotError("checksum mismatch")
        try:
            index = Index.restore(str(path), view=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise VectorSnapshotError(str(exc)) from None
        if index is None or len(index) != count or index.ndim != ndim:
            raise VectorSnapshotError("size or dimensions differ from the sidecar")
        vectors = cls(ndim, index, collections)
        vectors._viewing = True
        vectors._deleted = deleted
        for key in ("ndim", "count", "crc32", "deleted"):
            meta.pop(key, None)
        return vectors, meta
