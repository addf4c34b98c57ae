"""Plugins: `plugin.*` (install, list, info, remove, enable, disable, attach, detach), and the query-time hooks
wrapped around `search`, `vsearch` and `query`.

A search runs the plugins it names (`plugins`: every hit) and those its collections run by default (`plugin
attach`: the hits from that collection). When a filter runs, the engine is asked for more hits than the
caller wants (4 times as many, at least 50, at most 1,000), so that it does not leave the page short;
filters run first, then scorers in order, each replacing the scores of the hits it sees (plugins/ABI.md);
the hits are sorted again by score and cut to the limit. Scorers alone re-rank the page the engine gives:
widening it would cost more in snippets than the scorer itself. A plugin that fails is left out, and the
answer says so in its warnings, or the search fails with PLUGIN_FAILED when the caller asked for strict
plugins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import outcome

from qmdd.actors.messages import (
    InstallPlugin,
    ListPlugins,
    RemovePlugin,
    RunPlugin,
    SetCollectionPlugins,
    SetPluginEnabled,
)
from qmdd.methods.call import Call, MethodHandler, planned, stream_long_list, whole
from qmdd.methods.collections import scan
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.abi import Candidate
from qmdd.sandbox.registry import not_installed
from qmdd.store import documents as docs

SEARCH_METHODS = ("search", "vsearch", "query")
WIDEN, WIDEN_MIN, WIDEN_MAX = 4, 50, 1000


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"plugin.install": partial(install, s), "plugin.list": partial(list_, s),
            "plugin.info": partial(info, s), "plugin.remove": partial(remove, s),
            "plugin.enable": partial(set_enabled, s, True), "plugin.disable": partial(set_enabled, s, False),
            "plugin.attach": partial(attach, s, True), "plugin.detach": partial(attach, s, False)}


# --- management --------------------------------------------------------------------------------------

async def list_(s: Services, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
    plugins: list[dict[str, Any]] = await s.actors.plugins.call(ListPlugins())
    attached = _attached(s)
    for plugin in plugins:
        plugin["collections"] = sorted(name for name, names in attached.items() if plugin["name"] in names)
    return plugins


async def info(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    for plugin in await list_(s, params, call):
        if plugin["name"] == params["name"]:
            return plugin
    raise not_installed(params["name"])


async def install(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    module = params["module"]
    installed: dict[str, Any] = await s.actors.plugins.call(InstallPlugin(
        module.encode() if isinstance(module, str) else module, params["source"] or "the module",
        params["default_name"] or "", params["name"], params["manifest"], params["replace"]))
    installed["rescanned"] = await _rescan_for_transforms(s, installed["name"], installed["hooks"], call)
    return installed


async def remove(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if params["dry_run"]:
        plugin = await info(s, {"name": params["name"]}, call)
        return planned({"name": plugin["name"], "removed": True, "detached_from": plugin["collections"]})
    removed: dict[str, Any] = await s.actors.plugins.call(RemovePlugin(params["name"]))
    attached = _attached(s)
    for collection, names in attached.items():
        if params["name"] in names:
            await s.actors.indexer.call(SetCollectionPlugins(collection, [n for n in names if n != params["name"]]))
    removed["rescanned"] = await _rescan_for_transforms(s, params["name"], removed["hooks"], call, attached)
    return removed


async def set_enabled(s: Services, enabled: bool, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if params["dry_run"]:
        plugin = await info(s, {"name": params["name"]}, call)
        return planned({"name": plugin["name"], "enabled": enabled})
    changed: dict[str, Any] = await s.actors.plugins.call(SetPluginEnabled(params["name"], enabled))
    changed["rescanned"] = await _rescan_for_transforms(s, changed["name"], changed["hooks"], call)
    return changed


async def attach(s: Services, attaching: bool, params: dict[str, Any], call: Call) -> dict[str, Any]:
    """Run a plugin by default on a collection (or stop): its searches, and its documents' transforms."""
    plugin = await info(s, {"name": params["name"]}, call)
    collection = docs.collection_by_name(s.reader, params["collection"])
    names = [n for n in collection.plugins if n != plugin["name"]] + ([plugin["name"]] if attaching else [])
    if params["dry_run"]:
        return planned({"collection": collection.name, "plugins": names,
                        "rescan": "transform" in plugin["hooks"]})
    answer: dict[str, Any] = await s.actors.indexer.call(SetCollectionPlugins(collection.name, names))
    answer["rescanned"] = []
    if "transform" in plugin["hooks"]:
        answer["rescanned"] = await scan(s, [collection.name], call)
    return answer


def _attached(s: Services) -> dict[str, tuple[str, ...]]:
    """Collection name -> the plugins it runs by default."""
    return {c.name: c.plugins for c in docs.list_collections(s.reader) if c.plugins}


async def _rescan_for_transforms(s: Services, name: str, hooks: Sequence[str], call: Call,
                                 before: dict[str, tuple[str, ...]] | None = None) -> list[dict[str, Any]]:
    """After a transform plugin changed: the collections running it are indexed through it again."""
    if "transform" not in hooks:
        return []
    affected = [c for c, names in (before or _attached(s)).items() if name in names]
    return await scan(s, affected, call) if affected else []


# --- query-time hooks --------------------------------------------------------------------------------

def with_plugins(s: Services, handler: MethodHandler) -> MethodHandler:
    """A search method that runs the scorers and filters that apply to it (see the module's doc)."""
    attached: tuple[int, dict[str, tuple[str, ...]]] = (-1, {})
    plugins_seen: tuple[int, dict[str, dict[str, Any]]] = (-1, {})

    async def searching(params: dict[str, Any], call: Call) -> Any:
        nonlocal attached, plugins_seen
        version = (call.generation or s.index_generation())[0]  # SQLite's data_version
        if attached[0] != version:  # read again only after a commit: most searches pay a pragma, not a query
            attached = (version, _attached(s))
        named = list(dict.fromkeys(params["plugins"] or ()))
        defaults = {name: plugins for name, plugins in attached[1].items()
                    if not params["collections"] or name in params["collections"]}
        if not named and not defaults:
            return await handler(params, call)
        if plugins_seen[0] != s.generation.value:  # moved by every plugin change (and index change)
            plugins_seen = (s.generation.value, {p["name"]: p for p in await s.actors.plugins.call(ListPlugins())})
        installed = plugins_seen[1]
        for name in named:
            if name not in installed:
                raise not_installed(name)
        plan = _plan(named, defaults, installed)
        limit = params["limit"]
        filtering = any(hook == "filter" for _, hook, _ in plan)
        widened = max(limit, min(max(limit * WIDEN, WIDEN_MIN), WIDEN_MAX)) if filtering else limit
        items: list[tuple[str, Any]] = []

        async def collect(kind: str, payload: Any) -> None:
            if kind == "results":
                items.append((kind, payload))
            else:
                await call.emit(kind, payload)

        answer = whole(await handler({**params, "limit": widened}, replace(call, emit=collect)), items)
        await _run_hooks(s, params, answer, plan)
        answer["results"] = answer["results"][:limit]
        await stream_long_list(call, answer, "results")
        return answer
    return searching


def _plan(named: list[str], defaults: dict[str, tuple[str, ...]],
          installed: dict[str, dict[str, Any]]) -> list[tuple[str, str, frozenset[str] | None]]:
    """(plugin, hook, the collections whose hits it sees, None for all): filters first, then scorers."""
    scopes: dict[str, frozenset[str] | None] = dict.fromkeys(named)
    for collection, names in defaults.items():
        for name in names:
            if name in installed and name not in named:
                scopes[name] = (scopes.get(name) or frozenset()) | {collection}
    return [(name, hook, scope) for hook in ("filter", "score") for name, scope in scopes.items()
            if hook in installed[name]["hooks"]]


async def _run_hooks(s: Services, params: dict[str, Any], answer: dict[str, Any],
                     plan: list[tuple[str, str, frozenset[str] | None]]) -> None:
    results: list[dict[str, Any]] = answer["results"]
    rescored = False
    for name, hook, scope in plan:
        seen = [r for r in results if scope is None or r["collection"] in scope]
        if not seen:
            continue
        ran = await outcome.acapture(s.actors.plugins.call, RunPlugin(
            name, hook, params["query"], [_candidate(r, rank) for rank, r in enumerate(seen)]))
        if isinstance(ran, outcome.Error):
            failure = ran.error
            if not isinstance(failure, QmddError) or params["plugin_strict"]:
                ran.unwrap()
            answer.setdefault("warnings", []).append({
                "code": ErrorCode.PLUGIN_FAILED.value, "message": f"{failure.message}; results without it",
                "hints": list(failure.hints)})
            continue
        if hook == "filter":
            dropped = {id(r) for r, keep in zip(seen, ran.value, strict=True) if not keep}
            results = [r for r in results if id(r) not in dropped]
            continue
        rescored = True
        for result, score in zip(seen, ran.value, strict=True):
            if params["explain"]:
                result.setdefault("explain", {}).setdefault("plugins", []).append(
                    {"name": name, "before": result["score"], "after": round(score, 4)})
            result["score"] = round(score, 4)
    if rescored:
        results.sort(key=lambda r: -r["score"])  # stable: ties keep the engine's order
    answer["results"] = results


def _candidate(result: dict[str, Any], rank: int) -> Candidate:
    text = result.get("body") or result.get("snippet") or ""
    if text.startswith("@@ "):
        text = text.partition("\n")[2]
    # Built by hand: json.dumps per hit would cost more than the plugin call. A docid is `#` and hex, a
    # collection name has no character JSON must escape (its rule), a line is a number.
    meta = (f'{{"docid":"{result["docid"]}","collection":"{result["collection"]}","line":{int(result["line"])},'
            f'"context":{"null" if result["context"] is None else json.dumps(result["context"], ensure_ascii=False)}}}')
    return Candidate(float(result["score"]), text, result["title"], f"{result['collection']}/{result['path']}",
                     meta, rank)
