"""Semantic search: `vsearch`, the chunks nearest in meaning to the query."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from qmdd.actors.messages import VectorCoverage
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
    if s.config.remote_url:  # a remote model: assumed to read every script, its floor from the settings
        return Engines(s.reader, ActorRetrievers(s.actors), s.tokenizer, lambda: False,
                       lambda: s.config.remote_cosine_floor)
    return Engines(s.reader, ActorRetrievers(s.actors), s.tokenizer, s.registry.selected_is_latin_only,
                   s.registry.selected_cosine_floor)


async def vsearch(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    request = search_request(params)
    answer, rows = await vector_search(engines(s), request)
    await warn_unembedded(s, answer, params["collections"], "vector search finds nothing in it")
    return await finish(s, answer, rows, request, call)


async def warn_unembedded(s: Services, answer: dict[str, Any], names: Sequence[str] | None,
                          consequence: str) -> None:
    """A collection searched by name without a single vector answers by keywords or not at all: say so,
    and how to fix it. (An unfiltered search spans collections left unembedded on purpose: `status`
    shows each collection's coverage.)"""
    if not names or any(w["code"] == ErrorCode.INDEX_NOT_READY.value for w in answer.get("warnings", ())):
        return
    indexed: dict[int, int] = await s.actors.vectors.call(VectorCoverage())
    for name in dict.fromkeys(names):
        collection = docs.collection_by_name(s.reader, name)
        if indexed.get(collection.id, 0) == 0 and emb.has_chunks(s.reader, collection.id):
            answer.setdefault("warnings", []).append({
                "code": ErrorCode.INDEX_NOT_READY.value,
                "message": f"collection {name!r} has no vectors for the model in use, so {consequence}",
                "hints": [f"Run `qmdctl embed -c {name}` to embed it (new changes are then embedded "
                          "in the background)."]})
