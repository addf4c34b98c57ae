"""Keyword search orchestration: filters → BM25 (through the `Retrievers` port) → phrase evidence,
collapsed copies, documents, contexts, snippets.

Everything after BM25 runs where BM25 ran (`Retrievers.keywords_then`): in the BM25 actor's turn for a
small search, in its worker thread for a larger one (`qmdd.actors.bm25`), never in a second thread: the
rest (a few dozen rows read by primary key, phrase matching, snippets of chunks cut to the model's
size) costs less than a second thread hop would (~0.2 ms of a search's ~1.5).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from pyroaring import BitMap

from qmdd import faults
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.bm25index import ChunkHit
from qmdd.search.collapse import FIRST_EXTRA, collapse, enough, fetch_sizes
from qmdd.search.fields import document_name_keys, query_name_keys
from qmdd.search.phrases import SEARCH_PHRASE_DEPTH, PhraseMatcher, with_phrase
from qmdd.search.ports import Retrievers
from qmdd.search.reads import Reads
from qmdd.search.snippets import Snippets
from qmdd.search.targets import path_readings
from qmdd.search.tokenize import MAX_TERM_LEN, Tokenizer
from qmdd.store import documents as docs
from qmdd.store.contexts import list_contexts
from qmdd.store.documents import CollectionRow, DocRow

# CPU work of one request (snippets, multi-get's glob matching) runs in worker threads, this many at
# once: the event loop keeps answering, and the actors' own threads keep a core.
CPU_THREADS = 2
_CPU_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("request_cpu_limiter")


def cpu_limiter() -> trio.CapacityLimiter:
    """The limiter of requests' CPU work, one per trio run (so one per daemon)."""
    try:
        return _CPU_LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(CPU_THREADS)
        _CPU_LIMITER.set(limiter)
        return limiter


@dataclass(frozen=True)
class SearchRequest:
    query: str
    limit: int = 5
    collections: Sequence[str] | None = None
    # A folder (or file) inside the collections, matched whole names at a time ("pages/" and "pages" select
    # what is in pages/, never pages.ru/), or one collection's as qmd://c/folder or a folder on disk
    # (`targets.path_readings`); one under which nothing is indexed is PATH_NOT_FOUND.
    path_prefix: str | None = None
    min_score: float = 0.0
    explain: bool = False
    full: bool = False
    snippet_lines: int = 4
    intent: str | None = None  # context for the reranker and snippets (query only), never searched
    collapse: bool = True  # one hit per page that exists in several copies (see qmdd.search.collapse)


class ContextIndex:
    """Contexts attached to path prefixes: every matching prefix applies, global first, shortest first."""

    def __init__(self, rows: Sequence[tuple[str | None, int | None, str, str]]) -> None:
        self._global = [text for name, _, _, text in rows if name is None]
        self._by_collection: dict[int, list[tuple[str, str]]] = {}
        for _, cid, prefix, text in rows:
            if cid is not None:
                self._by_collection.setdefault(cid, []).append((prefix.strip("/"), text))
        for entries in self._by_collection.values():
            entries.sort(key=lambda e: len(e[0]))

    def for_path(self, collection_id: int, path: str) -> str | None:
        found = list(self._global)
        for prefix, text in self._by_collection.get(collection_id, ()):
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                found.append(text)
        return "\n\n".join(found) or None


def resolve_filters(conn: sqlite3.Connection, request: SearchRequest) -> tuple[list[int] | None, BitMap | None]:
    """The collections searched (None: all) and the chunks the path filter lets through (None: all)."""
    collection_ids: list[int] | None = None
    if request.collections:
        rows: list[CollectionRow] = [docs.collection_by_name(conn, name) for name in request.collections]
        collection_ids = [r.id for r in rows]
    if not (request.path_prefix or "").strip().strip("/"):
        return collection_ids, None
    for reading in path_readings(request.path_prefix or "", docs.list_collections(conn)):
        ids = collection_ids
        if reading.collection is not None:
            if ids is not None and reading.collection.id not in ids:
                continue
            ids = [reading.collection.id]
        allowed = BitMap(docs.doc_chunk_ids_under(conn, ids, reading.path))
        if allowed:
            return ids, allowed
    raise QmddError(ErrorCode.PATH_NOT_FOUND, f"no indexed document is under {request.path_prefix!r}"
                    + (" in the collections searched" if collection_ids is not None else ""),
                    hints=("The path filter takes a folder inside the collections (ops/runbooks), a qmd:// "
                           "folder (qmd://notes/ops) or a folder on disk inside a collection; `qmdctl ls` lists "
                           "them.",))


def search_request(params: dict[str, Any]) -> SearchRequest:
    """A SearchRequest from a search/vsearch/query RPC's validated params."""
    return SearchRequest(query=params["query"], limit=params["limit"], collections=params["collections"],
                         path_prefix=params["path_prefix"], min_score=float(params["min_score"]),
                         explain=params["explain"], full=params["full"], snippet_lines=params["snippet_lines"],
                         intent=params.get("intent"), collapse=params.get("collapse", True))


MAX_QUERY_CHARS = 32_768
"""A query is a question, a sentence, a pasted paragraph or a hypothetical document (`hyde:`), not a
file: one of megabytes cost seconds of BM25 (a term lookup per distinct word) and slowed every other
request meanwhile."""


def check_request(request: SearchRequest) -> None:
    if not request.query.strip():
        raise QmddError(ErrorCode.INVALID_INPUT, "the query is empty")
    if len(request.query) > MAX_QUERY_CHARS:
        raise QmddError(ErrorCode.INVALID_INPUT,
                        f"the query has {len(request.query):,} characters; a query may have {MAX_QUERY_CHARS:,}",
                        hints=("Search for a sentence or a paragraph of the text you are looking for.",))
    if not 1 <= request.limit <= 100_000:
        raise QmddError(ErrorCode.INVALID_INPUT, "limit must be between 1 and 100000")
    # Scores are 0..1 (cosine for vsearch can dip below 0, which no threshold needs): a threshold outside
    # that range is a mistake (a percentage, a sign slip) that would answer nothing, or everything.
    if not 0.0 <= request.min_score <= 1.0:
        raise QmddError(ErrorCode.INVALID_INPUT, f"min_score must be between 0 and 1, got {request.min_score}",
                        hints=("A result's score is 0..1: 0.3 keeps results scoring 30% or more.",))
    if request.snippet_lines < 1:
        raise QmddError(ErrorCode.INVALID_INPUT, f"snippet_lines must be 1 or more, got {request.snippet_lines}")


def no_words(query: str) -> dict[str, Any]:
    """The answer to a keyword query with nothing to look up ("?!", "[", emoji): no results, and a warning,
    for "No results" alone reads as "no page says this", which it never asked. A warning, not an error:
    a script running a list of queries (tldr's "[" is a command name) gets its empty answer and goes on."""
    shown = query if len(query) <= 40 else query[:40] + "…"
    if any(len(part) > MAX_TERM_LEN for part in query.split()):
        why = f"its words are longer than {MAX_TERM_LEN} characters, which are not indexed (as base64 or ids)"
    else:
        why = "it has no words or numbers: keyword search ignores punctuation and symbols"
    return {"terms": [], "results": [], "warnings": [{
        "code": ErrorCode.INVALID_INPUT.value, "message": f"the query {shown!r} finds nothing: {why}",
        "hints": ["Search for a word or a number that the page contains."]}]}


async def keyword_search(conn: sqlite3.Connection, retrievers: Retrievers, tokenizer: Tokenizer,
                         request: SearchRequest) -> tuple[dict[str, Any], list[DocRow]]:
    """The reply (terms, results) and, for the caller's own use, each result's document row."""
    check_request(request)
    collection_ids, allowed = resolve_filters(conn, request)
    reads = Reads(conn)
    sizes = fetch_sizes(request.limit, request.collapse)
    for i, fetch in enumerate(sizes):
        asked = max(fetch, SEARCH_PHRASE_DEPTH)
        # Re-scoring, collapsing and snippets where BM25 runs: a hop costs more than any of them.
        step = functools.partial(_rank_and_render, reads, tokenizer, request, asked=asked,
                                 last=i == len(sizes) - 1)
        answer = await retrievers.keywords_then(request.query, asked, collection_ids, allowed, request.explain, step)
        if answer is not None:
            return answer
    raise AssertionError("the last fetch always answers")


def _rank_and_render(reads: Reads, tokenizer: Tokenizer, request: SearchRequest,
                     terms: list[str], found: list[ChunkHit], *, asked: int,
                     last: bool) -> tuple[dict[str, Any], list[DocRow]] | None:
    """BM25's hits, the first SEARCH_PHRASE_DEPTH re-scored by how closely their best chunk says the query,
    re-sorted, copies collapsed, and rendered; None when copies left too few and a larger fetch may
    give more."""
    if faults.enabled:
        faults.check("search.rank")
    if not terms:
        return no_words(request.query), []
    head = found[:SEARCH_PHRASE_DEPTH]
    matcher = PhraseMatcher(request.query, tokenizer)  # here, where the search runs: it tokenizes the query
    evidence = phrase_scores(reads, tokenizer, matcher, [h.chunk_id for h in head], [h.named for h in head])
    for hit, e in zip(head, evidence, strict=True):  # in place: the hits are this search's own
        if e:
            hit.norm, hit.phrase = with_phrase(hit.norm, e), e
    # Re-scoring only raises scores, so every re-scored hit stays above the ones past the depth.
    hits, copies = collapse_hits(reads, sorted(head, key=lambda h: -h.norm) + found[SEARCH_PHRASE_DEPTH:],
                                 request.collapse)
    if not (last or enough(len(hits), len(found), asked, request.limit)):
        return None
    shown = [h for h in hits if h.norm >= request.min_score][:request.limit]
    results, rows = render_results(reads, tokenizer, terms, shown, request, copies)
    return {"terms": terms, "results": results}, rows


def phrase_scores(reads: Reads, tokenizer: Tokenizer, matcher: PhraseMatcher, chunk_ids: Sequence[int],
                  named: Sequence[Collection[str] | None]) -> list[float]:
    """How closely each chunk says the matcher's query (`qmdd.search.phrases`), 0 for a chunk removed
    meanwhile. `named`: per chunk, the query terms its document's name says, where BM25 told them
    (None: not known, worked out here from the title and path). A chunk's terms are read as the
    indexer stored them, or worked out from its text where it has not yet."""
    if not (chunk_ids and matcher.has_order):
        return [0.0] * len(chunk_ids)
    stored = reads.phrase_terms(chunk_ids)
    wanted = {c for c, said in zip(chunk_ids, named, strict=True)  # texts needed: no terms stored, or no name known
              if c in stored and (stored[c] is None or said is None)}
    chunks = reads.chunk_texts(wanted)
    names = query_name_keys(tokenizer, matcher.text) if None in named else {}
    out = []
    for chunk_id, said in zip(chunk_ids, named, strict=True):
        chunk = chunks.get(chunk_id)
        if chunk_id not in stored or (chunk_id in wanted and chunk is None):  # removed meanwhile
            out.append(0.0)
            continue
        if said is None:
            assert chunk is not None
            said = {t for key in _name_keys(tokenizer, chunk.title, chunk.path) if key in names for t in names[key][1]}
        terms = stored[chunk_id]
        if terms is not None:
            out.append(matcher.evidence_in(terms, said))
        else:
            assert chunk is not None
            out.append(matcher.evidence(chunk.text, said))
    return out


# A document's name keys, memoised: the same pages come back query after query, and analysing a title
# and a path costs more than matching a chunk. Keyed by what they are computed from, so never stale.
_name_keys = functools.lru_cache(maxsize=4096)(document_name_keys)


def collapse_hits(reads: Reads, hits: Sequence[ChunkHit],
                  enabled: bool) -> tuple[list[ChunkHit], dict[int, list[str]]]:
    """Hits with copies of a better-ranked hit removed, and each kept hit's copies (as URIs)."""
    by_doc = {h.doc_id: h for h in hits}
    kept, copies = collapse_documents(reads, [h.doc_id for h in hits], enabled)
    return [by_doc[k] for k in kept], copies


def collapse_documents(reads: Reads, doc_ids: Sequence[int], enabled: bool,
                       wanted: int | None = None) -> tuple[list[int], dict[int, list[str]]]:
    """Document ids in rank order with copies of a better-ranked one removed, and each kept one's copies
    (as URIs). With `wanted`, only as many of the first ids as give that many documents (copies further
    down go unlisted): a hybrid answer fuses a few hundred, and reading all their rows cost ~1 ms."""
    if not enabled or len(doc_ids) < 2:
        return list(doc_ids), {}
    window = len(doc_ids) if wanted is None else wanted + FIRST_EXTRA
    while True:
        head = doc_ids[:window]
        rows = reads.marks(head)
        kept, others = collapse(head, rows.get)
        if len(kept) >= (wanted or 0) or window >= len(doc_ids):
            return kept, {k: [rows[o].uri for o in found] for k, found in others.items()}
        window *= 2


async def build_results(reads: Reads, tokenizer: Tokenizer, terms: Sequence[str],
                        hits: Sequence[ChunkHit], request: SearchRequest,
                        copies: dict[int, list[str]]) -> tuple[list[dict[str, Any]], list[DocRow]]:
    if not hits:
        return [], []
    return await trio.to_thread.run_sync(render_results, reads, tokenizer, terms, hits, request, copies,
                                         limiter=cpu_limiter())


def render_results(reads: Reads, tokenizer: Tokenizer, terms: Sequence[str], hits: Sequence[ChunkHit],
                   request: SearchRequest, copies: dict[int, list[str]]) -> tuple[list[dict[str, Any]], list[DocRow]]:
    """The hits as results, with snippets (a chunk may be one multi-megabyte line: a worker thread's
    work), and their document rows."""
    if not hits:
        return [], []
    chunks = reads.chunk_texts(h.chunk_id for h in hits)
    rows = reads.documents(h.doc_id for h in hits)
    contexts = ContextIndex(list_contexts(reads.conn))
    background = set(tokenizer.query_terms(request.intent)) - set(terms) if request.intent else set()
    snippets = Snippets(terms, tokenizer.index_terms, background)
    results = []
    result_docs = []
    for hit in hits:
        doc, chunk = rows.get(hit.doc_id), chunks.get(hit.chunk_id)
        if doc is None or chunk is None:  # removed between the BM25 answer and this read
            continue
        snippet = snippets.make(chunk.text, chunk.start_line, doc.lines, request.snippet_lines)
        result: dict[str, Any] = {
            "docid": doc.docid, "score": round(hit.norm, 4), "file": doc.uri, "line": snippet.line,
            "title": doc.title, "context": contexts.for_path(doc.collection_id, doc.path),
            "snippet": snippet.text, "collection": doc.collection, "path": doc.path,
            "heading": list(chunk.heading), "chunk_lines": [chunk.start_line, chunk.start_line +
                                                           chunk.text.count("\n")],
        }
        if hit.doc_id in copies:
            result["copies"] = copies[hit.doc_id]
        if request.explain:
            result["explain"] = {"bm25": round(hit.score, 4), "norm": round(hit.norm, 4),
                                 "terms": {t: round(v, 4) for t, v in (hit.explain or {}).items()},
                                 "query_terms": list(terms), "name_match": round(hit.name, 4),
                                 "phrase_match": round(hit.phrase, 4)}
        results.append(result)
        result_docs.append(doc)
    return results, result_docs
