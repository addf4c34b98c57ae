"""Blocking socket client for the daemon, with daemon auto-start. Stdlib + msgpack only."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from collections.abc import Callable

from qmdd import framing
from qmdd.paths import Paths, check_socket_path, ensure_private_dir, resolve_paths, socket_path
from qmdd.protocol import ERROR, HELLO, ITEM, RESULT, ErrorCode, QmddError, hello, request

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    ItemSink = Callable[[str, Any], None]

CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = float(os.environ.get("QMDD_START_TIMEOUT", "30"))
REPLY_TIMEOUT_S = float(os.environ.get("QMDD_TIMEOUT", "300"))
"""Longest silence between two frames of a reply (progress items count); 0 waits forever."""
MAX_TRACE_ID = 128
"""The daemon replaces a longer trace id by its own."""


def new_trace_id() -> str:
    """AGENT_TRACE_ID when set (an agent correlating its calls), else 16 fresh hex digits."""
    given = os.environ.get("AGENT_TRACE_ID", "").strip()
    return given[:MAX_TRACE_ID] if given else os.urandom(8).hex()


class Client:
    def __init__(self, paths: Paths | None = None, *, trace_id: str | None = None,
                 environ: dict[str, str] | None = None, reply_timeout: float = REPLY_TIMEOUT_S) -> None:
        self.reply_timeout = reply_timeout
        self.environ = environ
        """Environment for an auto-started daemon (default: ours); it decides the daemon's paths."""
        self._paths = paths
        self.socket_path = str(paths.socket) if paths is not None else socket_path(environ)
        self.trace_id = trace_id or new_trace_id()
        """Sent with every request, logged by the daemon: AGENT_TRACE_ID, or a fresh id per client."""
        self.identity = os.environ.get("AGENT_IDENTITY_TOKEN") or None
        """AGENT_IDENTITY_TOKEN, passed along in every request (the daemon logs only a hash of it)."""
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self.server: dict[str, Any] = {}

    @property
    def paths(self) -> Paths:
        """All the daemon's paths (pathlib: only needed off the hot path)."""
        if self._paths is None:
            self._paths = resolve_paths(self.environ)
        return self._paths

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def try_connect(self) -> bool:
        """Connect and greet; False when no daemon answers on the socket."""
        check_socket_path(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(self.socket_path)
            # Connected: a daemon owns the socket. It answers the hello once its actors are up,
            # which after a crash can take a BM25 rebuild: wait for that, not for a connect.
            sock.settimeout(START_TIMEOUT_S)
            framing.send_frame(sock, hello("client", client="qmdctl"))
            reply = framing.recv_frame(sock)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionError, TimeoutError):
            sock.close()
            return False
        except PermissionError:
            sock.close()
            raise QmddError(ErrorCode.PERMISSION_DENIED, f"not allowed to use {self.socket_path}",
                            hints=("The daemon runs as another user; set QMDD_HOME to a directory of yours.",)
                            ) from None
        except BaseException:
            sock.close()
            raise
        if reply.get("type") == ERROR:
            sock.close()
            raise QmddError.from_wire(reply.get("error"))
        if reply.get("type") != HELLO:
            sock.close()
            raise QmddError(ErrorCode.PROTOCOL_ERROR, f"unexpected greeting from the daemon: {reply!r:.200}")
        sock.settimeout(self.reply_timeout or None)
        self._sock = sock
        self.server = reply
        return True

    def connect(self, autostart: bool = True) -> Client:
        if self._sock is not None:
            return self
        if self.try_connect():
            return self
        if not autostart:
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"no daemon is running on {self.socket_path}",
                            hints=("Start it with `qmdctl daemon start`.",))
        start_daemon(self.paths, self.environ)
        if not self.try_connect():
            raise QmddError(ErrorCode.DAEMON_START_FAILED, "the daemon started but does not answer")
        return self

    def call(self, method: str, params: dict[str, Any] | None = None, on_item: ItemSink | None = None) -> Any:
        self.connect()
        assert self._sock is not None
        req_id = next(self._ids)
        try:
            framing.send_frame(self._sock, request(req_id, method, params or {}, self.trace_id, self.identity))
            while True:
                frame = framing.recv_frame(self._sock)
                kind = frame.get("type")
                if kind == ITEM:
                    if on_item is not None:
                        on_item(str(frame.get("kind")), frame.get("payload"))
                elif kind == RESULT:
                    return frame.get("result")
                elif kind == ERROR:
                    raise QmddError.from_wire(frame.get("error"))
        except TimeoutError:
            self.close()
            raise QmddError(ErrorCode.TIMEOUT, f"the daemon sent nothing for {self.reply_timeout:g}s during {method}",
                            hints=("It may be stuck: see `qmdctl daemon status` and its log, then `daemon stop`.",
                                   "For very long jobs raise QMDD_TIMEOUT (seconds; 0 waits forever).")) from None
        except (ConnectionError, OSError) as exc:
            self.close()
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"lost the connection to the daemon: {exc}",
                            hints=("Retry: the daemon restarts on demand.",)) from None


def call_collecting(client: Client, method: str, params: dict[str, Any], key: str) -> dict[str, Any]:
    """A call whose list `key` the daemon may stream in batches: the batches are put back in place."""
    parts: list[Any] = []

    def on_item(kind: str, payload: Any) -> None:
        if kind == key:
            parts.extend(payload)

    answer: dict[str, Any] = client.call(method, params, on_item)
    if answer.get("streamed") == key:
        answer[key] = parts
    return answer


def _log_tail(paths: Paths, lines: int = 8) -> str:
    try:
        text = paths.log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_daemon(paths: Paths, environ: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S) -> int:
    """Start `qmdd` detached (own session, output to its log) and wait until it answers."""
    import subprocess

    ensure_private_dir(paths.data_dir)
    with open(paths.log_file, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qmdd"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, close_fds=True, env=environ)
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    probe = Client(paths)
    try:
        while time.monotonic() < deadline:
            if probe.try_connect():
                return proc.pid
            code = proc.poll()
            if code is not None and code != ErrorCode.DAEMON_RUNNING.spec.exit_code:
                raise QmddError(ErrorCode.DAEMON_START_FAILED,
                                f"qmdd exited with status {code}; log {paths.log_file}:\n{_log_tail(paths)}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
    finally:
        probe.close()
    raise QmddError(ErrorCode.DAEMON_START_FAILED,
                    f"qmdd did not answer within {timeout_s:.0f}s; log {paths.log_file}:\n{_log_tail(paths)}")
