"""Semantic search: `vsearch`, the chunks nearest in meaning to the query."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import outcome

from qmdd.actors.base import typed_outcome
from qmdd.actors.messages import ChunkCounts, VectorCoverage
from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.keyword import finish
from qmdd.methods.retrievers import ActorRetrievers
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode
from qmdd.search.hybrid import Engines, vector_search
from qmdd.search.pipeline import search_request
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"vsearch": partial(vsearch, s)}


def engines(s: Services) -> Engines:
    def has_reranker() -> bool:
        return s.registry.selection()["reranker"] is not None

    if s.config.remote_url:  # a remote model: assumed to read every script, its floor from the settings
        return Engines(s.reader, ActorRetrievers(s.actors), s.tokenizer, lambda: False,
                       lambda: s.config.remote_cosine_floor, has_reranker)
    return Engines(s.reader, ActorRetrievers(s.actors), s.tokenizer, s.registry.selected_is_latin_only,
                   s.registry.selected_cosine_floor, has_reranker)


async def vsearch(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    request = search_request(params)
    answer, rows = await vector_search(engines(s), request)
    await warn_unembedded(s, answer, params["collections"], "vector search finds nothing in it")
    return await finish(s, answer, rows, request, call)


# Fewer chunks than this without a vector are a page of the background embedder, done within a second or
# so of a save: not worth a warning on every answer. An `embed` under way or interrupted leaves more.
BEHIND_CHUNKS = 32


async def warn_unembedded(s: Services, answer: dict[str, Any], names: Sequence[str] | None,
                          consequence: str) -> None:
    """A collection without vectors answers by keywords or not at all, one with vectors for part of its
    chunks from that part: say so, and how to fix it. Only for the collections searched by name and those
    the user chose to embed: an unfiltered search also spans collections left unembedded on purpose
    (`status` shows each collection's coverage)."""
    if any(w["code"] == ErrorCode.INDEX_NOT_READY.value for w in answer.get("warnings", ())):
        return
    for name, have, total in await _unembedded(s, names):
        if have == 0:
            message = f"collection {name!r} has no vectors for the model in use, so {consequence}"
        else:
            message = (f"collection {name!r} has vectors for {have:,} of its {total:,} chunks, "
                       "so vector results from it are incomplete")
        answer.setdefault("warnings", []).append({
            "code": ErrorCode.INDEX_NOT_READY.value, "message": message,
            "hints": [f"Run `qmdctl embed -c {name}` to embed the rest; it waits for a run already "
                      "under way, which `qmdctl status` shows."]})


async def _unembedded(s: Services, names: Sequence[str] | None) -> list[tuple[str, int, int]]:
    """(name, chunks with vectors, chunks) of each collection `warn_unembedded` speaks of: worked out once
    per index generation (it cost vsearch ~0.2 ms an answer), since only a change of the index moves it."""
    seen, key = s.index_generation(), ("unembedded", tuple(names) if names else None)
    if (known := s.memo.get(seen, key)) is not None:
        return known
    vectors: dict[int, int] = await s.actors.vectors.call(VectorCoverage())
    counted = await typed_outcome(s.actors.bm25.call, ChunkCounts())
    if not isinstance(counted, outcome.Value):  # the keyword index restarting must not fail a vector search
        return []
    chunks: dict[int, int] = counted.value
    chosen = emb.chosen_collections(s.reader)
    named = None if not names else set(names)
    found = []
    for collection in docs.list_collections(s.reader):
        if not (collection.id in chosen if named is None else collection.name in named):
            continue
        have, total = vectors.get(collection.id, 0), chunks.get(collection.id, 0)
        if (have == 0 and total) or total - have >= BEHIND_CHUNKS:
            found.append((collection.name, have, total))
    s.memo.put(seen, key, found)
    return found
