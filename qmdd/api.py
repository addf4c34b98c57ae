"""The daemon's RPC methods. Writes go to the indexer actor, searches to the BM25 actor by message;
reads of documents happen here, always confined to indexed roots."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from qmdd import __version__
from qmdd.actors.base import Mailbox, typed_outcome
from qmdd.actors.indexer import filesystem_error, incomplete_add_error
from qmdd.actors.messages import (
    AddCollection,
    Cleanup,
    ModelStatus,
    RemoveCollection,
    RenameCollection,
    ScanCollections,
    SetContext,
    SyncWatches,
    WatchStatus,
)
from qmdd.actors.supervisor import Supervisor
from qmdd.config import Config
from qmdd.indexing import selected_files
from qmdd.models.registry import ModelRegistry
from qmdd.protocol.errors import ErrorCode, QmddError, unwrap_error
from qmdd.safefiles import ConfinedRoot, EscapesRoot
from qmdd.search.pipeline import ContextIndex, cpu_limiter, keyword_search, search_request
from qmdd.search.targets import Glob, docid_prefix, is_glob, resolve_target, split_line_suffix
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.semantic import SemanticApi
from qmdd.store import documents as docs
from qmdd.store.documents import DocRow
from qmdd.transports.mcp_host import McpHost
from qmdd.transports.rpc import Call, MethodHandler

log = logging.getLogger("qmdd.api")

READ_LIMITER_TOKENS = 4


@dataclass
class Services:
    config: Config
    reader: sqlite3.Connection
    indexer: Mailbox
    bm25: Mailbox
    supervisor: Supervisor
    rpc_statistics: Callable[[], dict[str, Any]]
    shutdown: trio.Event
    started_at: float
    files: trio.CapacityLimiter
    tokenizer: Tokenizer
    embedder: Mailbox
    vectors: Mailbox
    registry: ModelRegistry
    watcher: Mailbox


def make_services(config: Config, reader: sqlite3.Connection, mailboxes: dict[str, Mailbox],
                  supervisor: Supervisor, rpc_statistics: Callable[[], dict[str, Any]],
                  shutdown: trio.Event, registry: ModelRegistry) -> Services:
    return Services(config, reader, mailboxes["indexer"], mailboxes["bm25"], supervisor, rpc_statistics, shutdown,
                    time.time(), trio.CapacityLimiter(READ_LIMITER_TOKENS),
                    Tokenizer(TokenizerConfig(stem=config.stem)), mailboxes["embedder"], mailboxes["vectors"],
                    registry, mailboxes["watcher"])


def read_text(doc: DocRow, max_bytes: int) -> str:
    """Read a document from disk, never outside its collection root (whatever is swapped in meanwhile),
    never from a root that is not the one added, never blocking on a FIFO."""
    try:
        root = ConfinedRoot(doc.root, doc.root_key)
    except OSError as exc:
        raise filesystem_error(exc, f"root of collection {doc.collection!r} ({doc.root})") from None
    try:
        with root:
            data = root.read(doc.path, max_bytes)
    except EscapesRoot as exc:
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"{doc.uri}: {exc}",
                        hints=("A symlink leading outside the collection is never followed.",)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise QmddError(ErrorCode.NOT_FOUND, f"{doc.uri} was deleted since it was indexed",
                        hints=("Run `qmdctl update`.",)) from None
    except OSError as exc:
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"{doc.uri}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"{doc.uri} is no longer valid UTF-8") from None


def slice_lines(text: str, from_line: int | None, max_lines: int | None) -> tuple[str, int, int]:
    """(body, first line number, lines left after the slice)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    start = max(from_line or 1, 1)
    end = len(lines) if max_lines is None else min(len(lines), start - 1 + max(max_lines, 0))
    return "\n".join(lines[start - 1:end]), start, max(len(lines) - end, 0)


class Api:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.semantic = SemanticApi(self)
        self.mcp = McpHost(self)

    def methods(self) -> dict[str, MethodHandler]:
        return {**self.semantic.methods(), "mcp.session": self.mcp.session,
            "ping": self.ping, "status": self.status, "shutdown": self.shutdown,
            "collection.add": self.collection_add, "collection.list": self.collection_list,
            "collection.remove": self.collection_remove, "collection.rename": self.collection_rename,
            "update": self.update, "search": self.search, "get": self.get, "multi_get": self.multi_get,
            "ls": self.ls, "context.add": self.context_add, "context.list": self.context_list,
            "context.remove": self.context_remove, "cleanup": self.cleanup,
        }

    async def ping(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    async def shutdown(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        self.s.shutdown.set()
        return {"stopping": True, "pid": os.getpid()}

    # --- collections -----------------------------------------------------------------------------

    async def collection_add(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        added = await self.s.indexer.call(AddCollection(params["path"], params["name"], params["masks"] or [],
                                                        params["excludes"] or []))
        await self._sync_watches()  # watching before the scan: no change slips between
        if params["update"]:
            scanned = await outcome.acapture(self._scan, [added["name"]], call)
            failure = unwrap_error(scanned.error) if isinstance(scanned, outcome.Error) else None
            if failure is not None and failure.code is ErrorCode.STORAGE_ERROR:
                # Each committed batch stays (an update resumes from there): say so, with the numbers.
                collection = docs.collection_by_name(self.s.reader, added["name"])
                total = await trio.to_thread.run_sync(selected_files, collection, self.s.config.max_file_bytes,
                                                      limiter=self.s.files)
                indexed = docs.counts(self.s.reader).get(collection.id, (0, 0))[0]
                raise incomplete_add_error(added["name"], indexed, total, failure) from None
            added["update"] = scanned.unwrap()
        return added

    async def collection_list(self, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
        counts = docs.counts(self.s.reader)
        return [{"name": c.name, "root": c.root, "masks": list(c.masks), "excludes": list(c.excludes),
                 "documents": counts.get(c.id, (0, 0))[0], "chunks": counts.get(c.id, (0, 0))[1],
                 "updated_at": c.updated_at, "uri": f"qmd://{c.name}/"}
                for c in docs.list_collections(self.s.reader)]

    async def collection_remove(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        result: dict[str, Any] = await self.s.indexer.call(RemoveCollection(params["name"]))
        await self._sync_watches()
        return result

    async def collection_rename(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        result: dict[str, Any] = await self.s.indexer.call(RenameCollection(params["old"], params["new"]))
        await self._sync_watches()
        return result

    async def update(self, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
        return await self._scan(params["collections"], call)

    async def _scan(self, names: list[str] | None, call: Call) -> list[dict[str, Any]]:
        send, receive = trio.open_memory_channel[dict[str, object]](256)
        summaries: list[dict[str, Any]] = []

        async def forward() -> None:
            async with receive:
                async for event in receive:
                    await call.emit("progress", event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            async with send:
                summaries = await self.s.indexer.call(ScanCollections(names, progress=send))
        return summaries

    # --- search and documents --------------------------------------------------------------------

    async def search(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        request = search_request(params)
        answer, rows = await keyword_search(self.s.reader, self.s.bm25, self.s.tokenizer, request)
        if request.full:
            await self.attach_bodies(answer, rows)
        await stream_long_list(call, answer, "results")
        return answer

    async def attach_bodies(self, answer: dict[str, Any], rows: list[DocRow]) -> None:
        for result, doc in zip(answer["results"], rows, strict=True):
            try:
                result["body"] = await self._read(doc)
            except QmddError as exc:  # one vanished or unreadable hit must not fail the search
                result["body"] = ""
                result["error"] = exc.to_wire()

    async def _read(self, doc: DocRow) -> str:
        return await trio.to_thread.run_sync(read_text, doc, self.s.config.max_file_bytes, limiter=self.s.files)

    def _find_document(self, target: str, cwd: str | None) -> DocRow:
        conn = self.s.reader
        prefix = docid_prefix(target)
        if prefix:
            found = docs.find_docs(conn, "substr(d.hash, 1, ?) = ?", [len(prefix), prefix], limit=6)
            if not found:
                raise QmddError(ErrorCode.NOT_FOUND, f"no document with docid #{prefix}")
            if len({d.hash for d in found}) > 1:
                raise QmddError(ErrorCode.NOT_FOUND, f"docid #{prefix} is ambiguous",
                                hints=("Give more hex digits of the docid, or the path.",),
                                details={"candidates": [d.uri for d in found]})
            return found[0]
        resolved = resolve_target(target, docs.list_collections(conn), cwd)
        collection = resolved.collection
        if collection is not None:
            found = docs.find_docs(conn, "d.collection_id = ? AND d.path = ?", [collection.id, resolved.path], limit=1)
            if found:
                return found[0]
            if resolved.exact:
                raise QmddError(ErrorCode.NOT_FOUND, f"no document {target.strip()!r} is indexed",
                                hints=(f"`qmdctl ls qmd://{collection.name}/` lists what the collection holds.",))
        # Last resort, as qmd does: a unique path suffix (e.g. just the file name), never outside the
        # collection the target named.
        suffix = (resolved.path if collection else target).strip("/")
        if suffix:
            found = docs.docs_with_path_suffix(conn, suffix, collection.id if collection else None, limit=6)
            if len(found) == 1:
                return found[0]
            if found:
                raise QmddError(ErrorCode.NOT_FOUND, f"{target!r} is ambiguous",
                                hints=("Name it as qmd://collection/path.",),
                                details={"candidates": [d.uri for d in found]})
        raise QmddError(ErrorCode.NOT_FOUND, f"no indexed document matches {target!r}")

    async def get(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        target, from_line, count = split_line_suffix(params["target"])
        from_line = params["from_line"] if params["from_line"] is not None else from_line
        count = params["max_lines"] if params["max_lines"] is not None else count
        doc = self._find_document(target, params["cwd"])
        text = await self._read(doc)
        body, first, remaining = slice_lines(text, from_line, count)
        context = ContextIndex(docs.list_contexts(self.s.reader)).for_path(doc.collection_id, doc.path)
        return {"file": doc.uri, "docid": doc.docid, "title": doc.title, "context": context,
                "collection": doc.collection, "path": doc.path, "from_line": first,
                "lines_after": remaining, "body": body}

    async def multi_get(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        conn = self.s.reader

        def selected(glob: Glob) -> list[DocRow]:
            return [d for d in docs.docs_named_from(conn, glob.literal_prefix) if glob.selects(d.collection, d.path)]

        wanted: list[DocRow] = []
        seen: set[int] = set()
        for pattern in params["patterns"]:
            for part in ([pattern] if is_glob(pattern) else [p for p in pattern.split(",") if p.strip()]):
                if is_glob(part):
                    # Matching every document is CPU work: in a thread, or other clients would wait.
                    matches = await trio.to_thread.run_sync(selected, Glob(part.strip()), limiter=cpu_limiter())
                else:
                    matches = [self._find_document(part.strip(), params["cwd"])]
                for d in matches:
                    if d.id not in seen:
                        seen.add(d.id)
                        wanted.append(d)
        contexts = ContextIndex(docs.list_contexts(conn))
        sent = skipped = 0
        for doc in wanted:
            entry: dict[str, Any] = {"file": doc.uri, "docid": doc.docid, "title": doc.title,
                                     "context": contexts.for_path(doc.collection_id, doc.path)}
            if doc.size > params["max_bytes"]:
                entry.update(skipped=True, reason=f"File too large ({doc.size // 1024}KB > "
                             f"{params['max_bytes'] // 1024}KB). Use 'qmdctl get {doc.uri}' to retrieve.")
                skipped += 1
            else:
                try:
                    text = await self._read(doc)
                except QmddError as exc:
                    entry.update(skipped=True, reason=exc.message)
                    skipped += 1
                else:
                    body, _, remaining = slice_lines(text, None, params["max_lines"])
                    if remaining and params["max_lines"] is not None:
                        body += f"\n\n[... truncated {remaining} more lines]"
                    entry["body"] = body
                    sent += 1
            await call.emit("result", entry)
        if not wanted:
            raise QmddError(ErrorCode.NOT_FOUND, f"nothing matches {', '.join(params['patterns'])}")
        return {"documents": sent, "skipped": skipped}

    async def ls(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        conn = self.s.reader
        if not params["target"]:
            return {"collections": await self.collection_list(params, call)}
        resolved = resolve_target(params["target"], docs.list_collections(conn), params["cwd"])
        if resolved.collection is None:
            raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"{params['target']!r} is not in any collection")
        prefix = resolved.path.strip("/")
        found = docs.find_docs(conn, "d.collection_id = ? AND (? = '' OR d.path = ? OR substr(d.path, 1, ?) = ?)",
                               [resolved.collection.id, prefix, prefix, len(prefix) + 1, prefix + "/"],
                               limit=1_000_000)
        answer = {"collection": resolved.collection.name, "prefix": prefix,
                  "files": [{"file": d.uri, "path": d.path, "size": d.size, "mtime": d.mtime_ns / 1e9,
                             "docid": d.docid, "title": d.title} for d in found]}
        await stream_long_list(call, answer, "files")
        return answer

    # --- contexts --------------------------------------------------------------------------------

    def _context_target(self, params: dict[str, Any]) -> tuple[str | None, str]:
        target = params["target"].strip()
        if target in ("/", "qmd://", ""):
            return None, ""
        resolved = resolve_target(target, docs.list_collections(self.s.reader), params["cwd"])
        if resolved.collection is None:
            raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"{target!r} is not inside any collection",
                            hints=("Use qmd://collection/path, or a path inside a collection root; "
                                   "'/' sets the global context.",))
        return resolved.collection.name, resolved.path.strip("/")

    async def context_add(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        collection, prefix = self._context_target(params)
        if not params["text"].strip():
            raise QmddError(ErrorCode.INVALID_INPUT, "the context text is empty")
        await self.s.indexer.call(SetContext(collection, prefix, params["text"].strip()))
        return {"target": _context_uri(collection, prefix), "text": params["text"].strip()}

    async def context_remove(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        collection, prefix = self._context_target(params)
        await self.s.indexer.call(SetContext(collection, prefix, None))
        return {"target": _context_uri(collection, prefix), "removed": True}

    async def context_list(self, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
        return [{"target": _context_uri(name, prefix), "collection": name, "path": prefix, "text": text}
                for name, _, prefix, text in docs.list_contexts(self.s.reader)]

    # --- maintenance -----------------------------------------------------------------------------

    async def cleanup(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        model = await self.s.embedder.call(ModelStatus())
        result: dict[str, Any] = await self.s.indexer.call(Cleanup([model["fingerprint"]] if model["fingerprint"]
                                                                   else []))
        return result

    async def _model_status(self) -> dict[str, Any]:
        # An embedder that is down must not take `status` (the place to see that it is down) with it.
        answer = await typed_outcome(self.semantic.status)
        if isinstance(answer, outcome.Error) and isinstance(answer.error, QmddError):
            return {"error": answer.error.to_wire()}
        result: dict[str, Any] = answer.unwrap()
        return result

    async def _sync_watches(self) -> None:
        """After a collection change: the change is committed, so a watcher that is down (the status
        says so) must not turn it into an error."""
        synced = await typed_outcome(self.s.watcher.call, SyncWatches())
        if isinstance(synced, outcome.Error):
            log.warning("watches not updated: %s", synced.error)

    async def _collections_with_watch(self, params: dict[str, Any], call: Call) -> list[dict[str, Any]]:
        collections = await self.collection_list(params, call)
        watch = await typed_outcome(self.s.watcher.call, WatchStatus())
        # A watcher that is down must not take `status` (the place to see that it is down) with it.
        watched = watch.unwrap() if isinstance(watch, outcome.Value) else {"enabled": None, "collections": {}}
        for collection in collections:
            collection["watch"] = watched["collections"].get(collection["name"]) or {
                "state": "off" if watched["enabled"] is False else "unknown"}
        return collections

    async def status(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        paths = self.s.config.paths
        sizes = {name: (p.stat().st_size if p.exists() else 0) for name, p in (
            ("database", paths.database), ("wal", paths.database.with_name(paths.database.name + "-wal")),
            ("bm25_snapshot", paths.bm25_snapshot), ("vector_snapshot", paths.vector_snapshot))}
        model = await self._model_status()
        collections = await self._collections_with_watch(params, call)
        vectors = model.pop("collections", {})
        for collection in collections:
            if collection["name"] in vectors:
                collection["vectors"] = vectors[collection["name"]]
        return {
            "version": __version__, "pid": os.getpid(), "time": time.time(),
            "uptime_s": round(time.time() - self.s.started_at, 1),
            "state": "degraded" if self.s.supervisor.degraded else "ok",
            "degraded_reason": self.s.supervisor.degraded_reason,
            "socket": str(paths.socket), "data_dir": str(paths.data_dir), "log_file": str(paths.log_file),
            "config_file": str(paths.config_file),
            "index_bytes": sizes, "collections": collections,
            "actors": self.s.supervisor.statistics(), "rpc": self.s.rpc_statistics(),
            "problems": docs.list_problems(self.s.reader), "model": model,
            "auto_embed": self.semantic.background.status(),
        }


STREAM_BATCH = 500


async def stream_long_list(call: Call, answer: dict[str, Any], key: str) -> None:
    """Send a long list as `key` items of STREAM_BATCH entries, so no reply frame grows without bound;
    the final reply then carries the list empty and `streamed: key`."""
    entries = answer[key]
    if len(entries) <= STREAM_BATCH:
        return
    for start in range(0, len(entries), STREAM_BATCH):
        await call.emit(key, entries[start:start + STREAM_BATCH])
    answer[key] = []
    answer["streamed"] = key


def _context_uri(collection: str | None, prefix: str) -> str:
    return "/" if collection is None else f"qmd://{collection}/{prefix}"
