"""Per-connection handler: hello, then decode → validate → dispatch → reply or stream, one request at a time.

This is one of the three places that catch exceptions: anything a request raises becomes a typed
error frame for that request and the connection carries on; only a broken frame stream (an oversized
or truncated frame: we cannot find the next frame boundary) closes the connection.

Open connections are capped below the descriptor limit (`connection_cap`), so that idle clients can
never take the descriptors the daemon needs for its own files (SQLite, snapshots, models, the MCP
SDK's modules). A connection over the cap closes the least recently active idle one (waiting for
its next request) with a typed error; when none is idle, the new one is refused with that error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from qmdd import ownfiles
from qmdd.methods.call import Call, MethodHandler, client_gone
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode, QmddError, unwrap_error
from qmdd.protocol.framing import FrameReader, FrameStalled, FrameTooLarge
from qmdd.protocol.wire import (
    PROTOCOL_VERSION,
    client_frame,
    error,
    hello,
    item,
    reply_id,
    result,
    validate_params,
)
from qmdd.tracing import accepted_trace_id, new_trace_id, trace_id_var

if TYPE_CHECKING:
    from qmdd.protocol.wire import ClientFrame, RequestFrame

log = logging.getLogger("qmdd.rpc")




def peer_uid(sock: socket.socket) -> int:
    return ownfiles.peer_credentials(sock)[1]


@dataclass
class RpcStats:
    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    in_flight: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rejected_peers: int = 0
    evicted_connections: int = 0
    refused_connections: int = 0


RESERVED_DESCRIPTORS = 128
"""Descriptors kept from connections for the daemon's own use, at the least: ~25 at idle (SQLite
connections and their WAL, locks, log, epoll, inotify), plus a scan's open directories, a snapshot
write, model files, document reads and the MCP SDK import."""
MIN_CONNECTIONS = 16


def connection_cap(descriptor_limit: int | None = None) -> int:
    """How many connections may be open at once: the soft RLIMIT_NOFILE less a reserve (a quarter of
    the limit, at least RESERVED_DESCRIPTORS)."""
    if descriptor_limit is None:
        descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptor_limit == resource.RLIM_INFINITY:
        descriptor_limit = 1 << 20
    return max(MIN_CONNECTIONS, descriptor_limit - max(RESERVED_DESCRIPTORS, descriptor_limit // 4))


@dataclass(eq=False)
class _Connection:
    stream: trio.SocketStream
    idle: trio.CancelScope | None = None
    """Set while the connection waits for its next request to begin: cancelled to evict it."""


class _Evicted(QmddError):
    def __init__(self, cap: int) -> None:
        super().__init__(ErrorCode.BACKEND_UNAVAILABLE,
                         f"connection closed: the daemon is at its limit of {cap} connections, and this one "
                         "was the longest idle", hints=("Reconnect; close connections you do not use.",))


def redact_identity(token: Any) -> str | None:
    """How a request's identity token (AGENT_IDENTITY_TOKEN) may appear in a log: never itself, only
    'sha256:' and the first 8 hex digits of its hash, enough to tell callers apart."""
    if token is None or token == "":
        return None
    if not isinstance(token, str):
        raise QmddError(ErrorCode.PROTOCOL_ERROR, "a request's identity must be a string")
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:8]


async def read_frame(reader: FrameReader, stall_s: float) -> bytes | None:
    """The next frame's body, or None at a clean EOF. Waiting for a frame to begin has no limit (idle
    clients, MCP sessions); once begun, it must be complete within `stall_s`: a peer stalled mid-frame
    must not hold its connection, and up to a frame's worth of buffer, for ever."""
    if not await reader.frame_started():
        return None
    return await read_started_frame(reader, stall_s)


async def read_started_frame(reader: FrameReader, stall_s: float) -> bytes | None:
    with trio.move_on_after(stall_s):
        return await reader.read_body()
    raise FrameStalled(reader.buffered, stall_s)


class RpcServer:
    def __init__(self, methods: Mapping[str, MethodHandler], server_name: str,
                 frame_stall_s: float = 30.0, max_connections: int | None = None,
                 sessions: Collection[str] = ()) -> None:
        self.methods = methods
        # Methods whose request is a session (an MCP bridge's, open for as long as its agent runs): not
        # requests in flight, which a stopping daemon waits for; their own calls are counted where served.
        self.sessions = frozenset(sessions)
        self.server_name = server_name
        self.frame_stall_s = frame_stall_s
        self.max_connections = connection_cap() if max_connections is None else max_connections
        self.stats = RpcStats()
        # Least recently active first: a connection moves to the end each time it goes idle.
        self._open: dict[_Connection, None] = {}
        self.idle = trio.Event()
        self.idle.set()

    def statistics(self) -> dict[str, Any]:
        s = self.stats
        return {"connections": s.connections, "open_connections": s.open_connections, "requests": s.requests,
                "in_flight": s.in_flight, "errors": dict(s.errors), "rejected_peers": s.rejected_peers,
                "max_connections": self.max_connections, "evicted_connections": s.evicted_connections,
                "refused_connections": s.refused_connections}

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        connection = _Connection(stream)
        try:
            async with stream:
                if len(self._open) >= self.max_connections and not self._evict_longest_idle():
                    self.stats.refused_connections += 1
                    with trio.move_on_after(1.0):
                        await self._send(stream, error(None, QmddError(
                            ErrorCode.BACKEND_UNAVAILABLE,
                            f"too many connections: all {self.max_connections} are busy with requests",
                            hints=("Retry when a request has finished.",))))
                    return
                self._open[connection] = None
                await self._serve(connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("client went away")
        except Exception:  # last resort: one bad connection must not take the daemon down
            log.exception("connection handler failed")
        finally:
            self._open.pop(connection, None)
            self.stats.open_connections -= 1

    def _evict_longest_idle(self) -> bool:
        for connection in self._open:
            if connection.idle is not None and not connection.idle.cancel_called:
                connection.idle.cancel()
                self.stats.evicted_connections += 1
                return True
        return False

    async def _next_frame(self, connection: _Connection, reader: FrameReader) -> bytes | None:
        """The client's next frame (None at a clean EOF). Waiting for it to begin, the connection is
        idle, and the one to close first when the daemon runs out of connections."""
        self._open.pop(connection, None)
        self._open[connection] = None
        with trio.CancelScope() as connection.idle:
            started = await reader.frame_started()
        evicted = connection.idle.cancelled_caught
        connection.idle = None
        if evicted:
            raise _Evicted(self.max_connections)
        return await read_started_frame(reader, self.frame_stall_s) if started else None

    async def _send(self, stream: trio.SocketStream, frame: Mapping[str, Any]) -> None:
        try:
            data = framing.encode(frame)
        except QmddError as exc:
            data = framing.encode(error(frame.get("id"), exc))
        await stream.send_all(data)

    async def _serve(self, connection: _Connection) -> None:
        stream = connection.stream
        if peer_uid(stream.socket) != os.getuid():  # type: ignore[arg-type]
            self.stats.rejected_peers += 1
            await self._send(stream, error(None, QmddError(
                ErrorCode.PERMISSION_DENIED, "only the daemon's own user may connect")))
            return
        reader = FrameReader(stream)
        greeted = False
        while True:
            try:
                body = await self._next_frame(connection, reader)
            except (FrameTooLarge, FrameStalled, _Evicted) as exc:
                self._count(exc.code)
                with trio.move_on_after(1.0):  # a client that reads nothing must not hold its descriptor
                    await self._send(stream, error(None, exc))
                return
            except QmddError as exc:  # truncated frame: nothing more can be read reliably
                self._count(exc.code)
                return
            if body is None:
                return
            req_id: int | None = None
            try:
                decoded = framing.decode_body(body)
                req_id = reply_id(decoded)
                message = client_frame(decoded)
                if not greeted:
                    await self._hello(stream, message)
                    greeted = True
                    continue
                if message["type"] != "req":
                    raise QmddError(ErrorCode.PROTOCOL_ERROR, f"expected a request frame, not {message['type']!r}")
            except QmddError as exc:
                self._count(exc.code)
                await self._send(stream, error(req_id, exc))
                if not greeted:  # before the hello there is no session
                    return
                continue
            # In flight until its answer is sent: a stopping daemon waits for that (within its grace),
            # where counting only the method's work let the stop cut off an answer that was ready.
            counted = message["method"] not in self.sessions
            if counted:
                self.stats.in_flight += 1
                self.idle = trio.Event() if self.stats.in_flight == 1 else self.idle
            try:
                await self._request(stream, reader, message)
            except QmddError as exc:
                self._count(exc.code)
                await self._send(stream, error(req_id, exc))
                # After an oversized frame (which a method reading the connection itself, like
                # mcp.session, may meet) there is no next frame boundary.
                if isinstance(exc, (FrameTooLarge, FrameStalled)):
                    return
            finally:
                if counted:
                    self.stats.in_flight -= 1
                    if self.stats.in_flight == 0:
                        self.idle.set()

    async def _hello(self, stream: trio.SocketStream, message: ClientFrame) -> None:
        if message["type"] != "hello":
            raise QmddError(ErrorCode.PROTOCOL_ERROR, "the first frame must be a hello")
        if message["version"] != PROTOCOL_VERSION:
            raise QmddError(ErrorCode.PROTOCOL_ERROR,
                            f"protocol version {message['version']!r} is not supported "
                            f"(this daemon speaks {PROTOCOL_VERSION})")
        await self._send(stream, hello("server", server=self.server_name, pid=os.getpid()))

    async def _request(self, stream: trio.SocketStream, reader: FrameReader, message: RequestFrame) -> None:
        req_id, method = message["id"], message["method"]
        trace_id = accepted_trace_id(message.get("trace_id")) or new_trace_id()
        trace_id_var.set(trace_id)
        identity = redact_identity(message.get("identity"))
        params = validate_params(method, message.get("params"))
        handler = self.methods.get(method)
        if handler is None:
            raise QmddError(ErrorCode.UNKNOWN_METHOD, f"method {method!r} is not served by this daemon")
        seq = 0

        async def emit(kind: str, payload: Any) -> None:
            nonlocal seq
            seq += 1
            await self._send(stream, item(req_id, seq, kind, payload))

        async def receive() -> dict[str, Any] | None:
            body = await read_frame(reader, self.frame_stall_s)
            return None if body is None else framing.decode_body(body)

        self.stats.requests += 1
        try:
            if log.isEnabledFor(logging.DEBUG):  # its arguments cost more than the check
                log.debug("%s %s%s", method, {k: v for k, v in params.items() if k != "text"},
                          f" identity={identity}" if identity else "")
            value = await handler(params, Call(emit, receive, trace_id))
        except Exception as exc:
            if client_gone(exc):
                raise trio.BrokenResourceError("client went away mid-stream") from None
            typed = unwrap_error(exc)
            if typed is not None:
                raise typed from None
            log.exception("method %s failed", method)
            raise QmddError(ErrorCode.INTERNAL, f"{method} failed: {type(exc).__name__}: {exc}") from exc
        reply = result(req_id, value)
        reply["trace_id"] = trace_id
        await self._send(stream, reply)

    def _count(self, code: ErrorCode) -> None:
        self.stats.errors[str(code)] = self.stats.errors.get(str(code), 0) + 1
