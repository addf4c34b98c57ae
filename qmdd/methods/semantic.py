"""Semantic search: `vsearch`, the chunks nearest in meaning to the query."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import outcome

from qmdd.actors.base import typed_outcome
from qmdd.actors.messages import EmbedJobsStatus, VectorCoverage
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
    if any(w["code"] == ErrorCode.INDEX_NOT_READY.value for w in answer.get("warnings", ())):
        return
    await _warn_running(s, answer, names)
    if not names:
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


# A run with fewer chunks than this to go ends within seconds (~45 chunks/s on 2 cores): the note saved a
# moment ago is not worth a warning on every answer, the first embedding of a collection is.
RUN_WARNING_CHUNKS = 100


async def _warn_running(s: Services, answer: dict[str, Any], names: Sequence[str] | None) -> None:
    """A searched collection whose vectors an embedding run is still making answers from part of
    them: say which, and how far the run is. (`embed -f` replaces vectors, the old ones serve meanwhile.)"""
    jobs = await typed_outcome(s.actors.embed_jobs.call, EmbedJobsStatus())
    if not isinstance(jobs, outcome.Value):  # a stopped embed_jobs actor is status's to report
        return
    runs: list[tuple[list[str] | None, int]] = []
    manual = jobs.value["manual"]
    if manual and not manual["force"]:
        ids = manual["collection_ids"]
        runs.append((None if ids is None else [c.name for c in docs.list_collections(s.reader) if c.id in ids],
                     manual["total"] - manual["done"]))
    if jobs.value["state"] in ("embedding", "paused"):
        runs.append(([jobs.value["collection"]], jobs.value["total"] - jobs.value["done"]))
    searched = None if not names else set(names)
    for embedding, left in runs:
        if embedding is None:
            embedding = [c.name for c in docs.list_collections(s.reader)]
        hit = [name for name in embedding if searched is None or name in searched]
        if left < RUN_WARNING_CHUNKS or not hit:
            continue
        which = f"collection {hit[0]!r} is" if len(hit) == 1 else f"collections {', '.join(map(repr, hit))} are"
        answer.setdefault("warnings", []).append({
            "code": ErrorCode.INDEX_NOT_READY.value,
            "message": f"{which} being embedded ({left:,} chunks to go), so vector results from it are incomplete",
            "hints": ["`qmdctl status` shows the run's progress; answers are complete once it ends."]})
