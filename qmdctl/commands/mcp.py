"""`qmdctl mcp`: the stdio MCP bridge. It imports no MCP SDK: JSON-RPC lines from stdin go to an MCP
session inside the daemon (which keeps the SDK loaded), and its answers go to stdout. Nothing else is
ever written to stdout; diagnostics go to stderr.

If the daemon goes away, the requests it held are answered with BACKEND_UNAVAILABLE errors, and the
next message restarts it and replays the client's handshake on the new connection, so the agent's
session carries on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.parse

from qmdctl.client import Client
from qmdctl.render import terminal_safe
from qmdd import ownfiles
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import ERROR, ITEM, RESULT, mcp_line, request, server_frame

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

    from qmdctl.invocation import Invocation

SESSION_METHOD = "mcp.session"
DEFAULT_HTTP_PORT = 8181
"""qmd's `mcp --http` port."""
MCP_STARTED_FILE = "mcp-http.pid"
# How long the bridge waits, once stdin has ended, for the answers to what was asked before.
DRAIN_S = 120.0
"""In the data dir: the pid of the daemon `mcp --http` started (qmd's `mcp --http --daemon` PID file)."""


def _unavailable(req_id: Any, method: str, why: str) -> dict[str, Any]:
    text = (f"BACKEND_UNAVAILABLE: {why}\nhint: retry: the daemon restarts on demand "
            "(see `qmdctl daemon status` and its log if it keeps failing)")
    if method == "tools/call":  # a tool error the model can read, not a broken session
        return {"jsonrpc": "2.0", "id": req_id, "result": {
            "content": [{"type": "text", "text": text}], "isError": True}}
    return {"jsonrpc": "2.0", "id": req_id, "error": {
        "code": -32603, "message": text, "data": {"code": "BACKEND_UNAVAILABLE"}}}


class Bridge:
    def __init__(self, stdout: Any = None) -> None:
        self.out = stdout or sys.stdout.buffer
        self.client: Client | None = None
        self.sock: socket.socket | None = None
        self.pending: dict[Any, str] = {}  # request id -> method, sent on the current connection
        self.handshake: list[bytes] = []  # the client's initialize request and initialized notification
        self.swallow: Any = None  # id of a replayed initialize, whose answer the client already has
        self.lock = threading.Lock()
        self.connections = 0

    # --- stdout ----------------------------------------------------------------------------------------

    def write(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        with self.lock:
            self.out.write(data.rstrip(b"\n") + b"\n")
            self.out.flush()

    # --- daemon connection ------------------------------------------------------------------------------

    def connect(self) -> None:
        client = Client()
        client.connect()
        sock = client._sock
        assert sock is not None
        sock.settimeout(None)  # a session is idle for as long as the agent thinks
        framing.send_frame(sock, request(1, SESSION_METHOD, {"client": "qmdctl-mcp"}, client.trace_id,
                                         client.identity))
        with self.lock:
            self.client, self.sock = client, sock
            self.connections += 1
        threading.Thread(target=self.read_daemon, args=(client, sock), daemon=True).start()
        if self.connections > 1 and self.handshake:
            first = json.loads(self.handshake[0])
            self.swallow = first.get("id")
            for line in self.handshake:
                framing.send_frame(sock, mcp_line(line.decode()))

    def lost(self, sock: socket.socket, why: str) -> None:
        with self.lock:
            if self.sock is not sock:
                return
            self.sock = None
            failed, self.pending = self.pending, {}
        if self.client is not None:
            self.client.close()
        for req_id, method in failed.items():
            self.write(json.dumps(_unavailable(req_id, method, why)))

    def read_daemon(self, client: Client, sock: socket.socket) -> None:
        why = "the daemon closed the session"
        try:
            while True:
                frame = server_frame(framing.recv_frame(sock))
                kind = frame["type"]
                if kind == ITEM and frame.get("kind") == "mcp":
                    self.from_daemon(str(frame.get("payload")))
                elif kind == ERROR:
                    err = QmddError.from_wire(frame.get("error"))
                    why = f"{err.code}: {err.message}"
                    break
                elif kind == RESULT:
                    break
        except (ConnectionError, OSError, QmddError) as exc:
            why = f"lost the connection to the daemon ({exc})"
        self.lost(sock, why)

    def from_daemon(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = {}
        req_id = message.get("id") if isinstance(message, dict) else None
        if req_id is not None and ("result" in message or "error" in message):
            if self.swallow is not None and req_id == self.swallow:
                self.swallow = None
                return
            with self.lock:
                self.pending.pop(req_id, None)
        self.write(line)

    # --- stdin -------------------------------------------------------------------------------------------

    def to_daemon(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # the daemon answers it with a parse error
            message = None
        if isinstance(message, dict):
            method = message.get("method")
            if method == "initialize":
                self.handshake = [line]
            elif method == "notifications/initialized" and len(self.handshake) == 1:
                self.handshake.append(line)
            if isinstance(method, str) and "id" in message:
                with self.lock:
                    self.pending[message["id"]] = method
        for attempt in (1, 2):
            if self.sock is None:
                self.connect()
            sock = self.sock
            assert sock is not None
            try:
                framing.send_frame(sock, mcp_line(line.decode("utf-8", "replace")))
                return
            except OSError as exc:
                self.lost(sock, f"lost the connection to the daemon ({exc})")
                if attempt == 2:
                    raise

    def run(self, stdin: Any = None) -> int:
        stdin = stdin or sys.stdin.buffer
        for line in stdin:
            if not line.strip():
                continue
            try:
                self.to_daemon(line)
            except QmddError as err:  # the daemon cannot be started: say so for this message, go on
                self.fail_message(line, f"{err.code}: {err.message}")
            except OSError as exc:
                self.fail_message(line, f"lost the connection to the daemon ({exc})")
        self.drain()
        if self.sock is not None:
            self.sock.close()
        return 0

    def drain(self, timeout: float = DRAIN_S) -> None:
        """At stdin's end, answer what was asked before it (`requests.jsonl | qmdctl mcp` gets its replies):
        wait until no request is pending, the daemon is gone (`lost` answers the rest), or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending or self.sock is None:
                    return
            time.sleep(0.01)

    def fail_message(self, line: bytes, why: str) -> None:
        with self.lock:
            failed = dict(self.pending)
            self.pending.clear()
        for req_id, method in failed.items():
            self.write(json.dumps(_unavailable(req_id, method, why)))
        sys.stderr.write(f"qmdctl mcp: {terminal_safe(why)}\n")  # an error may echo a client's input


def serve(inv: Invocation) -> int:
    action = inv.args.get("action")
    if action == "stop":
        return stop_http(inv)
    if action is not None:
        raise QmddError(ErrorCode.INVALID_INPUT, f"unknown mcp action {action!r}",
                        hints=("`qmdctl mcp` serves stdio, `qmdctl mcp --http [--daemon]` HTTP, "
                               "`qmdctl mcp stop` stops what `mcp --http` started.",))
    if inv.args.get("http") or inv.args.get("daemon"):
        return point_to_http(inv)
    os.environ.setdefault("QMDD_TIMEOUT", "0")
    try:
        return Bridge().run()
    except KeyboardInterrupt:
        return 0
    except QmddError as err:
        raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, err.message) from None


def point_to_http(inv: Invocation) -> int:
    """`qmdctl mcp --http`: MCP over streamable HTTP is served by the daemon itself, at /mcp of its HTTP
    door. Start the daemon with that door (on loopback, --port) unless one runs, and say where it is."""
    from qmdctl.commands.daemon import ensure_running

    port = inv.args.get("port")
    port = DEFAULT_HTTP_PORT if port is None else port
    if not 0 <= port <= 65535:
        raise QmddError(ErrorCode.INVALID_INPUT, f"--port must be from 0 (any free port) to 65535, not {port}")
    info = ensure_running(inv.client, http=f"127.0.0.1:{port}")
    if info["http"] is None:
        raise QmddError(ErrorCode.DAEMON_RUNNING, f"qmdd is running (pid {info['pid']}) without HTTP",
                        hints=("Stop it (`qmdctl daemon stop`) and run `qmdctl mcp --http` again, or start it "
                               "with `qmdctl daemon start --http 127.0.0.1:8181`.",))
    if info["started"]:
        # `mcp stop` stops only a daemon this command started, and only while that one still runs.
        ownfiles.replace_file(str(inv.client.paths.data_dir / MCP_STARTED_FILE), f"{info['pid']}\n")
    url = info["http"].rstrip("/") + "/mcp"
    serving = urllib.parse.urlsplit(info["http"]).port
    if not info["started"] and inv.args.get("port") not in (None, 0, serving):
        sys.stderr.write(f"note: qmdd (pid {info['pid']}) already serves HTTP on port {serving}: --port "
                         f"{inv.args['port']} is not used (stop it first to move it).\n")
    sys.stdout.write(f"MCP over HTTP: {url} (qmdd pid {info['pid']}, {'started' if info['started'] else 'running'})\n"
                     "Send the header  Authorization: Bearer TOKEN  (`qmdctl http token` prints TOKEN).\n")
    return 0


def stop_http(inv: Invocation) -> int:
    """`qmdctl mcp stop`: qmd's stops its background HTTP MCP server. Ours is the daemon, which other clients
    (searches, stdio bridges, HTTP users) may share, and which cannot close its HTTP door alone: it is stopped
    only when `mcp --http` started it (its pid recorded, and still the one holding the index), gracefully, as
    `daemon stop` does; a stdio bridge reconnects to the next daemon on its own. A daemon started otherwise is
    left running, with how to stop it."""
    from qmdctl.commands.daemon import wait_for_exit

    paths = inv.client.paths
    record = str(paths.data_dir / MCP_STARTED_FILE)
    started = ownfiles.read_record(record)
    held, pid = ownfiles.lock_holder(str(paths.index_lock))
    ours = started is not None and started.isdigit() and held and pid == int(started)
    if not ours:
        if started is not None:  # stale: that daemon is gone (or another took its place)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record)
        running = f"qmdd (pid {pid}) was not started by `qmdctl mcp --http`: left running; `qmdctl daemon stop` " \
                  "stops it" if held else "MCP over HTTP is not running"
        sys.stdout.write(f"{running}\n")
        return 0
    assert pid is not None
    if inv.client.try_connect():
        inv.client.call("shutdown")
        inv.client.close()
    else:  # it holds the index but does not answer: its graceful shutdown by signal
        os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(pid):
        raise QmddError(ErrorCode.TIMEOUT, f"qmdd (pid {pid}) is still running after being asked to stop",
                        hints=(f"See its log {paths.log_file}.", f"Force it: kill -KILL {pid}"))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record)
    sys.stdout.write(f"Stopped the MCP HTTP server: qmdd (pid {pid}).\n")
    return 0
