"""Keyword search (BM25): `search`."""

from __future__ import annotations

from functools import partial
from typing import Any

from qmdd.methods.call import Call, MethodHandler, stream_long_list
from qmdd.methods.documents import attach_bodies
from qmdd.methods.retrievers import ActorRetrievers
from qmdd.methods.services import Services
from qmdd.search.pipeline import SearchRequest, keyword_search, search_request
from qmdd.store.documents import DocRow


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"search": partial(search, s)}


async def finish(s: Services, answer: dict[str, Any], rows: list[DocRow], request: SearchRequest,
                 call: Call) -> dict[str, Any]:
    """A search's reply: bodies attached when asked for (`full`), a long result list streamed."""
    if request.full:
        await attach_bodies(s, answer, rows)
    await stream_long_list(call, answer, "results")
    return answer


async def search(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    request = search_request(params)
    answer, rows = await keyword_search(s.reader, ActorRetrievers(s.actors), s.tokenizer, request)
    return await finish(s, answer, rows, request, call)
