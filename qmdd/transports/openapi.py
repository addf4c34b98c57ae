"""The HTTP door's OpenAPI 3.1 document (GET /openapi.json), built from what the daemon itself checks and
answers, so that it cannot drift from the code or from `qmdctl --emit-spec`:

- the bodies of POST /search /vsearch /query from the parameter declarations `validate_params` enforces
  (`wire.METHODS`), plus the qmd field names the door renames (`rest.QMD_ALIASES`);
- the replies from the protocol's JSON Schemas (`qmdd/protocol/schemas`), the files `--emit-spec` prints;
- the error replies from each command's error codes and the error catalogue: one problem+json response
  per status, its `code` narrowed to the codes that have that status;
- POST /v1/embeddings from `_embeddings.json` (OpenAI's request, reply and error object), its error
  replies' `type` and `code` narrowed by the door's own mapping (`replies.openai_type`, `openai_code`).

JSON Schema 2020-12 is OpenAPI 3.1's own schema language, so the schemas are used as they are; each goes
under components/schemas, with its local `$ref`s re-pointed there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from qmdd import __version__
from qmdd.protocol.errors import ERRORS, ErrorCode
from qmdd.protocol.schemas import load_schema
from qmdd.protocol.wire import METHODS, REQUIRED
from qmdd.transports.replies import JSONRPC_SERVER_ERROR, openai_code, openai_type
from qmdd.transports.rest import ONE_OR_A_LIST, QMD_ALIASES, SEARCH_METHODS

OPENAPI_VERSION = "3.1.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMAS = "#/components/schemas/"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"

CLIENT_ONLY = frozenset({ErrorCode.DAEMON_START_FAILED, ErrorCode.TIMEOUT})
"""Codes qmdctl gives when it cannot start or reach the daemon: a command can fail with them, a route not."""
ANY_ROUTE = (ErrorCode.INTERNAL, ErrorCode.PERMISSION_DENIED)
"""A bug, and a Host or Origin that is not loopback (the door's DNS-rebinding guard): /health included."""
GUARDED = (ErrorCode.UNAUTHORIZED, ErrorCode.RATE_LIMITED)
"""The token and the rate limit: every route but /health."""
BODY = (ErrorCode.INVALID_INPUT, ErrorCode.FRAME_TOO_LARGE)
"""A body that is not a JSON object of known fields, or one over the door's size limit."""

# The Python types of `wire.METHODS` as JSON Schema types. An int-or-float parameter is a JSON number.
_JSON_TYPES: dict[type, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
    list: {"type": "array", "items": {"type": "string"}},  # every list parameter is a list of strings
}

TRACE_HEADERS: dict[str, Any] = {
    "x-trace-id": {"description": "The request's trace id (as sent, or made up); also in the daemon's log.",
                   "required": True, "schema": {"type": "string"}},
    "traceparent": {"description": "W3C trace context of the door's span, when tracing is on.",
                    "schema": {"type": "string"}},
}
ERROR_HEADERS: dict[ErrorCode, dict[str, Any]] = {
    ErrorCode.UNAUTHORIZED: {"www-authenticate": {"required": True, "schema": {"type": "string"},
                                                  "description": 'Bearer realm="qmdd".'}},
    ErrorCode.RATE_LIMITED: {"retry-after": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
                                             "description": "Seconds until a request is let through again."}},
}


@cache
def document() -> dict[str, Any]:
    """The whole document; built once (nothing in it changes while the daemon runs). Callers must not
    modify it."""
    components: dict[str, Any] = {"Problem": problem_schema(), "Health": HEALTH}
    paths: dict[str, Any] = {
        "/health": {"get": health_operation()},
        "/collections": {"get": read_operation("collection-list", "Collections", components,
                                               "The collections (`qmdctl collection list --json`).")},
        "/stats": {"get": read_operation("status", "Status", components,
                                         "The daemon's status (`qmdctl status --json`).")},
        "/plugins": {"get": read_operation("plugin-list", "Plugins", components,
                                           "The installed plugins with their state and statistics "
                                           "(`qmdctl plugin list --json`).")},
        "/metrics": {"get": metrics_operation()},
        "/openapi.json": {"get": openapi_operation()},
        "/documents/{target}": {"get": document_operation(components)},
        "/mcp": {"post": mcp_operation()},
    }
    for method in SEARCH_METHODS:
        paths[f"/{method}"] = {"post": search_operation(method, components)}
    paths["/v1/embeddings"] = {"post": embeddings_operation(components)}
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {"title": "qmdd", "version": __version__, "description": (
            "qmdd's HTTP door: search and read the indexed markdown collections. Every route but /health "
            "needs `Authorization: Bearer TOKEN` (`qmdctl http token` prints it). Errors are RFC 7807 problem "
            "details with qmdd's stable error code, recovery hints and the trace id; under /v1/, OpenAI's "
            "error object.")},
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "description": "The token file's secret."}}},
    }


# --- schemas ------------------------------------------------------------------------------------------

HEALTH: dict[str, Any] = {
    "title": "Liveness", "type": "object", "required": ["status", "version"],
    "properties": {"status": {"const": "ok"}, "version": {"type": "string"}}, "additionalProperties": False,
}


def component(components: dict[str, Any], name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` stored as components/schemas/`name`; a reference to it. A schema file's local references
    ("#/$defs/x") meant its own root: they now point into the stored copy."""
    components[name] = rehome(schema, SCHEMAS + name)
    return {"$ref": SCHEMAS + name}


def rehome(schema: Any, base: str) -> Any:
    if isinstance(schema, dict):
        moved = {key: rehome(value, base) for key, value in schema.items() if key not in ("$schema", "$id")}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            moved["$ref"] = base + ref[1:]
        return moved
    if isinstance(schema, list):
        return [rehome(value, base) for value in schema]
    return schema


def problem_schema() -> dict[str, Any]:
    """`_problem.json` as the door sends it: `instance` (the qmdctl command) and `exit_code` are what
    qmdctl adds, so they are left out; `code` is one of the codes the daemon can answer with."""
    schema = load_schema("_problem")
    for cli_only in ("instance", "exit_code"):
        del schema["properties"][cli_only]
        schema["required"].remove(cli_only)
    schema["properties"]["code"]["enum"] = [str(code) for code in ErrorCode if code not in CLIENT_ONLY]
    return schema


def parameter_schema(kind: type | tuple[type, ...], default: Any) -> dict[str, Any]:
    """One `wire.METHODS` parameter. An optional one may be sent as null: `validate_params` reads null
    as "not given" and fills in the default."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    schema = copy.deepcopy(_JSON_TYPES[float if float in kinds else kinds[0]])
    if default is REQUIRED:
        return schema
    schema["type"] = [schema["type"], "null"]
    if default is not None:
        schema["default"] = default
    return schema


def params_schema(method: str) -> dict[str, Any]:
    """The body of POST /`method`: the method's parameters, and qmd's names for some of them."""
    decl = METHODS[method]
    properties = {name: parameter_schema(kind, default) for name, (kind, default) in decl.items()}
    for alias, name in QMD_ALIASES.items():
        if name not in properties:
            continue
        aliased = copy.deepcopy(properties[name])
        if alias in ONE_OR_A_LIST:  # one value, or the list
            aliased = {"anyOf": [aliased["items"], aliased], "description": f"qmd's name for `{name}`: one "
                       "value or a list."}
        else:
            aliased["description"] = f"qmd's name for `{name}`."
        properties[alias] = aliased
    return {"title": f"{method} parameters", "type": "object", "properties": properties,
            "required": [name for name, (_, default) in decl.items() if default is REQUIRED],
            "additionalProperties": False,
            # A parameter under both of its names is refused (`rest.search_params`).
            "allOf": [{"not": {"required": [alias, name]}} for alias, name in QMD_ALIASES.items() if name in decl]}


def search_reply_schema(slug: str) -> dict[str, Any]:
    """The reply of a search method: `_search_reply.json`, its hits being the command's output items
    (qmd's hit, `output.items`) with the fields the daemon sends beside them. qmdctl keeps either the
    snippet or the body; the daemon sends the snippet always and the body too with `full`, so the
    output item's choice between them (its oneOf) is not part of a reply."""
    reply = load_schema("_search_reply")
    qmd_hit = load_schema(slug)["output"]["items"]
    extra = reply["properties"]["results"]["items"]
    reply["properties"]["results"]["items"] = {
        "description": extra["description"], "type": "object",
        "required": list(dict.fromkeys([*qmd_hit["required"], *extra["required"]])),
        "properties": {**qmd_hit["properties"], **extra["properties"]},
        "additionalProperties": False,
    }
    reply["title"] = f"{slug}: {reply['title']}"
    return reply


# --- responses ----------------------------------------------------------------------------------------

def route_errors(slug: str | None, *extra: Iterable[ErrorCode]) -> list[ErrorCode]:
    """The codes a route can answer with: its command's (from the schema file), less qmdctl's own, and
    the door's."""
    codes = {ErrorCode(code) for code in load_schema(slug)["errors"]} if slug else set()
    codes.update(*extra)
    return sorted(codes - CLIENT_ONLY, key=lambda code: ERRORS[code].exit_code)


def responses(ok: dict[str, Any], errors: Iterable[ErrorCode],
              error_content: Callable[[int, list[ErrorCode]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The 200 response and one error response per status: problem details, unless `error_content` says
    what the route answers instead (status, its codes -> the content)."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in errors:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    answers = {"200": {**ok, "headers": {**TRACE_HEADERS, **ok.get("headers", {})}}}
    for status, codes in sorted(by_status.items()):
        headers = dict(TRACE_HEADERS)
        for code in codes:
            headers.update(ERROR_HEADERS.get(code, {}))
        answers[str(status)] = {
            "description": "; ".join(f"{ERRORS[code].title} ({code})" for code in codes),
            "headers": headers,
            "content": (error_content or problem_content)(status, codes),
        }
    return answers


def problem_content(status: int, codes: list[ErrorCode]) -> dict[str, Any]:
    return {PROBLEM_JSON: {"schema": {"allOf": [
        {"$ref": SCHEMAS + "Problem"},
        {"properties": {"status": {"const": status}, "code": {"enum": [str(code) for code in codes]}}},
    ]}}}


def openai_error_content(status: int, codes: list[ErrorCode]) -> dict[str, Any]:
    narrowed = {"type": {"enum": sorted({openai_type(code) for code in codes})},
                "code": {"enum": sorted({openai_code(code) for code in codes})}}
    return {JSON: {"schema": {"allOf": [{"$ref": SCHEMAS + "OpenAIError"},
                                        {"properties": {"error": {"properties": narrowed}}}]}}}


def jsonrpc_error_content(status: int, codes: list[ErrorCode]) -> dict[str, Any]:
    """The door's refusals at /mcp (`replies.jsonrpc_error`): a JSON-RPC error an MCP client reads."""
    error = {"type": "object", "required": ["code", "message", "data"],
             "properties": {"code": {"const": JSONRPC_SERVER_ERROR}, "message": {"type": "string"},
                            "data": {"type": "object", "required": ["code", "hints", "trace_id"],
                                     "properties": {"code": {"enum": [str(code) for code in codes]}}}}}
    return {JSON: {"schema": {"type": "object", "required": ["jsonrpc", "id", "error"],
                              "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": "null"},
                                             "error": error}}}}


def json_reply(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


# --- operations ---------------------------------------------------------------------------------------

def health_operation() -> dict[str, Any]:
    return {"operationId": "health", "summary": "Liveness; needs no token.", "security": [],
            "responses": responses(json_reply("The daemon is up.", {"$ref": SCHEMAS + "Health"}), ANY_ROUTE)}


def read_operation(slug: str, name: str, components: dict[str, Any], summary: str) -> dict[str, Any]:
    """A GET answered by a method without parameters, the same JSON as the command's `--json`."""
    output = load_schema(slug)["output"]
    return {"operationId": slug.replace("-", "_"), "summary": summary,
            "responses": responses(json_reply(output.get("title", name), component(components, name, output)),
                                   route_errors(slug, ANY_ROUTE, GUARDED))}


def metrics_operation() -> dict[str, Any]:
    ok = {"description": "The Prometheus text exposition (format 0.0.4).",
          "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {"operationId": "metrics", "summary": "Metrics for Prometheus (`qmdctl metrics`).",
            "responses": responses(ok, route_errors("metrics", ANY_ROUTE, GUARDED))}


def openapi_operation() -> dict[str, Any]:
    ok = json_reply("An OpenAPI 3.1 document.", {"type": "object", "required": ["openapi", "info", "paths"]})
    return {"operationId": "openapi", "summary": "This document.",
            "responses": responses(ok, (*ANY_ROUTE, *GUARDED))}


def document_operation(components: dict[str, Any]) -> dict[str, Any]:
    whole_number = {"type": "integer", "minimum": 0}
    parameters = [
        {"name": "target", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": "COLLECTION/PATH (slashes as they are), or %23DOCID (`#` and a docid prefix); "
                        "FILE:LINE and FILE:LINE:COUNT pick lines."},
        {"name": "from_line", "in": "query", "schema": whole_number, "description": "First line (1-based)."},
        {"name": "max_lines", "in": "query", "schema": whole_number, "description": "At most this many lines."},
        {"name": "if-none-match", "in": "header", "schema": {"type": "string"},
         "description": "An ETag of an earlier reply: 304, without a body, while the reply is the same."},
    ]
    output = load_schema("get")["output"]
    ok = json_reply("The document, or the lines asked for (`qmdctl get --json`).",
                    component(components, "Document", output))
    ok["headers"] = {"etag": {"required": True, "schema": {"type": "string"}}}
    answers = responses(ok, route_errors("get", ANY_ROUTE, GUARDED))
    answers["304"] = {"description": "Not modified: the If-None-Match ETag is the reply's.",
                      "headers": {**TRACE_HEADERS, "etag": {"required": True, "schema": {"type": "string"}}}}
    return {"operationId": "get_document", "summary": "Read a document (`get`).", "parameters": parameters,
            "responses": answers}


def search_operation(method: str, components: dict[str, Any]) -> dict[str, Any]:
    label = method.capitalize()
    body = component(components, f"{label}Params", params_schema(method))
    reply = component(components, f"{label}Reply", search_reply_schema(method))
    return {"operationId": method, "summary": f"`{method}`: the method's reply, its streamed hits joined.",
            "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": responses(json_reply("The hits and what was searched.", reply),
                                   route_errors(method, ANY_ROUTE, GUARDED, BODY))}


def embeddings_operation(components: dict[str, Any]) -> dict[str, Any]:
    spec = load_schema("_embeddings")
    body = component(components, "EmbeddingsParams", spec["request"])
    reply = component(components, "EmbeddingsReply", spec["reply"])
    component(components, "OpenAIError", spec["error"])
    return {"operationId": "embeddings", "summary": "OpenAI's embeddings API, answered by the daemon's "
            "embedding model (`embeddings`).", "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": responses(json_reply("One vector per text, in order, and the tokens read.", reply),
                                   route_errors("_embeddings", ANY_ROUTE, GUARDED, BODY), openai_error_content)}


def mcp_operation() -> dict[str, Any]:
    """Described, not specified: the MCP SDK owns this endpoint (streamable HTTP transport), after the
    door's own checks."""
    message = {"type": "object", "description": "A JSON-RPC 2.0 message of the Model Context Protocol."}
    answers = responses({"description": "The JSON-RPC response, as JSON or as a server-sent event stream.",
                         "content": {JSON: {"schema": message}, "text/event-stream": {"schema": {"type": "string"}}}},
                        (*ANY_ROUTE, *GUARDED, ErrorCode.FRAME_TOO_LARGE), jsonrpc_error_content)
    answers["200"].pop("headers")  # the SDK's own replies carry no trace id; the door's refusals do
    answers["default"] = {"description": "The MCP SDK's answer to a request it refuses (a JSON-RPC error)."}
    return {"operationId": "mcp", "summary": "MCP over streamable HTTP: the same tools as `qmdctl mcp`.",
            "requestBody": {"required": True, "content": {JSON: {"schema": message}}}, "responses": answers}
