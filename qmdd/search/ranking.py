"""Pure ranking helpers of the BM25 index: length norms, document columns, query weights, per-document
sums, top-k selection, explanations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Arr = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class DocColumns:
    ids: Arr  # dense document number -> doc id
    slot: Arr  # chunk slot -> dense document number
    knorm: Arr  # dense document number -> k1 * (1 - b + b * doclen / avgdoclen), over live chunks
    live: int  # documents with at least one live chunk

    @property
    def n(self) -> int:
        return int(self.ids.size)


def length_norms(lens: Arr, avgdl: float, k1: float, b: float) -> Arr:
    """Per-chunk BM25 length term k1 * (1 - b + b * len / avgdl), float32 (k1 alone when avgdl is 0)."""
    if avgdl <= 0.0:
        return np.full(lens.size, k1, np.float32)
    ratio = lens.astype(np.float32) / np.float32(avgdl)
    return (k1 * (1.0 - b + b * ratio)).astype(np.float32)


def doc_columns(docs: Arr, alive: Arr, lens: Arr, k1: float, b: float) -> DocColumns:
    """Number documents densely from the per-chunk doc ids; a document's length is the sum of its live
    chunks' lengths, and the average runs over documents with at least one live chunk."""
    ids, slot = np.unique(docs, return_inverse=True)
    doc_lens = np.bincount(slot[alive], weights=lens[alive], minlength=ids.size)
    live_docs = int(np.count_nonzero(np.bincount(slot[alive], minlength=ids.size)))
    avg = float(doc_lens.sum()) / live_docs if live_docs else 0.0
    knorm = k1 * (1.0 - b + b * doc_lens / avg) if avg > 0 else np.full(ids.size, k1)
    return DocColumns(ids, slot.astype(np.int64), knorm, live_docs)


# Word evidence alone reaches at most WORDS_CEILING; a name match closes part of the gap left to 1
# (NAME_WEIGHT of it for a name that is the whole query), so a document named exactly as the query
# ranks above every page that merely uses the words, and one whose name is part of the query gains
# in proportion to the share of the query's weight the name covers. Without the ceiling, pages whose
# words are all saturated (short pages that repeat their title) would leave a name nothing to decide.
WORDS_CEILING = 0.9
NAME_WEIGHT = 0.9
# A name covering only part of the query counts as its share to this power: "tar" in "create a tar
# archive" (share ~0.45) still lifts tar.md first, while "php" in "install a specific PHP extension"
# (~0.3) no longer lifts php.md over the page that does it. Known-item Hit@1 on tldr tasks, by
# exponent: 1: 0.70, 1.5: 0.725, 2: 0.73 (but "extract tar archive" then ranks atool first), none: 0.735.
PARTIAL_NAME_EXPONENT = 1.5


def name_evidence(strength: float, share: float) -> float:
    """How strongly a matched name speaks for its document: `strength` 1 for the name as written,
    less for a stemmed match; `share` the part of the query's weight the name covers."""
    return strength * share ** PARTIAL_NAME_EXPONENT


# A query of nothing but stopwords ("the of a", "with") has only words that most documents hold, and
# its hits matched them well: its word evidence is scaled by its rarest word's document idf against
# that of a word in a tenth of the documents (in one, among fewer than ten), so they score low and
# `--min-score` drops them. A name it matches (which.md for "which") and a line that says it word for
# word ("to be or not to be") still count in full.
COMMON_IDF = math.log1p(9.0)


def informativeness(rarest_idf: float, documents: int) -> float:
    """How much a query's words can single out one of `documents`, 0..1, from its rarest word's idf."""
    common = min(COMMON_IDF, math.log1p((documents - 0.5) / 1.5))
    return min(1.0, max(rarest_idf, 0.0) / common) if common > 0.0 else 1.0


def combine(doc_scores: Arr, doc_ceiling: float, chunk_scores: Arr, chunk_ceiling: float,
            named: Arr | None, informative: float = 1.0) -> Arr:
    """The 0..1 ranking score of every document.

    Each raw BM25 score is divided by its ceiling, sum(idf_t * (k1 + 1) * w_t) over the query terms,
    which nothing reaches (tf/(tf+K) < 1): 0.9 means "every term, saturated", and terms absent from
    the index count, so a query half made of unknown words is only half answered. A document gets the
    better of its document-level score (all its chunks' term frequencies summed, length-normalised
    against documents: a short page about X beats a long page that mentions X) and its best chunk's
    (length-normalised against chunks, which are bounded: one occurrence of a rare term in a 9 MB
    transcript is as strong a hit as in a note), times `informative` (see `informativeness`). A name
    match then closes part of the remaining gap."""
    base = np.zeros(doc_scores.size, np.float64)
    if doc_ceiling > 0.0:
        base = doc_scores / doc_ceiling
    if chunk_ceiling > 0.0:
        np.maximum(base, chunk_scores / chunk_ceiling, out=base)
    np.clip(base, 0.0, 1.0, out=base)
    base *= WORDS_CEILING * informative
    if named is not None:
        base = 1.0 - (1.0 - base) * (1.0 - NAME_WEIGHT * np.clip(named, 0.0, 1.0))
    return base


def best_per_document(docs: Arr, scores: Arr) -> tuple[Arr, Arr]:
    """(the documents, ascending; each one's best chunk score) of (document, chunk score) pairs. `docs`
    is almost always non-decreasing (see `per_document`), which makes this one reduceat."""
    if docs.size < 2 or bool((docs[1:] >= docs[:-1]).all()):
        starts = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
        return docs[starts], np.maximum.reduceat(scores.astype(np.float64), starts)
    documents, inverse = np.unique(docs, return_inverse=True)
    best = np.zeros(documents.size, np.float64)
    np.maximum.at(best, inverse, scores)
    return documents, best


def query_weights(terms: Sequence[str], term_weights: Sequence[float] | None) -> dict[str, float]:
    if term_weights is None:
        return dict.fromkeys(terms, 1.0)
    if len(term_weights) != len(terms):
        raise ValueError("term_weights must have one weight per term")
    weights: dict[str, float] = {}
    for term, w in zip(terms, term_weights, strict=True):
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"term weights must be finite and >= 0, got {w!r}")
        weights[term] = weights.get(term, 0.0) + float(w)
    return {t: w for t, w in weights.items() if w > 0.0}


def per_document(docs: Arr, tf: Arr, n_docs: int) -> tuple[Arr, Arr]:
    """(documents, summed tf) of one posting list given each posting's dense document number.

    A document's chunks get consecutive slots and documents are numbered in id order, which only
    grows, so `docs` is almost always non-decreasing: then runs are summed in O(postings) instead
    of a pass over every document of the index (a 200k-document search: p50 4.8 -> 2.7 ms)."""
    if docs.size < 2 or bool((docs[1:] >= docs[:-1]).all()):
        starts = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
        return docs[starts], np.add.reduceat(tf.astype(np.float64), starts)
    summed = np.bincount(docs, weights=tf, minlength=n_docs)
    touched = np.flatnonzero(summed)
    return touched, summed[touched]


def top_documents(scores: Arr, ids: Arr, limit: int) -> Arr:
    """Positions of the top `limit` scores, ranked by (score desc, id asc)."""
    if scores.size > limit:
        keep = np.flatnonzero(scores >= floor_of_top(scores, limit))  # closed under ties: the cut is deterministic
        return keep[np.lexsort((ids[keep], -scores[keep]))[:limit]]
    return np.lexsort((ids, -scores))[:limit]


def best_chunks(top: Arr, cand: Arr, cand_docs: Arr, cand_scores: Arr, cand_ids: Arr, n_docs: int) -> Arr:
    """Slots of the best chunk of each of the `top` documents, in their order: the chunk with the best
    chunk score wins (ties: lower chunk id). Only the top documents' chunks are ever sorted."""
    wanted = np.zeros(n_docs, bool)
    wanted[top] = True
    m = wanted[cand_docs]
    sel_docs, sel_slots = cand_docs[m], cand[m]
    order = np.lexsort((cand_ids[m], -cand_scores[m], sel_docs))
    sel_docs, sel_slots = sel_docs[order], sel_slots[order]
    first = np.ones(sel_docs.size, bool)
    first[1:] = sel_docs[1:] != sel_docs[:-1]
    best = dict(zip(sel_docs[first].tolist(), sel_slots[first].tolist(), strict=True))
    return np.array([best[d] for d in top.tolist()], np.int64)


def floor_of_top(scores: Arr, k: int) -> float:
    """A value that at least k scores reach, not far below the k-th largest score.

    On large arrays, the k-th largest of every 16th score: that many sampled scores reach it, so at
    least as many real ones do, and ~16k are selected. Partitioning 1/16 of the array is what makes
    top-k cheap (a full np.partition dominated 200k-chunk queries)."""
    n = scores.size
    if n >= 64 * k:
        sample = scores[::16]
        return float(np.partition(sample, sample.size - k)[sample.size - k])
    return float(np.partition(scores, n - k)[n - k])


def explained(matched: Sequence[tuple[str, Arr]], doc: int) -> dict[str, float]:
    """term -> contribution to document `doc`, from each matched term's (document, contribution)
    rows sorted by document."""
    parts: dict[str, float] = {}
    for term, hits in matched:
        j = np.searchsorted(hits[:, 0], doc)
        if j < hits.shape[0] and hits[j, 0] == doc:
            parts[term] = float(hits[j, 1])
    return parts
