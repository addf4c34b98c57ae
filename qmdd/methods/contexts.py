"""Contexts: what the user writes about a collection or a folder of it, shown with every result from there."""

from __future__ import annotations

from functools import partial
from typing import Any

from qmdd.actors.messages import SetContext
from qmdd.methods.call import Call, MethodHandler, planned
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.targets import resolve_target
from qmdd.store import documents as docs
from qmdd.store.contexts import list_contexts, no_context


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"context.add": partial(add, s), "context.list": partial(list_, s),
            "context.remove": partial(remove, s)}


def _uri(collection: str | None, prefix: str) -> str:
    return "/" if collection is None else f"qmd://{collection}/{prefix}"


def _target(s: Services, params: dict[str, Any]) -> tuple[str | None, str]:
    target = params["target"].strip()
    if target in ("/", "qmd://", ""):
        return None, ""
    resolved = resolve_target(target, docs.list_collections(s.reader), params["cwd"])
    if resolved.collection is None:
        # qmd's words, which scripts written for it look for.
        raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"Path is not in any indexed collection: {target}",
                        hints=("Use qmd://collection/path, or a path inside a collection root; "
                               "'/' sets the global context.",))
    return resolved.collection.name, resolved.path.strip("/")


async def add(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    collection, prefix = _target(s, params)
    text = params["text"].strip()
    if not text:
        raise QmddError(ErrorCode.INVALID_INPUT, "the context text is empty")
    if params["dry_run"]:
        return planned({"target": _uri(collection, prefix), "text": text})
    await s.actors.indexer.call(SetContext(collection, prefix, text))
    return {"target": _uri(collection, prefix), "text": text}


async def remove(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    collection, prefix = _target(s, params)
    if params["dry_run"]:
        if not any(name == collection and path == prefix for name, _, path, _ in list_contexts(s.reader)):
            raise no_context(collection, prefix)
        return planned({"target": _uri(collection, prefix), "removed": True})
    await s.actors.indexer.call(SetContext(collection, prefix, None))
    return {"target": _uri(collection, prefix), "removed": True}


async def list_(s: Services, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
    return [{"target": _uri(name, prefix), "collection": name, "path": prefix, "text": text}
            for name, _, prefix, text in list_contexts(s.reader)]
