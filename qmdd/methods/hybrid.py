"""Hybrid search: `query`, keyword and semantic retrieval fused, then reranked when a reranker is set."""

from __future__ import annotations

from functools import partial
from typing import Any

from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.keyword import finish
from qmdd.methods.semantic import engines, warn_unembedded
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.fusion import split_intent
from qmdd.search.hybrid import hybrid_search
from qmdd.search.pipeline import search_request

MAX_CANDIDATES = 1000


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"query": partial(query, s)}


async def query(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if not 1 <= params["candidates"] <= MAX_CANDIDATES:  # refused, as the CLI and MCP do: clamped, -5 ranked by 1
        raise QmddError(ErrorCode.INVALID_INPUT, f"candidates must be between 1 and {MAX_CANDIDATES}, "
                        f"got {params['candidates']}", hints=("100, the default, suits most queries.",))
    text, inline_intent = split_intent(params["query"])
    request = search_request({**params, "query": text, "intent": params.get("intent") or inline_intent})
    answer, rows = await hybrid_search(engines(s), request, rerank=params["rerank"], candidates=params["candidates"])
    await warn_unembedded(s, answer, params["collections"], "its results come from keywords alone")
    return await finish(s, answer, rows, request, call)
