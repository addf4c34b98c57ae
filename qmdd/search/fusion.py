"""Hybrid-search fusion: typed sub-queries, weighted score fusion, reranker blending.

A query is either plain text, searched both by BM25 ("lex") and by embedding ("vec"), or a block of
typed lines (`lex:`, `vec:`, `hyde:`), one sub-query each; a `hyde:` line is a hypothetical answer
document and is embedded exactly like a `vec:` query. Every sub-query yields one ranked list.

Each list's scores are first made comparable 0..1 evidence (BM25's score already is; a cosine is
calibrated against the similarity unrelated texts reach), then a document scores the weighted mean
of its evidence over all lists, 0 where a list missed it (CombSUM). The weights give keyword lists a
fixed share, fitted on the dev sets, and vector lists the rest, scaled by how much of the query the
embedding model can read.

An optional cross-encoder then rescores the head of the fused list. Its score is blended with the
fused position rather than replacing it, and trusted less near the top: retrieval agreement on the
first few results is strong evidence, while deeper down the reranker is the better judge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from qmdd.protocol.errors import ErrorCode, QmddError

MAX_SUBQUERIES = 10
"""Each sub-query costs a BM25 search or an embedding; a cap keeps one request from hogging the daemon."""

# Typed prefixes and the list kind they produce: a `hyde:` document is searched as a vector.
_PREFIX_KINDS = {"lex": "lex", "vec": "vec", "hyde": "vec"}
_TYPED_LINE = re.compile(r"(lex|vec|hyde)\s*:(.*)", re.IGNORECASE)
_ANY_PREFIX = re.compile(r"([A-Za-z][\w-]*)\s*:")

K = TypeVar("K", bound=Hashable)  # what is ranked, typically a document id


class SubQuery(NamedTuple):
    kind: str  # "lex" or "vec"
    text: str


def _parse_error(message: str) -> QmddError:
    return QmddError(ErrorCode.QUERY_PARSE_ERROR, message)


_INTENT_LINE = re.compile(r"\s*intent\s*:(.*)", re.IGNORECASE)
_EXPAND_LINE = re.compile(r"\s*expand\s*:(.*)", re.IGNORECASE | re.DOTALL)


def split_intent(text: str) -> tuple[str, str | None]:
    """qmd's query document: an optional first `intent:` line (background, never searched) before the typed
    lines, and `expand: TEXT` as an explicit plain query. Returns (the query, the intent or None)."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    intent = None
    if first is not None and (found := _INTENT_LINE.fullmatch(lines[first])):
        intent = found.group(1).strip() or None
        text = "\n".join(lines[first + 1:])
    if expand := _EXPAND_LINE.fullmatch(text):
        text = expand.group(1).strip()
    return text, intent


def parse_query(text: str) -> list[SubQuery]:
    """Split a query into typed sub-queries; a plain query becomes one lex and one vec sub-query."""
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise _parse_error("the query is empty")
    # Typed mode starts only at a known prefix, so a plain "error: file not found" stays plain.
    if not any(_TYPED_LINE.fullmatch(line) for _, line in numbered):
        plain = " ".join(line for _, line in numbered)
        return [SubQuery("lex", plain), SubQuery("vec", plain)]

    subqueries: list[SubQuery] = []
    for number, line in numbered:
        typed = _TYPED_LINE.fullmatch(line)
        if typed is None:
            other = _ANY_PREFIX.match(line)
            if other is not None:
                raise _parse_error(f"line {number}: unknown prefix {other.group(1)!r}; use lex:, vec: or hyde:")
            raise _parse_error(f"line {number} has no lex:, vec: or hyde: prefix; once one line is typed, all must be")
        prefix, body = typed.group(1).lower(), typed.group(2).strip()
        if not body:
            raise _parse_error(f"line {number}: nothing follows {prefix}:")
        subqueries.append(SubQuery(_PREFIX_KINDS[prefix], body))
    if len(subqueries) > MAX_SUBQUERIES:
        raise _parse_error(f"{len(subqueries)} sub-queries; at most {MAX_SUBQUERIES} are allowed")
    return subqueries


class RankedList(NamedTuple, Generic[K]):
    source: str  # e.g. "lex:0", "vec:1"; names the list in explanations
    weight: float
    keys: Sequence[K]  # best first
    scores: Sequence[float]  # calibrated 0..1 evidence per key, best first (see `calibrate_cosine`)


@dataclass(slots=True)
class Fused(Generic[K]):
    key: K
    score: float  # 0..1: the weighted mean of the key's evidence over every list (0 where a list lacks it)
    rank: int  # 1-based, after sorting
    contributions: dict[str, float]  # source -> weight * evidence / total weight
    best_rank: int  # best 1-based rank in any list


def fuse(lists: Sequence[RankedList[K]]) -> list[Fused[K]]:
    """Weighted sum of calibrated scores (CombSUM), best first; ties go to the better best rank, then
    to the key seen first, so equal inputs always give the same order.

    Scores, not ranks: BM25's 0..1 score says how much of the query a page answers and whether it is
    named so, and a calibrated cosine says how close the meaning is, so a list that is unsure (a weak
    top hit) moves the fusion little, where rank fusion gives every list's first place the same pull.
    Measured against weighted RRF on the eval collections and the known-item sets (bench/fusion_fit.py):
    RRF fell up to 0.035 below the better input on English sets, this up to 0.007."""
    for ranked in lists:
        if not (math.isfinite(ranked.weight) and ranked.weight >= 0.0):
            raise ValueError(f"weight of {ranked.source} must be finite and >= 0, got {ranked.weight!r}")
        if len(ranked.scores) != len(ranked.keys):
            raise ValueError(f"{ranked.source}: {len(ranked.scores)} scores for {len(ranked.keys)} keys")
    active = [ranked for ranked in lists if ranked.weight > 0.0]
    total = sum(ranked.weight for ranked in active)
    contributions: dict[K, dict[str, float]] = {}  # insertion order = first appearance
    best_ranks: dict[K, int] = {}
    for ranked in active:  # (this loop runs for every candidate of every list: a few hundred per query)
        source, weight, rank = ranked.source, ranked.weight, 0
        for key, score in zip(ranked.keys, ranked.scores, strict=True):
            per_source = contributions.get(key)
            if per_source is None:
                contributions[key] = per_source = {}
                best_ranks[key] = rank + 1
            elif source in per_source:  # only a key's first occurrence counts
                continue
            elif rank + 1 < best_ranks[key]:
                best_ranks[key] = rank + 1
            rank += 1
            per_source[source] = weight * _evidence(score) / total
    # (-score, best rank, first appearance): distinct, so the keys themselves are never compared
    ordered = sorted((-sum(per_source.values()), best_ranks[key], order, key)
                     for order, (key, per_source) in enumerate(contributions.items()))
    return [Fused(key, -negated, rank, contributions[key], best)
            for rank, (negated, best, _, key) in enumerate(ordered, 1)]


def _evidence(score: float) -> float:
    """A list's score clipped to 0..1; NaN and infinities are no evidence."""
    if 0.0 <= score <= 1.0:
        return score
    return 1.0 if 1.0 < score < math.inf else 0.0


def calibrate_cosine(similarity: float, floor: float) -> float:
    """A cosine similarity as 0..1 evidence: at or below `floor` (what unrelated texts reach with this
    kind of model) it is no evidence at all."""
    return max(0.0, (similarity - floor) / (1.0 - floor)) if similarity < 1.0 else 1.0


def script_coverage(text: str, latin_only: bool) -> float:
    """The share of the query's letters a Latin-script model can read (1.0 when the model is not
    Latin-only). all-MiniLM-L6-v2 was trained on English: on Chinese questions its vectors are noise
    (drcd vsearch nDCG@10 0.12), so a vector list is weighted by what its model can read."""
    if not latin_only:
        return 1.0
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    return sum(1 for ch in letters if ch <= "\u024f") / len(letters)


@dataclass(slots=True)
class Blended(Generic[K]):
    key: K
    score: float
    fused_rank: int
    rerank_score: float | None  # None: the reranker did not see this item
    rrf_weight: float


def _rrf_weight(fused_rank: int) -> float:
    # The head of the fused list is where lexical and semantic retrieval agreed; protect it most.
    if fused_rank <= 3:
        return 0.75
    if fused_rank <= 10:
        return 0.60
    return 0.40


def blend_rerank(fused: Sequence[Fused[K]], rerank_scores: Mapping[K, float]) -> list[Blended[K]]:
    """Blend reranker scores (0..1) with fused position: w * 1/rank + (1 - w) * rerank.

    The RRF side uses 1/rank, not the RRF score, whose scale shifts with the number of lists. An
    item the reranker did not score gets no rerank share and so stays behind scored peers."""
    blended: list[Blended[K]] = []
    for item in fused:
        weight = _rrf_weight(item.rank)
        rerank = rerank_scores.get(item.key)
        score = weight / item.rank
        if rerank is not None:
            if not 0.0 <= rerank <= 1.0:  # also rejects NaN, which would scramble the sort
                raise ValueError(f"rerank score for {item.key!r} must lie in 0..1, got {rerank!r}")
            score += (1.0 - weight) * rerank
        blended.append(Blended(item.key, score, item.rank, rerank, weight))
    blended.sort(key=lambda entry: (-entry.score, entry.fused_rank))
    return blended

