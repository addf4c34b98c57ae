"""The HTTP door's error replies, in the shape each kind of client expects: RFC 7807 problem details
carrying qmdd's code, hints and trace id on qmdd's own routes, OpenAI's error object under /v1/, where
the clients are OpenAI's SDKs and the tools built on them, and a JSON-RPC error at /mcp, which an MCP
client hands to its caller. Kept apart from the door so that its OpenAPI description
(`qmdd.transports.openapi`) reads the same mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from qmdd.protocol.errors import ErrorCode, QmddError

PROBLEM_TYPE = "urn:qmdd:error:"
"""Followed by the code: one problem type per stable error code."""

ErrorReply = Callable[[QmddError, str], JSONResponse]
"""An error, and the request's trace id -> the reply."""

OPENAI_CODES = {ErrorCode.UNAUTHORIZED: "invalid_api_key", ErrorCode.MODEL_NOT_FOUND: "model_not_found",
                ErrorCode.RATE_LIMITED: "rate_limit_exceeded"}
"""The codes OpenAI's API gives for these failures; any other is qmdd's code in lower case."""


def problem(error: QmddError, trace_id: str) -> JSONResponse:
    spec = error.code.spec
    body: dict[str, Any] = {"type": PROBLEM_TYPE + str(error.code), "title": spec.title, "status": spec.status,
                            "detail": error.message, "code": str(error.code), "recovery_hints": list(error.hints),
                            "trace_id": trace_id}
    if error.details:
        body["details"] = error.details
    return JSONResponse(body, status_code=spec.status, media_type="application/problem+json",
                        headers=_headers(error))


def openai_error(error: QmddError, trace_id: str) -> JSONResponse:
    """{"error": {"message", "type", "param", "code"}}, as OpenAI answers, with the status of qmdd's error
    table. Hints made for this failure (not the catalogue's, which speak of qmdctl) end the message; the
    trace id is in the x-trace-id header."""
    hints = error.hints if error.hints != error.code.spec.hints else ()
    param = error.details.get("param")
    message = "; ".join((error.message.rstrip("."), *hints)) if hints else error.message
    body = {"error": {"message": message, "type": openai_type(error.code),
                      "param": param if isinstance(param, str) else None, "code": openai_code(error.code)}}
    return JSONResponse(body, status_code=error.code.spec.status, headers=_headers(error))


JSONRPC_SERVER_ERROR = -32000
"""JSON-RPC's range for implementation errors; the message starts with qmdd's code."""


def jsonrpc_error(error: QmddError, trace_id: str) -> JSONResponse:
    """A JSON-RPC error object in `application/json`, at the status of qmdd's error table: the MCP client
    reads this one (problem details it reports as a bare "Server returned an error response"). Its id is
    null, the request's being unread; the client answers the request it sent with it."""
    data: dict[str, Any] = {"code": str(error.code), "hints": list(error.hints), "trace_id": trace_id,
                            **error.details}
    body = {"jsonrpc": "2.0", "id": None,
            "error": {"code": JSONRPC_SERVER_ERROR, "message": f"{error.code}: {error.message}", "data": data}}
    return JSONResponse(body, status_code=error.code.spec.status, headers=_headers(error))


def openai_type(code: ErrorCode) -> str:
    status = code.spec.status
    return "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"


def openai_code(code: ErrorCode) -> str:
    return OPENAI_CODES.get(code, str(code).lower())


def _headers(error: QmddError) -> dict[str, str]:
    if error.code is ErrorCode.UNAUTHORIZED:
        return {"www-authenticate": 'Bearer realm="qmdd"'}
    if error.code is ErrorCode.RATE_LIMITED:
        return {"retry-after": str(int(error.details["retry_after"]))}
    if error.code is ErrorCode.METHOD_NOT_ALLOWED:
        return {"allow": str(error.details["allow"])}
    return {}
