"""Vector and hybrid search, orchestrated through the `Retrievers` port (embedder, vectors, BM25).

`query`: every sub-query yields a ranked list of documents (BM25 for lex, nearest chunks for vec);
each list's 0..1 scores (BM25's calibrated score, the cosine above a floor) are summed with the list's
weight (CombSUM: keyword lists 0.7, vector lists 0.3, scaled by how much of the query the model's
script covers); each document keeps the chunk that ranked best for it; copies collapse; the head is
re-scored by phrase evidence (`qmdd.search.phrases`), as `search` does; an optional cross-encoder
rescores the head of the list, blended by position.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

from qmdd import faults
from qmdd.chunking import embedding_text
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.bm25index import ChunkHit
from qmdd.search.chunkdocs import NearChunk
from qmdd.search.collapse import enough, fetch_sizes
from qmdd.search.fusion import (
    Blended,
    Fused,
    RankedList,
    SubQuery,
    blend_rerank,
    calibrate_cosine,
    fuse,
    parse_query,
    script_coverage,
)
from qmdd.search.phrases import PHRASE_DEPTH, PhraseMatcher, with_phrase
from qmdd.search.pipeline import (
    SearchRequest,
    build_results,
    check_request,
    collapse_documents,
    collapse_hits,
    cpu_limiter,
    phrase_scores,
    render_results,
    resolve_filters,
)
from qmdd.search.ports import Retrievers
from qmdd.search.reads import Reads
from qmdd.search.tokenize import Tokenizer
from qmdd.store import documents as docs
from qmdd.store.documents import DocRow

# Score fusion, fitted on the eval collections and the known-item sets (bench/fusion_fit.py): keyword
# lists get 0.7 of the weight, and a cosine counts above 0.3 (what unrelated texts reach with MiniLM;
# each packaged model has its own floor, `PackagedModel.cosine_floor`: 0.85 for multilingual-e5).
# `query` minus the better of `search` and `vsearch` (nDCG@10; Hit@1 on the known-item sets): +0.006 to
# +0.070 on six English eval collections, -0.001 on medline (30 queries: one standard error of that
# difference is 0.019; no share or floor lifts it without lowering others, tldr tasks most), +0.009 on
# drcd with multilingual-e5, 0.000 to +0.025 on the known-item sets, Spanish tldr tasks included, since
# phrase evidence and names rank their pages. Rank fusion (weighted RRF, what this replaced) was up to
# 0.035 below on the English sets.
LEX_SHARE = 0.7
COSINE_FLOOR = 0.3
RERANK_DEPTH = 30  # documents the cross-encoder rescores: ~0.1 s each batch of 16 on a CPU
CHUNKS_PER_DOC = 3  # nearest chunks fetched per wanted document, since several may share one


T = TypeVar("T")


@dataclass
class Engines:
    conn: sqlite3.Connection
    retrievers: Retrievers
    tokenizer: Tokenizer
    latin_only: Callable[[], bool] = lambda: False  # does the embedding model in use read only Latin script?
    cosine_floor: Callable[[], float] = lambda: COSINE_FLOOR  # the cosine its unrelated texts reach
    has_reranker: Callable[[], bool] = lambda: True  # is a reranker set? Without one, `query` asks it nothing


@dataclass
class Candidate:
    doc_id: int
    chunk_id: int
    rank: int
    score: float  # BM25 norm or cosine similarity
    named: tuple[str, ...] | None = None  # the query terms its name says, where BM25 found it


def _candidates(nearest: Sequence[NearChunk]) -> list[Candidate]:
    return [Candidate(n.doc_id, n.chunk_id, rank, n.similarity) for rank, n in enumerate(nearest, 1)]


async def _vector_lists(engines: Engines, texts: Sequence[str], depth: int, collection_ids: list[int] | None,
                        allowed: Any, step: Callable[[], Callable[[list[list[Candidate]]], T] | None]
                        ) -> tuple[list[list[Candidate]], outcome.Outcome[T] | None]:
    """The vector lists of `texts` and, where `step()` gives a step once they are embedded, its outcome
    on them, run in the worker thread that searched (None: no step)."""
    vectors = await engines.retrievers.embed_queries(texts)
    then = step()
    if then is None:
        found = await engines.retrievers.nearest(vectors, depth * CHUNKS_PER_DOC, collection_ids, allowed)
        return [_candidates(nearest) for nearest in found], None

    def lists_then(found: list[list[NearChunk]]) -> tuple[list[list[Candidate]], outcome.Outcome[T]]:
        lists = [_candidates(nearest) for nearest in found]
        return lists, outcome.capture(then, lists)  # its failure is the request's, not the vector search's
    return await engines.retrievers.nearest_then(vectors, depth * CHUNKS_PER_DOC, collection_ids, allowed,
                                                 lists_then)


def _to_hits(candidates: Sequence[Candidate], scores: Sequence[float]) -> list[ChunkHit]:
    return [ChunkHit(c.doc_id, c.chunk_id, c.score, s, None) for c, s in zip(candidates, scores, strict=True)]


async def vector_search(engines: Engines, request: SearchRequest) -> tuple[dict[str, Any], list[DocRow]]:
    check_request(request)
    collection_ids, allowed = resolve_filters(engines.conn, request)
    vectors = await engines.retrievers.embed_queries([request.query])
    reads = Reads(engines.conn)
    terms = engines.tokenizer.query_terms(request.query)
    sizes = fetch_sizes(request.limit, request.collapse)
    for i, fetch in enumerate(sizes):
        # Collapsing and snippets in the vectors actor's worker thread: a hop costs more than either.
        step = partial(_collapse_and_render, reads, engines.tokenizer, terms, request=request, fetch=fetch,
                       last=i == len(sizes) - 1)
        answer = await engines.retrievers.nearest_then(vectors, fetch * CHUNKS_PER_DOC, collection_ids, allowed, step)
        if answer is not None:
            return answer
    raise AssertionError("the last fetch always answers")


def _collapse_and_render(reads: Reads, tokenizer: Tokenizer, terms: list[str], found: list[list[NearChunk]], *,
                         request: SearchRequest, fetch: int, last: bool) -> tuple[dict[str, Any], list[DocRow]] | None:
    """The nearest documents (`found`: the one query vector's) with copies collapsed, rendered; None
    when copies left too few and a larger fetch may give more."""
    [nearest] = found
    ranked = _candidates(nearest)
    hits, copies = collapse_hits(reads, _to_hits(ranked, [max(c.score, 0.0) for c in ranked]), request.collapse)
    if not (last or enough(len(hits), len(ranked), fetch, request.limit)):
        return None
    kept = {h.doc_id for h in hits}
    shown = [c for c in ranked if c.doc_id in kept and max(c.score, 0.0) >= request.min_score][:request.limit]
    results, rows = render_results(reads, tokenizer, terms, _to_hits(shown, [max(c.score, 0.0) for c in shown]),
                                   request, copies)
    if request.explain:
        for result, cand in zip(results, shown, strict=False):
            result["explain"] = {"cosine": round(cand.score, 4), "vector_rank": cand.rank}
    return {"terms": terms, "results": results}, rows


async def _lexical_lists(engines: Engines, texts: Sequence[str], depth: int, collection_ids: list[int] | None,
                         allowed: Any) -> list[list[Candidate]]:
    lists = []
    for text in texts:
        _, hits = await engines.retrievers.keywords(text, depth, collection_ids, allowed)
        lists.append([Candidate(h.doc_id, h.chunk_id, i + 1, h.norm, h.named) for i, h in enumerate(hits)])
    return lists


Lists = list[tuple[SubQuery, list[Candidate]]]


async def retrieve(engines: Engines, subqueries: Sequence[SubQuery], depth: int, collection_ids: list[int] | None,
                   allowed: Any, then: Callable[[Lists], T]) -> tuple[Lists, list[dict[str, Any]], T]:
    """One ranked document list per sub-query (BM25 and vectors searched concurrently), warnings for
    what could not be searched, and `then` of the lists. The keyword lists are in long before the
    query's embedding, so `then` runs with the vector search, in its worker thread: after the
    embedding, one thread hop where searching then ranking took two (~0.2 ms of `query`); where they
    are not in by then, or the vectors fail, in a thread of its own."""
    lex = [s for s in subqueries if s.kind == "lex"]
    vec = [s for s in subqueries if s.kind == "vec"]
    found: dict[str, Any] = {}

    async def lexical() -> None:
        found["lex"] = await _lexical_lists(engines, [s.text for s in lex], depth, collection_ids, allowed)

    def with_keywords(vectors: list[list[Candidate]]) -> T:
        return then([*zip(lex, found["lex"], strict=True), *zip(vec, vectors, strict=True)])

    def step() -> Callable[[list[list[Candidate]]], T] | None:
        return with_keywords if "lex" in found else None

    async def semantic() -> None:
        found["vec"] = await outcome.acapture(_vector_lists, engines, [s.text for s in vec], depth,
                                              collection_ids, allowed, step)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lexical)
        if vec:
            nursery.start_soon(semantic)
    lists: Lists = list(zip(lex, found["lex"], strict=True))
    warnings: list[dict[str, Any]] = []
    done: outcome.Outcome[T] | None = None
    if vec:
        vectors = found["vec"]
        error = vectors.error if isinstance(vectors, outcome.Error) else None
        if isinstance(error, QmddError) and error.code in _DEGRADABLE and lex:
            # Keyword results are still worth giving; say why the vectors are missing.
            warnings.append({"code": error.code.value, "message": error.message, "hints": list(error.hints)})
        else:
            found_vectors, done = vectors.unwrap()
            lists.extend(zip(vec, found_vectors, strict=True))
    if done is None:
        return lists, warnings, await trio.to_thread.run_sync(then, lists, limiter=cpu_limiter())
    return lists, warnings, done.unwrap()


# The vector side cannot answer, for a reason the warning tells: no vectors yet, no model, or a remote
# embedder down, refusing the key or answering badly. The keyword lists still make an answer.
_DEGRADABLE = (ErrorCode.INDEX_NOT_READY, ErrorCode.MODEL_NOT_FOUND, ErrorCode.MODEL_LOAD_FAILED,
               ErrorCode.BACKEND_UNAVAILABLE, ErrorCode.UNAUTHORIZED, ErrorCode.EMBEDDING_FAILED)


async def hybrid_search(engines: Engines, request: SearchRequest, *, rerank: bool,
                        candidates: int) -> tuple[dict[str, Any], list[DocRow]]:
    check_request(request)
    subqueries = parse_query(request.query)
    collection_ids, allowed = resolve_filters(engines.conn, request)
    reads = Reads(engines.conn)
    terms = sorted({t for sub in subqueries for t in engines.tokenizer.query_terms(sub.text)})
    rank = partial(_rank, engines.tokenizer, reads, subqueries, engines.latin_only(), engines.cosine_floor(),
                   request, max(request.limit, RERANK_DEPTH if rerank else request.limit))
    blended: list[Blended[int]] = []
    # No reranker set (the default install): its texts are not read nor the embedder asked, and the
    # answer is rendered where it was ranked; it is the one the reranker's absence gave (~0.3 ms sooner).
    if rerank and engines.has_reranker():
        lists, warnings, ranked = await retrieve(engines, subqueries, max(candidates, request.limit),
                                                 collection_ids, allowed, rank)
        blended = await _reranked(engines, request, subqueries, ranked)
        results, rows = await build_results(reads, engines.tokenizer, terms, _shown(ranked, blended, request),
                                            request, ranked.copies)
    else:
        lists, warnings, (ranked, (results, rows)) = await retrieve(
            engines, subqueries, max(candidates, request.limit), collection_ids, allowed,
            partial(_ranked_and_rendered, rank, reads, engines.tokenizer, terms, request))
    if request.explain:
        _explain(results, [r.id for r in rows], ranked.head, lists, _list_names(lists), ranked.by_source, blended,
                 ranked.phrases)
    answer: dict[str, Any] = {"terms": terms, "results": results,
                              "subqueries": [{"type": s.kind, "query": s.text} for s in subqueries],
                              "reranked": bool(blended)}
    if warnings:
        answer["warnings"] = warnings
    return answer, rows


@dataclass
class _Ranked:
    """The fused documents that may be shown or reranked, best first, with what explains them."""

    head: list[Fused[int]]
    chosen: dict[int, Candidate]  # each one's chunk: from the list that ranked it best
    by_source: dict[str, dict[int, Candidate]]  # each list's candidates by document
    copies: dict[int, list[str]]  # each kept document's copies
    phrases: dict[int, float]  # the phrase evidence of the head's first PHRASE_DEPTH


def _list_names(lists: Lists) -> list[str]:
    return [f"{sub.kind}:{i}" for i, (sub, _) in enumerate(lists)]


def _rank(tokenizer: Tokenizer, reads: Reads, subqueries: Sequence[SubQuery], latin_only: bool, cosine_floor: float,
          request: SearchRequest, shown: int, lists: Lists) -> _Ranked:
    """The first `shown` documents of the lists weighed (in the worker thread, since it calibrates every
    candidate's score), fused, collapsed and re-scored (`_fuse_and_rescore`)."""
    if faults.enabled:
        faults.check("query.rank")
    weighed = _ranked_lists(lists, _list_names(lists), latin_only, cosine_floor)
    fused, by_source, copies, phrases = _fuse_and_rescore(tokenizer, reads, subqueries, lists, weighed, request,
                                                          max(PHRASE_DEPTH, shown))
    head = fused[:shown]
    return _Ranked(head, {f.key: _best_candidate(f.contributions, by_source, f.key) for f in head},
                   by_source, copies, phrases)


async def _reranked(engines: Engines, request: SearchRequest, subqueries: Sequence[SubQuery],
                    ranked: _Ranked) -> list[Blended[int]]:
    """The head blended with the cross-encoder's scores, best first; empty when none is configured."""
    if not ranked.head:
        return []
    order = [f.key for f in ranked.head]
    query_text = next((s.text for s in subqueries if s.kind == "vec"), subqueries[0].text)
    if request.intent:  # as qmd: the reranker judges relevance with the caller's background first
        query_text = f"{request.intent}\n\n{query_text}"
    texts = _chunk_inputs(engines.conn, [ranked.chosen[key].chunk_id for key in order])
    scores = await engines.retrievers.rerank(query_text, [texts.get(ranked.chosen[k].chunk_id, "") for k in order])
    return [] if scores is None else blend_rerank(ranked.head, dict(zip(order, scores, strict=True)))


def _shown(ranked: _Ranked, blended: Sequence[Blended[int]], request: SearchRequest) -> list[ChunkHit]:
    """The hits to show: in the reranker's order when it ran, above `min_score`, `limit` of them."""
    if blended:
        order, scores = [b.key for b in blended], {b.key: b.score for b in blended}
    else:
        order, scores = [f.key for f in ranked.head], {f.key: f.score for f in ranked.head}
    kept = [key for key in order if scores[key] >= request.min_score][:request.limit]
    return [ChunkHit(key, ranked.chosen[key].chunk_id, ranked.chosen[key].score, min(scores[key], 1.0), None)
            for key in kept]


def _ranked_and_rendered(rank: Callable[[Lists], _Ranked], reads: Reads, tokenizer: Tokenizer, terms: Sequence[str],
                         request: SearchRequest,
                         lists: Lists) -> tuple[_Ranked, tuple[list[dict[str, Any]], list[DocRow]]]:
    ranked = rank(lists)
    return ranked, render_results(reads, tokenizer, terms, _shown(ranked, [], request), request, ranked.copies)


def _fuse_and_rescore(tokenizer: Tokenizer, reads: Reads, subqueries: Sequence[SubQuery],
                      lists: Sequence[tuple[SubQuery, list[Candidate]]], weighed: Sequence[RankedList[int]],
                      request: SearchRequest, wanted: int) -> tuple[list[Fused[int]], dict[str, dict[int, Candidate]],
                                                                    dict[int, list[str]], dict[int, float]]:
    """The lists fused, copies collapsed (enough for `wanted` documents), the head re-scored by phrase
    evidence, and ranked: the fused documents, each list's candidates by document, each kept document's
    copies, and the head's phrase evidence. ~1 ms of CPU for a few hundred documents: a worker
    thread's job, which on the event loop would hold up every other request."""
    # A document no list gave any evidence for (a cosine at or below the floor, no keyword) is not an
    # answer: listed, it padded a short answer with unrelated pages scored 0.
    fused = [f for f in fuse(weighed) if f.score > 0.0]
    by_source = {ranked.source: {c.doc_id: c for c in found} for ranked, (_, found) in zip(weighed, lists, strict=True)}
    kept, copies = collapse_documents(reads, [f.key for f in fused], request.collapse, wanted)
    if len(kept) < len(fused):
        keep = set(kept)
        fused = [f for f in fused if f.key in keep]
    phrases = _with_phrases(tokenizer, reads, subqueries, fused, by_source)
    for rank, item in enumerate(fused, 1):  # blending by position needs the ranks without the copies
        item.rank = rank
    return fused, by_source, copies, phrases


def _with_phrases(tokenizer: Tokenizer, reads: Reads, subqueries: Sequence[SubQuery], fused: list[Fused[int]],
                  by_source: dict[str, dict[int, Candidate]]) -> dict[int, float]:
    """Re-score (in place) and re-sort the first PHRASE_DEPTH fused documents by how closely their
    chunk says the query (the first keyword sub-query's text), as `search` does its hits: once, after
    fusion, so a phrase counts alike whatever the lists said. Returns each document's evidence."""
    head = fused[:PHRASE_DEPTH]
    text = next((s.text for s in subqueries if s.kind == "lex"), subqueries[0].text)
    chunk_ids = [_best_candidate(f.contributions, by_source, f.key).chunk_id for f in head]
    keyword = by_source.get("lex:0", {})  # the list of `text` when it is a keyword sub-query: lists start with them
    named = [keyword[f.key].named if f.key in keyword else None for f in head]
    evidence = dict(zip([f.key for f in head], phrase_scores(reads, tokenizer, PhraseMatcher(text, tokenizer),
                                                             chunk_ids, named), strict=True))
    for item in head:
        item.score = with_phrase(item.score, evidence[item.key])
    head.sort(key=lambda f: -f.score)  # stable: ties keep the fused order
    fused[:PHRASE_DEPTH] = head
    return evidence


def _ranked_lists(lists: Sequence[tuple[SubQuery, list[Candidate]]], names: Sequence[str],
                  latin_only: bool, cosine_floor: float) -> list[RankedList[int]]:
    """Keyword lists share LEX_SHARE of the weight, vector lists the rest (each scaled by how much of
    its text the model reads); a kind alone takes all of it."""
    n_lex = sum(1 for sub, _ in lists if sub.kind == "lex")
    n_vec = len(lists) - n_lex
    out = []
    for name, (sub, ranked) in zip(names, lists, strict=True):
        if sub.kind == "lex":
            weight = (LEX_SHARE if n_vec else 1.0) / n_lex
            scores = [c.score for c in ranked]
        else:
            weight = (1.0 - LEX_SHARE if n_lex else 1.0) / n_vec * script_coverage(sub.text, latin_only)
            scores = [calibrate_cosine(c.score, cosine_floor) for c in ranked]
        out.append(RankedList(name, weight, [c.doc_id for c in ranked], scores))
    return out


def _explain(results: list[dict[str, Any]], doc_ids: list[int], head: Sequence[Fused[int]],
             lists: Sequence[tuple[SubQuery, list[Candidate]]], names: Sequence[str],
             by_source: dict[str, dict[int, Candidate]], blended: Sequence[Blended[int]],
             phrases: dict[int, float]) -> None:
    fused_by_key = {f.key: f for f in head}
    blended_by_key = {b.key: b for b in blended}
    for result, key in zip(results, doc_ids, strict=True):
        f = fused_by_key[key]
        result["explain"] = {
            "fused": round(f.score, 5), "fused_rank": f.rank,
            "lists": {name: {"rank": by_source[name][key].rank, "score": round(by_source[name][key].score, 4),
                             "share": round(f.contributions.get(name, 0.0), 5), "query": lists[i][0].text}
                      for i, name in enumerate(names) if key in by_source[name]},
            "chunk_from": _best_source(f.contributions),
            "phrase_match": round(phrases.get(key, 0.0), 4),
        }
        b = blended_by_key.get(key)
        if b is not None:
            result["explain"]["rerank"] = None if b.rerank_score is None else round(b.rerank_score, 4)
            result["explain"]["rrf_weight"] = b.rrf_weight


def _best_source(contributions: dict[str, float]) -> str:
    return max(contributions.items(), key=lambda item: item[1])[0]


def _best_candidate(contributions: dict[str, float], by_source: dict[str, dict[int, Candidate]],
                    doc_id: int) -> Candidate:
    """The chunk from the list that ranked this document best (its snippet and rerank text)."""
    return by_source[_best_source(contributions)][doc_id]


def _chunk_inputs(conn: sqlite3.Connection, chunk_ids: Sequence[int]) -> dict[int, str]:
    return {c.chunk_id: embedding_text(c.title, c.heading, c.text) for c in docs.chunk_texts(conn, list(chunk_ids))}
