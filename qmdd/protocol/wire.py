"""The wire between a client and the daemon: the closed set of frames, and each method's parameters.

A frame is a msgpack map with a `type`. A client sends a `hello` first, then `req` frames, one at a
time; the daemon answers each with `item` frames (streamed parts: progress, result batches, MCP
lines) and then one `res` or `err`. During an `mcp.session` request the client also sends `mcp`
frames, one JSON-RPC line each. Each side checks what it receives with `client_frame` /
`server_frame` at the edge, so nothing past it handles a map of unknown shape.

Imports only the standard library, so that `qmdctl` can use it without paying for the daemon's
dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms in qmdctl
if TYPE_CHECKING:
    from typing import Any, Literal, NotRequired, TypedDict

    class HelloFrame(TypedDict):
        type: Literal["hello"]
        version: int
        role: str
        client: NotRequired[str]
        server: NotRequired[str]
        pid: NotRequired[int]

    class RequestFrame(TypedDict):
        type: Literal["req"]
        id: int
        method: str
        params: dict[str, Any]
        trace_id: NotRequired[str]
        identity: NotRequired[str]

    class McpFrame(TypedDict):
        type: Literal["mcp"]
        line: str

    class ResultFrame(TypedDict):
        type: Literal["res"]
        id: int
        result: Any
        trace_id: NotRequired[str]

    class ErrorFrame(TypedDict):
        type: Literal["err"]
        id: int | None
        error: dict[str, Any]

    class ItemFrame(TypedDict):
        type: Literal["item"]
        id: int
        seq: int
        kind: str
        payload: Any

    ClientFrame = HelloFrame | RequestFrame | McpFrame
    ServerFrame = HelloFrame | ResultFrame | ErrorFrame | ItemFrame

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 32 * 1024 * 1024
"""Largest frame either side accepts: above the default 10 MiB file size guard, so any indexed
document fits in one `get` reply; long result lists are streamed as items."""

HELLO = "hello"
REQUEST = "req"
MCP = "mcp"
RESULT = "res"
ERROR = "err"
ITEM = "item"


def _malformed(what: str, frame: Any) -> QmddError:
    return QmddError(ErrorCode.PROTOCOL_ERROR, f"malformed {what} frame: {frame!r:.200}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def client_frame(frame: Any) -> ClientFrame:
    """A frame from a client, checked: a hello, a request or an MCP line; PROTOCOL_ERROR otherwise."""
    kind = frame.get("type") if isinstance(frame, dict) else None
    if kind == HELLO:
        if not _is_int(frame.get("version")):
            raise _malformed("hello", frame)
    elif kind == REQUEST:
        if not (_is_int(frame.get("id")) and isinstance(frame.get("method"), str)):
            raise QmddError(ErrorCode.PROTOCOL_ERROR, "expected a request frame {type:'req', id:int, method:str}")
    elif kind == MCP:
        if not isinstance(frame.get("line"), str):
            raise _malformed("mcp", frame)
    else:
        raise QmddError(ErrorCode.PROTOCOL_ERROR, f"unknown frame type {kind!r:.40} from a client")
    return frame


def server_frame(frame: Any) -> ServerFrame:
    """A frame from the daemon, checked: a hello, a result, an error or an item; PROTOCOL_ERROR otherwise."""
    kind = frame.get("type") if isinstance(frame, dict) else None
    if kind == ITEM:
        if not (_is_int(frame.get("id")) and isinstance(frame.get("kind"), str)):
            raise _malformed("item", frame)
    elif kind == ERROR:
        if not isinstance(frame.get("error"), dict):
            raise _malformed("error", frame)
    elif kind not in (RESULT, HELLO):
        raise QmddError(ErrorCode.PROTOCOL_ERROR, f"unknown frame type {kind!r:.40} from the daemon")
    return frame


def hello(role: str, *, client: str | None = None, server: str | None = None, pid: int | None = None) -> HelloFrame:
    """The first frame each way: the client names itself, the daemon its version and pid."""
    frame: HelloFrame = {"type": "hello", "version": PROTOCOL_VERSION, "role": role}
    if client is not None:
        frame["client"] = client
    if server is not None:
        frame["server"] = server
    if pid is not None:
        frame["pid"] = pid
    return frame


def request(req_id: int, method: str, params: Mapping[str, Any], trace_id: str | None = None,
            identity: str | None = None) -> RequestFrame:
    """A request frame. `trace_id` ties the daemon's log lines to the caller; `identity` is the caller's
    opaque identity token (AGENT_IDENTITY_TOKEN), which the daemon logs only as a hash."""
    frame: RequestFrame = {"type": "req", "id": req_id, "method": method, "params": dict(params)}
    if trace_id:
        frame["trace_id"] = trace_id
    if identity:
        frame["identity"] = identity
    return frame


def result(req_id: int, value: Any) -> ResultFrame:
    return {"type": "res", "id": req_id, "result": value}


def error(req_id: int | None, err: QmddError) -> ErrorFrame:
    return {"type": "err", "id": req_id, "error": err.to_wire()}


def item(req_id: int, seq: int, kind: str, payload: Any) -> ItemFrame:
    """A streamed element: kind is 'progress' or 'result'."""
    return {"type": "item", "id": req_id, "seq": seq, "kind": kind, "payload": payload}




def mcp_line(line: str) -> McpFrame:
    """One JSON-RPC line of an MCP session, from the bridge to the daemon."""
    return {"type": "mcp", "line": line}


def line_of(frame: Mapping[str, Any]) -> str | None:
    """The JSON-RPC line a decoded frame carries, or None when it is not an MCP frame: inside a session
    that is a JSON-RPC error for the bridge, not the end of the session."""
    line = frame.get("line") if frame.get("type") == MCP else None
    return line if isinstance(line, str) else None


def reply_id(frame: Mapping[str, Any]) -> int | None:
    """The id an error reply to a decoded frame carries: the frame's own when it is an integer, so a
    client can tell which of its requests was malformed."""
    raw = frame.get("id")
    return raw if _is_int(raw) else None


# --- Methods: the parameters of each ------------------------------------------------------------
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
               "full": (bool, False), "snippet_lines": (int, 4), "collapse": (bool, True),
               "plugins": (_STR_LIST, None), "plugin_strict": (bool, False)},
    "get": {"target": (str, REQUIRED), "from_line": (int, None), "max_lines": (int, None), "cwd": (str, None)},
    "multi_get": {"patterns": (_STR_LIST, REQUIRED), "max_bytes": (int, 64 * 1024), "max_lines": (int, None),
                  "cwd": (str, None), "max_files": (int, None)},  # streams one item per document
    # Streams its files in batches when there are many; `after` and `limit` ask for one page (by path).
    "ls": {"target": (str, None), "cwd": (str, None), "after": (str, None), "limit": (int, None)},
    "context.add": {"target": (str, REQUIRED), "text": (str, REQUIRED), "cwd": (str, None)},
    "context.list": {},
    "context.remove": {"target": (str, REQUIRED), "cwd": (str, None)},
    "cleanup": {},
    "metrics": {},  # the Prometheus text exposition, as {"text": ...}
    # Streams progress items. force: re-embed every chunk; the page caps and timeout bound one run.
    "embed": {"collections": (_STR_LIST, None), "force": (bool, False), "max_chunks_per_page": (int, None),
              "max_page_bytes": (int, None), "timeout_s": ((int, float), None)},
    "vsearch": {"query": (str, REQUIRED), "limit": (int, 5), "collections": (_STR_LIST, None),
                "path_prefix": (str, None), "min_score": ((int, float), 0.0), "explain": (bool, False),
                "full": (bool, False), "snippet_lines": (int, 4), "collapse": (bool, True),
                "plugins": (_STR_LIST, None), "plugin_strict": (bool, False)},
    "query": {"query": (str, REQUIRED), "limit": (int, 5), "collections": (_STR_LIST, None),
              "path_prefix": (str, None), "min_score": ((int, float), 0.0), "explain": (bool, False),
              "full": (bool, False), "snippet_lines": (int, 4), "collapse": (bool, True), "rerank": (bool, True),
              "candidates": (int, 100),
              "plugins": (_STR_LIST, None), "plugin_strict": (bool, False),
              # Background that steers reranking and snippets (as qmd's intent), never searched itself.
              "intent": (str, None)},
    "model.list": {},
    "model.import": {"path": (str, REQUIRED), "name": (str, None), "kind": (str, None), "pooling": (str, None),
                     "max_length": (int, None)},
    "model.use": {"name": (str, None), "role": (str, None)},
    # OpenAI's embeddings request (the HTTP door's POST /v1/embeddings): `input` a text or a list of texts
    # (the method refuses token arrays); `input_type` "query" or "passage"/"document" (the default), for
    # models that mark each (e5); `user` is accepted as OpenAI's is, and unused.
    "embeddings": {"input": ((str, list), REQUIRED), "model": (str, None), "encoding_format": (str, "float"),
                   "dimensions": (int, None), "input_type": (str, None), "user": (str, None)},
    # Turns the connection into an MCP session: frames {"type": "mcp", "line": JSON-RPC text} from the
    # client, items of kind "mcp" (payload: JSON-RPC text) back, until the client closes.
    "mcp.session": {"client": (str, None)},
    # `module` is WebAssembly (bytes) or WAT text; `source` names where it came from, for messages;
    # `default_name` is the name when neither `name` nor the manifest (TOML text) gives one.
    "plugin.install": {"module": ((bytes, str), REQUIRED), "source": (str, None), "default_name": (str, None),
                       "name": (str, None), "manifest": (str, None), "replace": (bool, False)},
    "plugin.list": {},
    "plugin.info": {"name": (str, REQUIRED)},
    "plugin.remove": {"name": (str, REQUIRED)},
    "plugin.enable": {"name": (str, REQUIRED)},
    "plugin.disable": {"name": (str, REQUIRED)},
    "plugin.attach": {"name": (str, REQUIRED), "collection": (str, REQUIRED)},  # streams progress items
    "plugin.detach": {"name": (str, REQUIRED), "collection": (str, REQUIRED)},
}

DRY_RUN_METHODS = ("collection.add", "collection.remove", "collection.rename", "context.add", "context.remove",
                   "model.use", "plugin.remove", "plugin.enable", "plugin.disable", "plugin.attach", "plugin.detach")
"""The methods that change something and take `dry_run: true`: they make every check they would (a
missing collection, an unknown model, a duplicate collection) and change nothing, answering
{"dry_run": true, "would": what they would do}. What `qmdctl --dry-run` asks a running daemon."""
METHODS.update({method: {**METHODS[method], "dry_run": (bool, False)} for method in DRY_RUN_METHODS})


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_finite(number: Any) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond the float range
        return False


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
        # The strings of a list that may hold other things (`embeddings`' input): the method refuses those.
        strings = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
            if isinstance(value, list) else []
        if any("\x00" in s for s in strings):
            raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: parameter {name!r} contains a NUL character")
        # JSON's "\ud800" escape makes a lone surrogate, which SQLite, the OS and the tokenizers cannot encode.
        if not all(_is_unicode(s) for s in strings):
            raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: parameter {name!r} is not valid Unicode "
                            "(it has a lone surrogate)")
        # A JSON integer too large for a float, or NaN/Infinity (Python's json reads them), is no score.
        if kind == (int, float) and not _is_finite(value):
            raise QmddError(ErrorCode.INVALID_INPUT, f"{method}: parameter {name!r} must be a finite number")
        clean[name] = value
    return clean
