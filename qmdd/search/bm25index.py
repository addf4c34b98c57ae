"""The in-memory BM25 index behind qmdd's bm25 actor (pure: numpy + pyroaring + stdlib).

Layout. Every added chunk gets an internal *slot*: a dense, monotonically assigned position in
the per-chunk columns (chunk id, doc id, collection, length). Posting lists hold slots, not chunk
ids, for two reasons: a dense float32 accumulator indexed by slot stays as small as the index even
when SQLite's AUTOINCREMENT ids have grown far past the live count, and because slots only grow,
appending a batch keeps every posting list sorted whatever order the chunk ids arrive in.
Postings live in two term-grouped CSR segments: a large `main` and a small `delta` that absorbs
incremental adds; delta is folded into main once it exceeds an eighth of it, so a one-file update
never rewrites the whole index while the amortised copy cost per posting stays constant.
Roaring bitmaps in chunk-id space carry the live set and per-collection membership: those are what
filters are built from, and what the caller diffs against SQLite after a restart.

Removal only clears the slot's live flag; the postings are dropped by a compaction once dead
postings exceed a quarter of all postings (or on save). Searches mask dead slots meanwhile, and
N, df and avgdl are always computed over live chunks only.

Not thread-safe for mutation: concurrent searches are fine, but add/remove/save must not overlap
with anything else (the actor serialises them).
"""

from __future__ import annotations

import array
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from qmdd.search import ranking
from qmdd.search.bm25store import Postings, SnapshotError, check_arrays, read_snapshot, write_snapshot

__all__ = ["BM25Index", "ChunkHit", "IndexedChunk", "SnapshotError"]

Arr = npt.NDArray[Any]

_MAX_ID = 2**32
_MAX_TF = 2**16 - 1
_MIN_DELTA = 1 << 16
_DEAD_FRACTION = 0.25
_POSTINGS_MEMO = 100_000  # terms whose postings `postings` remembers, forgotten all at once past it


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    chunk_id: int
    doc_id: int
    collection_id: int
    tf: dict[str, int]  # weighted term frequencies; field weights already applied by the caller
    length: int  # body length in terms, for length normalisation


@dataclass(slots=True)  # not frozen: a search builds and re-scores dozens, and frozen ones cost 6x as much to build
class ChunkHit:
    doc_id: int
    chunk_id: int  # the best-scoring chunk of the document
    score: float  # raw BM25 of the document, its chunks' term frequencies summed
    norm: float  # 0..1, the ranking score (`ranking.combine`)
    explain: dict[str, float] | None  # term -> contribution to the best chunk, when asked
    name: float = 0.0  # share of the query's weight that the document's name covers (0: none)
    named: tuple[str, ...] = ()  # the query terms that a name of the document says (`names` in search)
    phrase: float = 0.0  # phrase evidence of the best chunk (`qmdd.search.phrases`), once re-scored


def _bitmap(values: Arr) -> BitMap:
    # pyroaring bulk-loads array('I') in C; any other iterable is walked element by element (~10x slower).
    return BitMap(array.array("I", values.astype(np.uint32, copy=False).tobytes()))


def _ids_of(bm: BitMap) -> Arr:
    return np.frombuffer(bm.to_array(), dtype=np.uint32)


class BM25Index:
    """BM25 (Lucene idf) over chunks, OR semantics, aggregated to documents by their best chunk."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        if not (k1 >= 0.0 and 0.0 <= b <= 1.0):
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        self._vocab: dict[str, int] = {}
        self._main = Postings.empty()
        self._delta = Postings.empty()
        # Per-slot columns; dead slots stay until compaction.
        self._ids = np.zeros(0, np.uint32)
        self._docs = np.zeros(0, np.int64)
        self._colls = np.zeros(0, np.int64)
        self._lens = np.zeros(0, np.uint32)
        self._nterms = np.zeros(0, np.uint32)
        self._alive = np.zeros(0, bool)
        self._live = BitMap()
        self._dead_ids = BitMap()
        self._by_coll: dict[int, BitMap] = {}
        self._dead_slots = 0
        self._dead_postings = 0
        self._live_len = 0
        self._ids_sorted = True
        self._knorm_cache: Arr | None = None
        self._doc_cache: ranking.DocColumns | None = None
        self._sorted_view: tuple[Arr, Arr] | None = None
        self._allowed_cache: tuple[BitMap, Arr] | None = None
        self._postings_of: dict[str, int] = {}  # term -> its postings (`postings`), until they change

    # -- mutation -------------------------------------------------------------------------------

    def add(self, chunks: Iterable[IndexedChunk]) -> None:
        """Add a batch (prefer large batches: each call costs O(delta postings) on top of its own)."""
        batch = list(chunks)
        if not batch:
            return
        n = len(batch)
        ids = np.fromiter((c.chunk_id for c in batch), np.int64, count=n)
        if ids.min() < 0 or ids.max() >= _MAX_ID:
            raise ValueError("chunk ids must be in [0, 2**32)")
        new_ids = _bitmap(ids)
        if len(new_ids) != n:
            raise ValueError("duplicate chunk ids within one batch")
        clash = new_ids & self._live
        if clash:
            raise ValueError(f"chunk ids already indexed: {list(clash)[:10]}")
        docs = np.fromiter((c.doc_id for c in batch), np.int64, count=n)
        colls = np.fromiter((c.collection_id for c in batch), np.int64, count=n)
        lens = np.fromiter((c.length for c in batch), np.int64, count=n)
        counts = np.fromiter((len(c.tf) for c in batch), np.int64, count=n)
        if lens.min() < 0 or lens.max() >= _MAX_ID:
            raise ValueError("chunk lengths must be in [0, 2**32)")
        total = int(counts.sum())
        terms = list(chain.from_iterable(c.tf for c in batch))
        tf = np.fromiter(chain.from_iterable(c.tf.values() for c in batch), np.int64, count=total)
        if total and tf.min() < 1:
            raise ValueError("term frequencies must be >= 1")
        if self._dead_slots and new_ids & self._dead_ids:
            # A removed id coming back must not coexist with its dead slot (slot lookup needs unique ids).
            # Compaction changes no result, so doing it before validation ends is harmless.
            self._compact()
        vocab = self._vocab
        fresh = [t for t in dict.fromkeys(terms) if t not in vocab]
        if any("\0" in t for t in fresh):
            raise ValueError("terms must not contain NUL characters")

        # Validation is done: from here on the index is mutated.
        vocab.update(zip(fresh, range(len(vocab), len(vocab) + len(fresh)), strict=True))
        tids = np.fromiter(map(vocab.__getitem__, terms), np.int64, count=total)
        base = self._ids.size
        slots = np.repeat(np.arange(base, base + n, dtype=np.int64), counts)
        segment = Postings.from_flat(tids, slots, np.minimum(tf, _MAX_TF))

        last = int(self._ids[-1]) if base else -1
        self._ids_sorted = self._ids_sorted and int(ids[0]) > last and bool(np.all(np.diff(ids) > 0))
        self._ids = np.concatenate((self._ids, ids.astype(np.uint32)))
        self._docs = np.concatenate((self._docs, docs))
        self._colls = np.concatenate((self._colls, colls))
        self._lens = np.concatenate((self._lens, lens.astype(np.uint32)))
        self._nterms = np.concatenate((self._nterms, counts.astype(np.uint32)))
        self._alive = np.concatenate((self._alive, np.ones(n, bool)))
        self._live |= new_ids
        for cid in np.unique(colls).tolist():
            self._by_coll.setdefault(cid, BitMap()).update(_bitmap(ids[colls == cid]))
        self._live_len += int(lens.sum())
        self._delta = self._delta.append(segment)
        if len(self._delta) > max(_MIN_DELTA, len(self._main) // 8):
            self._main, self._delta = self._main.append(self._delta), Postings.empty()
        self._knorm_cache = self._doc_cache = None
        self._sorted_view = None
        self._allowed_cache = None
        self._postings_of = {}

    def remove(self, chunk_ids: Iterable[int]) -> int:
        """Mark chunks dead; returns how many were live. Unknown ids are ignored."""
        if isinstance(chunk_ids, BitMap):
            rm = chunk_ids & self._live
        else:
            wanted = list(chunk_ids)
            try:
                rm = BitMap(wanted)
            except (OverflowError, ValueError):
                rm = BitMap(i for i in wanted if 0 <= i < _MAX_ID)
            rm &= self._live
        if not rm:
            return 0
        slots = self._slots_of(_ids_of(rm))
        self._alive[slots] = False
        self._live -= rm
        self._dead_ids |= rm
        for cid in list(self._by_coll):
            self._by_coll[cid] -= rm
            if not self._by_coll[cid]:
                del self._by_coll[cid]
        self._dead_slots += slots.size
        self._dead_postings += int(self._nterms[slots].sum())
        self._live_len -= int(self._lens[slots].sum())
        self._knorm_cache = self._doc_cache = None
        if self._dead_postings > _DEAD_FRACTION * (len(self._main) + len(self._delta)):
            self._compact()
        return len(rm)

    # -- queries --------------------------------------------------------------------------------

    def chunk_ids(self) -> BitMap:
        return self._live.copy()

    def postings(self, terms: Collection[str]) -> int:
        """How many postings a search of `terms` reads (dead ones included): its work, told before it.
        Memoised per term until postings are added or compacted: most queries' terms were seen before."""
        known, distinct = self._postings_of, dict.fromkeys(terms)
        if missing := [t for t in distinct if t not in known and t in self._vocab]:
            if len(known) > _POSTINGS_MEMO:
                known.clear()
            wanted = np.array([self._vocab[t] for t in missing], np.int64)
            counts = np.zeros(len(missing), np.int64)
            for segment in (self._main, self._delta):
                if len(segment):
                    starts, ends = segment.ranges(wanted)
                    counts += np.array(ends, np.int64) - np.array(starts, np.int64)
            known.update(zip(missing, counts.tolist(), strict=True))
        return sum(known.get(t, 0) for t in distinct)

    def collection_sizes(self) -> dict[int, int]:
        """collection id -> its live chunks."""
        return {cid: len(members) for cid, members in self._by_coll.items()}

    def collection_chunks(self, collection_id: int) -> BitMap:
        members = self._by_coll.get(collection_id)
        return members.copy() if members is not None else BitMap()

    def search(self, terms: Sequence[str], *, limit: int = 10, allowed: BitMap | None = None,
               explain: bool = False, term_weights: Sequence[float] | None = None,
               names: Mapping[str, tuple[float, Sequence[str]]] | None = None,
               stopwords_only: bool = False) -> list[ChunkHit]:
        """Top `limit` documents for the OR of `terms`, best first (ties: lower doc_id first).

        Without `term_weights` every distinct term weighs 1; with them, weights of repeated terms add.
        `names` maps name-key terms to (strength, the query terms each covers), see
        `fields.query_name_keys`: a document holding a key is named by that part of the query, and gets
        strength x that part's share of the query's weight. `stopwords_only`: the terms are all
        stopwords, which says little (`ranking.informativeness`). Scores: see `ranking.combine`."""
        weights = ranking.query_weights(terms, term_weights)
        n_live = len(self._live)
        if limit <= 0 or not weights or not n_live or (allowed is not None and not allowed):
            return []
        knorm = self._knorm()
        doc = self._doc_columns()
        acc = np.zeros(self._ids.size, np.float32)
        dacc = np.zeros(doc.n, np.float64)
        qtids = np.fromiter((self._vocab.get(t, -1) for t in weights), np.int64, count=len(weights))
        segments = [s for s in (self._main, self._delta) if len(s)]
        ranges = [s.ranges(qtids) for s in segments]
        k1p = self.k1 + 1.0
        ceiling = chunk_ceiling = rarest = 0.0
        mass: dict[str, float] = {}  # term -> its share of the ceiling, for name coverage
        matched: list[tuple[str, Arr]] = []
        for i, (term, w) in enumerate(weights.items()):
            s, f = self._postings(segments, ranges, i)
            if not s.size:  # a word no document has: the rarest there can be
                rarest = math.log1p((doc.live - 0.5) / 0.5)
                mass[term] = rarest * k1p * w
                ceiling += mass[term]
                chunk_ceiling += math.log1p((n_live - 0.5) / 0.5) * k1p * w
                continue
            # Chunk level: picks each document's best chunk (snippets, and later fusion with vectors).
            idf = math.log1p((n_live - s.size + 0.5) / (s.size + 0.5))
            chunk_ceiling += idf * k1p * w
            ff = f.astype(np.float32)
            part = knorm[s]
            part += ff
            np.divide(ff, part, out=part)
            part *= np.float32(idf * w * k1p)
            # Slots are unique within one posting list, so fancy-index += is a correct scatter-add.
            acc[s] += part
            # Document level: the term frequencies of a document's chunks add up; documents are ranked
            # by BM25 over those sums, as if unchunked (measured better than max-of-chunks on all the
            # test collections where they differ, e.g. drcd 0.959 vs 0.952, cranfield 0.380 vs 0.373).
            touched, dtf_t = ranking.per_document(doc.slot[s], f, doc.n)
            didf = math.log1p((doc.live - touched.size + 0.5) / (touched.size + 0.5))
            rarest = max(rarest, didf)
            mass[term] = didf * k1p * w
            ceiling += mass[term]
            contrib = dtf_t / (dtf_t + doc.knorm[touched]) * (didf * w * k1p)
            dacc[touched] += contrib
            matched.append((term, np.column_stack((touched, contrib)) if explain else touched))
        if not matched:
            return []
        cand = np.flatnonzero(acc > 0)
        if allowed is not None:
            cand = cand[self._allowed_mask(cand, allowed)]
            if not cand.size:
                return []
        cand_docs, cand_scores = doc.slot[cand], acc[cand]
        named, naming = self._named(names, mass, ceiling, doc) if names else (None, [])
        # Documents are scored and ranked among those a chunk matched only, not across the index.
        matched_docs, best_chunk = ranking.best_per_document(cand_docs, cand_scores)
        final = ranking.combine(dacc[matched_docs], ceiling, best_chunk, chunk_ceiling,
                                None if named is None else named[matched_docs],
                                ranking.informativeness(rarest, doc.live) if stopwords_only else 1.0)
        top = ranking.top_documents(final, doc.ids[matched_docs], limit)
        best_docs = matched_docs[top]
        best = ranking.best_chunks(best_docs, cand, cand_docs, cand_scores, self._ids[cand], doc.n)
        # Which query terms each hit's name says, for phrase evidence: the keys' postings are at hand here,
        # where working them out again from the title and path would cost more than this search.
        said: list[set[str]] = [set() for _ in best_docs]
        order = np.argsort(best_docs)
        ranked_docs = best_docs[order]
        for covered, holders in naming:  # (best is never empty here) np.isin would sort both sides, per key
            at = np.minimum(np.searchsorted(ranked_docs, holders), ranked_docs.size - 1)
            for i in order[at[ranked_docs[at] == holders]].tolist():
                said[i].update(covered)
        # Read out of the arrays at once: numpy item by item is what building the hits cost.
        names_of = named[best_docs].tolist() if named is not None else [0.0] * best_docs.size
        return [ChunkHit(doc_id, chunk_id, score, norm, ranking.explained(matched, d) if explain else None, name,
                         tuple(sorted(said[i])))
                for i, (doc_id, chunk_id, d, score, norm, name) in enumerate(zip(
                    doc.ids[best_docs].tolist(), self._ids[best].tolist(), best_docs.tolist(),
                    dacc[best_docs].tolist(), final[top].tolist(), names_of, strict=True))]

    def _postings(self, segments: Sequence[Postings], ranges: Sequence[tuple[Any, Any]], i: int) -> tuple[Arr, Arr]:
        """Live (slots, tf) of the i-th looked-up term across the segments."""
        pieces: list[tuple[Arr, Arr]] = []
        for seg, (starts, ends) in zip(segments, ranges, strict=True):
            a, z = starts[i], ends[i]
            if z > a:
                s, f = seg.slots[a:z], seg.tf[a:z]
                if self._dead_slots:
                    keep = self._alive[s]
                    s, f = s[keep], f[keep]
                pieces.append((s, f))
        if not pieces:
            return np.zeros(0, np.int64), np.zeros(0, np.uint16)
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])

    def _named(self, names: Mapping[str, tuple[float, Sequence[str]]], mass: Mapping[str, float], ceiling: float,
               doc: ranking.DocColumns) -> tuple[Arr, list[tuple[Sequence[str], Arr]]]:
        """Per dense document: the largest share of the query's weight that a name of it covers; and
        per key some document holds, (the query terms it covers, the dense documents holding it)."""
        named = np.zeros(doc.n, np.float64)
        naming: list[tuple[Sequence[str], Arr]] = []
        # Most of a query's candidate names are no document's: only those the vocabulary has are looked up.
        keys = [key for key in names if key in self._vocab]
        if not keys:
            return named, naming
        qtids = np.array([self._vocab[key] for key in keys], np.int64)
        segments = [s for s in (self._main, self._delta) if len(s)]
        ranges = [s.ranges(qtids) for s in segments]
        for i, key in enumerate(keys):
            s, _ = self._postings(segments, ranges, i)
            if s.size and ceiling > 0.0:
                strength, covered = names[key]
                share = ranking.name_evidence(strength, sum(mass.get(t, 0.0) for t in covered) / ceiling)
                hit = doc.slot[s]
                np.maximum.at(named, hit, share)
                naming.append((covered, hit))
        return named, naming

    def statistics(self) -> dict[str, int | float]:
        arrays: list[Arr] = [self._ids, self._docs, self._colls, self._lens, self._nterms, self._alive]
        for seg in (self._main, self._delta):
            arrays += (seg.tids, seg.off, seg.slots, seg.tf)
        vocab_bytes = sum(map(len, self._vocab)) + 120 * len(self._vocab)  # str + dict entry overhead
        n_postings = len(self._main) + len(self._delta)
        return {
            "chunks": len(self._live),
            "docs": int(np.unique(self._docs[self._alive]).size),
            "collections": len(self._by_coll),
            "terms": len(self._vocab),
            "postings": n_postings - self._dead_postings,
            "dead_postings": self._dead_postings,
            "dead_chunks": self._dead_slots,
            "delta_postings": len(self._delta),
            "avgdl": self._live_len / len(self._live) if self._live else 0.0,
            "approx_bytes": sum(a.nbytes for a in arrays) + vocab_bytes + len(self._live.serialize()),
        }

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: Path, meta: dict[str, str]) -> None:
        """Write an atomic snapshot (compacting first, which does not change any result)."""
        self._compact()
        main = self._main
        terms = "\0".join(self._vocab).encode()
        arrays: dict[str, Arr] = {
            "ids": self._ids, "docs": self._docs, "colls": self._colls, "lens": self._lens,
            "tids": main.tids, "off": main.off, "slots": main.slots, "tf": main.tf,
            "terms": np.frombuffer(terms, dtype=np.uint8),
        }
        fields = {"k1": self.k1, "b": self.b, "n_terms": len(self._vocab)}
        write_snapshot(Path(path), fields, dict(meta), arrays)

    @classmethod
    def load(cls, path: Path) -> tuple[BM25Index, dict[str, str]]:
        snap = read_snapshot(Path(path))
        try:
            index = cls(float(snap.fields["k1"]), float(snap.fields["b"]))
            index._restore(int(snap.fields["n_terms"]), snap.arrays)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise SnapshotError(f"BM25 snapshot {path} is inconsistent: {e}") from e
        return index, snap.meta

    def _restore(self, n_terms: int, arrays: dict[str, Arr]) -> None:
        ids, docs, colls, lens = (arrays[k] for k in ("ids", "docs", "colls", "lens"))
        tids, off, slots, tf = (arrays[k] for k in ("tids", "off", "slots", "tf"))
        terms = check_arrays(n_terms, arrays)
        n = ids.size
        self._vocab = dict(zip(terms, range(n_terms), strict=True))
        self._main = Postings(tids.astype(np.int64), off.astype(np.int64), slots, tf)
        self._ids, self._docs, self._colls = ids, docs.astype(np.int64), colls.astype(np.int64)
        self._lens = lens.astype(np.uint32)
        self._nterms = np.bincount(slots, minlength=n).astype(np.uint32)
        self._alive = np.ones(n, bool)
        self._live = _bitmap(ids)
        for cid in np.unique(self._colls).tolist():
            self._by_coll[cid] = _bitmap(ids[self._colls == cid])
        self._live_len = int(self._lens.sum(dtype=np.int64))
        self._ids_sorted = bool(np.all(np.diff(ids.astype(np.int64)) > 0))

    # -- internals ------------------------------------------------------------------------------

    def _knorm(self) -> Arr:
        """Per-slot BM25 length term k1 * (1 - b + b * len / avgdl), cached until avgdl changes."""
        if self._knorm_cache is None:
            n_live = len(self._live)
            avgdl = self._live_len / n_live if n_live else 0.0
            self._knorm_cache = ranking.length_norms(self._lens, avgdl, self.k1, self.b)
        return self._knorm_cache

    def _doc_columns(self) -> ranking.DocColumns:
        """Dense document numbering and per-document length terms, rebuilt after each mutation."""
        if self._doc_cache is None:
            self._doc_cache = ranking.doc_columns(self._docs, self._alive, self._lens, self.k1, self.b)
        return self._doc_cache

    def _slots_of(self, ids: Arr) -> Arr:
        """Slots of chunk ids that are known to be present (slot ids are unique, see add)."""
        if self._ids_sorted:
            return np.searchsorted(self._ids, ids)
        if self._sorted_view is None:
            order = np.argsort(self._ids, kind="stable")
            self._sorted_view = (order, self._ids[order])
        order, sorted_ids = self._sorted_view
        return order[np.searchsorted(sorted_ids, ids)]

    def _allowed_mask(self, cand: Arr, allowed: BitMap) -> Arr:
        # Callers repeat the same filter (one collection) across queries: keep the last one's slot
        # mask. Otherwise map whichever side is smaller: O(min(|allowed|, |cand|) * log(max)).
        cached = self._allowed_cache
        if cached is not None and cached[0] == allowed:
            return cached[1][cand]
        if len(allowed) < 4 * cand.size:
            mask = np.zeros(self._ids.size, bool)
            mask[self._slots_of(_ids_of(allowed & self._live))] = True
            self._allowed_cache = (allowed.copy(), mask)
            return mask[cand]
        allowed_ids = _ids_of(allowed)
        cand_ids = self._ids[cand]
        pos = np.minimum(np.searchsorted(allowed_ids, cand_ids), allowed_ids.size - 1)
        return allowed_ids[pos] == cand_ids

    def _compact(self) -> None:
        """Drop dead slots and their postings, fold delta into main, and prune unused terms."""
        postings = self._main.append(self._delta)
        self._delta = Postings.empty()
        if self._dead_slots:
            keep = self._alive
            remap = np.cumsum(keep) - 1
            postings = postings.select(keep, remap)
            self._ids, self._docs, self._colls = self._ids[keep], self._docs[keep], self._colls[keep]
            self._lens, self._nterms = self._lens[keep], self._nterms[keep]
            self._alive = np.ones(self._ids.size, bool)
            self._dead_ids = BitMap()
            self._dead_slots = self._dead_postings = 0
            self._ids_sorted = bool(np.all(np.diff(self._ids.astype(np.int64)) > 0))
            self._knorm_cache = self._doc_cache = None
            self._sorted_view = None
        self._allowed_cache = None
        self._postings_of = {}
        if postings.tids.size < 0.75 * len(self._vocab):
            # Churn leaves terms no live chunk uses; renumber the survivors densely (order kept).
            names = list(self._vocab)
            self._vocab = {names[t]: i for i, t in enumerate(postings.tids.tolist())}
            postings.tids = np.arange(postings.tids.size, dtype=np.int64)
        self._main = postings
