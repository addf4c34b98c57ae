"""The method table every door serves, and a way to call one method in-process (for doors that do not
stream, like MCP tools and HTTP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qmdd.methods import (
    admin,
    collections,
    contexts,
    documents,
    embeddings,
    hybrid,
    keyword,
    models,
    plugins,
    semantic,
)
from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.freshness import after_catch_up
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import validate_params

MethodTable = Mapping[str, MethodHandler]

SESSION_METHODS = frozenset({"mcp.session"})
"""Methods a door provides itself, because they turn its connection into a session."""


def method_table(s: Services) -> dict[str, MethodHandler]:
    table: dict[str, MethodHandler] = {}
    for module in (admin, collections, contexts, documents, keyword, semantic, hybrid, models, embeddings, plugins):
        table.update(module.methods(s))
    for method in plugins.SEARCH_METHODS:
        table[method] = after_catch_up(s, plugins.with_plugins(s, table[method]))
    return table


async def invoke(table: MethodTable, method: str, params: dict[str, Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """Run a method as a request would (params checked against its declaration): its value, and the
    items it streamed meanwhile as (kind, payload)."""
    handler = table.get(method)
    if handler is None:
        raise QmddError(ErrorCode.UNKNOWN_METHOD, f"method {method!r} is not served by this daemon")
    items: list[tuple[str, Any]] = []

    async def collect(kind: str, payload: Any) -> None:
        items.append((kind, payload))

    value = await handler(validate_params(method, params), Call(collect))
    return value, items
