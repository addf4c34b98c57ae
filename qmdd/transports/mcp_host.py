"""MCP sessions, served inside the daemon: `qmdctl mcp` only pipes stdio to the socket.

The MCP SDK takes about a second to import, and an agent host starts a fresh bridge per session; so
the SDK lives in the long-running daemon (imported in the background after start) and a bridge is
answering `initialize` within milliseconds of starting. Each bridge connection becomes one MCP
session: its frames carry JSON-RPC lines both ways, fed to the SDK's low-level server loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from qmdd.methods.call import Call
from qmdd.methods.table import MethodTable, invoke
from qmdd.protocol.wire import line_of

log = logging.getLogger("qmdd.mcp")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def _jsonrpc_error(code: int, message: str, req_id: Any = None) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})


class McpHost:
    """Serves MCP sessions from the method table: its tools and resources call the same methods as the
    socket RPC, and this host adds the `mcp.session` method to the socket's table."""

    def __init__(self, table: MethodTable) -> None:
        self.table = table
        self._server: Any = None
        self._building = trio.Lock()
        self.sessions = 0
        self.open_sessions = 0
        self.calls_in_flight = 0  # the sessions' requests not answered yet, which a stopping daemon waits for
        self._idle = trio.Event()
        self._idle.set()

    def _calls(self, change: int) -> None:
        self.calls_in_flight += change
        if not self.calls_in_flight:
            self._idle.set()
        elif self._idle.is_set():
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Until no session has a request in flight (an open session between calls is idle)."""
        await self._idle.wait()

    async def preload(self) -> None:
        """Import the SDK and build the server in a thread, off the start-up path."""
        await self.server()

    async def server(self) -> Any:
        async with self._building:
            if self._server is None:
                # The SDK import (~1 s, once per daemon) runs in the thread too: on the event loop it
                # would hold every request for that long.
                self._server = await trio.to_thread.run_sync(_build_server, self.table)
            return self._server

    async def instructions(self) -> str:
        collections, _ = await invoke(self.table, "collection.list", {})
        lines = ["qmdd searches the user's local markdown collections (notes, docs, transcripts).",
                 "Collections:"]
        for c in collections:
            lines.append(f"- {c['name']} ({c['uri']}): {c['documents']} documents from {c['root']}")
        if len(lines) == 2:
            lines.append("- none yet: the user adds them with `qmdctl collection add PATH`")
        lines += [
            "Tools: `query` (best default: keyword + semantic, fused) for questions in natural language;",
            "give it `intent` (background that disambiguates; it is never searched by itself);",
            "`search` for exact words, names, error messages, identifiers; `vsearch` for meaning only;",
            "then `get` (a file, qmd:// URI or #docid, with line ranges) or `multi_get` (globs) to read.",
            "Results carry a docid (#abc123), the file as qmd://collection/path, a line and a snippet.",
            "Documents are also resources: qmd://{collection}/{path}, listed a page at a time by",
            "resources/list. Everything is read-only.",
        ]
        return "\n".join(lines)

    async def session(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        # The SDK is imported only once the server is built: importing it here while the background
        # preload imports it in a thread can hand this task a half-initialised module (ImportError).
        server = await self.server()
        import anyio
        from mcp.shared.message import SessionMessage
        from mcp_types import JSONRPCError, JSONRPCRequest, JSONRPCResponse, jsonrpc_message_adapter

        lowlevel = session_server(server)
        lowlevel.instructions = await self.instructions()
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](32)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](32)
        asked: set[Any] = set()  # ids of the agent's requests not answered yet

        async def from_bridge() -> None:
            async with read_writer:
                while True:
                    frame = await call.receive()
                    if frame is None:
                        return
                    line = line_of(frame)
                    if line is None:
                        await call.emit("mcp", _jsonrpc_error(INVALID_REQUEST, "expected a JSON-RPC line"))
                        continue
                    try:
                        json.loads(line)
                    except (ValueError, RecursionError) as exc:  # not JSON, or JSON nested to no end
                        await call.emit("mcp", _jsonrpc_error(PARSE_ERROR, f"Parse error: {exc}"[:300]))
                        continue
                    try:
                        message = jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except ValueError as exc:  # valid JSON, not a JSON-RPC message
                        await call.emit("mcp", _jsonrpc_error(INVALID_REQUEST, f"Invalid Request: {exc}"[:500]))
                        continue
                    if isinstance(message, JSONRPCRequest) and message.id not in asked:
                        asked.add(message.id)
                        self._calls(+1)
                    await read_writer.send(SessionMessage(message))

        async def to_bridge() -> None:
            async with write_reader:
                async for message in write_reader:
                    await call.emit("mcp", message.message.model_dump_json(by_alias=True, exclude_unset=True))
                    if isinstance(message.message, JSONRPCResponse | JSONRPCError) and message.message.id in asked:
                        asked.discard(message.message.id)
                        self._calls(-1)

        self.sessions += 1
        self.open_sessions += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(to_bridge)
                nursery.start_soon(from_bridge)
                await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
                nursery.cancel_scope.cancel()
        finally:
            self.open_sessions -= 1
            self._calls(-len(asked))
        return {"closed": True}

    async def http_app(self, *, stateless: bool = False) -> Any:
        """MCP streamable HTTP (the SDK's ASGI app at /mcp) over the same tools: sessions, or with
        `stateless` none (each POST stands alone and is answered with plain JSON: for clients behind
        load balancers, or that cannot keep a session id). The HTTP door checks the token and Host/Origin
        itself, so the SDK's own rebinding check stays off. The instructions list the collections as
        they are when the app is built."""
        server = await self.server()  # first: see `session`
        from mcp.server.transport_security import TransportSecuritySettings

        session_server(server).instructions = await self.instructions()
        return server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=stateless, json_response=stateless,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))

    def statistics(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "open_sessions": self.open_sessions, "loaded": self._server is not None,
                "open_http_sessions": open_http_sessions(self._server)}


def _build_server(table: MethodTable) -> Any:
    from qmdd.transports import mcp_tools

    server = mcp_tools.build_server(table)
    mcp_tools.serve_document_list(session_server(server), table)
    return server


def session_server(server: Any) -> Any:
    """The SDK's low-level server under an MCPServer, which alone can serve one session over streams of
    our own (MCPServer itself runs stdio, SSE or its own HTTP app). `_lowlevel_server` is private in the
    SDK: this is the one place that touches it, and tests/test_mcp.py checks that it is still there."""
    return server._lowlevel_server


def open_http_sessions(server: Any) -> int:
    """The MCP-over-HTTP sessions open now (0 before the HTTP app is built). The SDK counts them only in
    its session manager's private `_server_instances`: this is the one place that reads it, and
    tests/test_http.py checks the count."""
    manager = None if server is None else session_server(server)._session_manager
    return 0 if manager is None else len(manager._server_instances)
