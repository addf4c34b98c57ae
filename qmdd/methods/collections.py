"""Collections: add, list, remove, rename, and `update` (rescan). Writes go to the indexer actor; the
watcher is told after each change, so watches follow the collections."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import outcome
import trio

from qmdd.actors.base import typed_outcome
from qmdd.actors.indexer import incomplete_add_error
from qmdd.actors.messages import (
    AddCollection,
    RemoveCollection,
    RenameCollection,
    ScanCollections,
    SyncWatches,
    WatchStatus,
)
from qmdd.indexing import selected_files
from qmdd.methods.call import Call, MethodHandler, planned
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, unwrap_error
from qmdd.store import documents as docs

log = logging.getLogger("qmdd.methods")


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"collection.add": partial(add, s), "collection.list": partial(list_, s),
            "collection.remove": partial(remove, s), "collection.rename": partial(rename, s),
            "update": partial(update, s)}


async def counts(s: Services) -> dict[int, tuple[int, int]]:
    """collection id -> (documents, chunks): a pass over every chunk (~1.5 ms per 10k), off the event loop."""
    found: dict[int, tuple[int, int]] = await trio.to_thread.run_sync(docs.counts, s.reader)
    return found


async def list_collections(s: Services) -> list[dict[str, Any]]:
    counts_of = await counts(s)
    return [{"name": c.name, "root": c.root, "masks": list(c.masks), "excludes": list(c.excludes),
             "documents": counts_of.get(c.id, (0, 0))[0], "chunks": counts_of.get(c.id, (0, 0))[1],
             "updated_at": c.updated_at, "uri": f"qmd://{c.name}/"}
            for c in docs.list_collections(s.reader)]


async def list_(s: Services, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
    return await list_collections(s)


async def add(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    added = await s.actors.indexer.call(AddCollection(params["path"], params["name"], params["masks"] or [],
                                                      params["excludes"] or [], dry_run=params["dry_run"]))
    if params["dry_run"]:
        return planned({**added, "update": params["update"]})
    await _sync_watches(s)  # watching before the scan: no change slips between
    if params["update"]:
        scanned = await outcome.acapture(scan, s, [added["name"]], call)
        failure = unwrap_error(scanned.error) if isinstance(scanned, outcome.Error) else None
        if failure is not None and failure.code is ErrorCode.STORAGE_ERROR:
            # Each committed batch stays (an update resumes from there): say so, with the numbers.
            collection = docs.collection_by_name(s.reader, added["name"])
            total = await trio.to_thread.run_sync(selected_files, collection, s.config.max_file_bytes,
                                                  limiter=s.files)
            indexed = (await counts(s)).get(collection.id, (0, 0))[0]
            raise incomplete_add_error(added["name"], indexed, total, failure) from None
        added["update"] = scanned.unwrap()
    return added


async def remove(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if params["dry_run"]:
        collection = docs.collection_by_name(s.reader, params["name"])
        documents, chunks = (await counts(s)).get(collection.id, (0, 0))
        return planned({"name": collection.name, "root": collection.root, "documents": documents, "chunks": chunks})
    result: dict[str, Any] = await s.actors.indexer.call(RemoveCollection(params["name"]))
    await _sync_watches(s)
    return result


async def rename(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    result: dict[str, Any] = await s.actors.indexer.call(RenameCollection(params["old"], params["new"],
                                                                          dry_run=params["dry_run"]))
    if params["dry_run"]:
        return planned({"old": params["old"], **result})
    await _sync_watches(s)
    return result


async def update(s: Services, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
    return await scan(s, params["collections"], call)


async def scan(s: Services, names: list[str] | None, call: Call) -> list[dict[str, Any]]:
    """Rescan these collections (None: all), streaming the indexer's progress to the caller."""
    send, receive = trio.open_memory_channel[dict[str, object]](256)
    summaries: list[dict[str, Any]] = []

    async def forward() -> None:
        async with receive:
            async for event in receive:
                await call.emit("progress", event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        async with send:
            summaries = await s.actors.indexer.call(ScanCollections(names, progress=send))
    return summaries


async def _sync_watches(s: Services) -> None:
    """After a collection change: the change is committed, so a watcher that is down (the status
    says so) must not turn it into an error."""
    synced = await typed_outcome(s.actors.watcher.call, SyncWatches())
    if isinstance(synced, outcome.Error):
        log.warning("watches not updated: %s", synced.error)


async def with_watch_state(s: Services) -> list[dict[str, Any]]:
    """The collections, each with its watch state (for `status`)."""
    collections = await list_collections(s)
    watch = await typed_outcome(s.actors.watcher.call, WatchStatus())
    # A watcher that is down must not take `status` (the place to see that it is down) with it.
    watched = watch.unwrap() if isinstance(watch, outcome.Value) else {"enabled": None, "collections": {}}
    for collection in collections:
        collection["watch"] = watched["collections"].get(collection["name"]) or {
            "state": "off" if watched["enabled"] is False else "unknown"}
    return collections
