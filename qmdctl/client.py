"""Blocking socket client for the daemon, with daemon auto-start. Stdlib + msgpack only."""

from __future__ import annotations

import errno
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from qmdd import ownfiles
from qmdd.paths import Paths, check_socket_path, ensure_private_dir, resolve_paths, socket_path
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import ERROR, HELLO, ITEM, RESULT, hello, request, server_frame

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    ItemSink = Callable[[str, Any], None]

CONNECT_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0
"""Default of QMDD_START_TIMEOUT: how long a started daemon, or one not yet greeting, is waited for."""
REPLY_TIMEOUT_S = 300.0
"""Default of QMDD_TIMEOUT: the longest silence between two frames of a reply (progress items
count); 0 waits forever."""
MAX_TRACE_ID = 128
"""The daemon replaces a longer trace id by its own."""


def env_seconds(name: str, default: float, *, zero_ok: bool = False) -> float:
    """A duration from the environment, read when needed: a bad one is a CONFIG_ERROR, not a traceback."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 or (zero_ok and value == 0)) or value == float("inf"):
        wanted = "0 (wait forever) or a number of seconds" if zero_ok else "a number of seconds above 0"
        raise QmddError(ErrorCode.CONFIG_ERROR, f"{name} must be {wanted}, not {text[:40]!r}",
                        hints=(f"Unset {name} for the default ({default:g}s), or set e.g. {name}={default:g}.",))
    return value


def start_timeout() -> float:
    return env_seconds("QMDD_START_TIMEOUT", START_TIMEOUT_S)


# What an auto-started daemon keeps of the caller's environment: where its files are, its locale, and
# what tunes the model's runtime. Nothing else (PYTHON* variables, the agent's identity token, a shell's
# secrets, a service manager's NOTIFY_SOCKET or LISTEN_FDS) reaches a process that outlives the caller.
_DAEMON_ENV_NAMES = frozenset({"HOME", "USER", "LOGNAME", "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                               "LD_LIBRARY_PATH"})
_DAEMON_ENV_PREFIXES = ("QMDD_", "XDG_", "LC_", "CUDA_", "OMP_", "OPENBLAS_", "MKL_", "CT2_", "NVIDIA_", "OTEL_")


def daemon_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items()
            if name in _DAEMON_ENV_NAMES or name.startswith(_DAEMON_ENV_PREFIXES)}


def new_trace_id() -> str:
    """AGENT_TRACE_ID when set (an agent correlating its calls), else 16 fresh hex digits."""
    given = os.environ.get("AGENT_TRACE_ID", "").strip()
    return given[:MAX_TRACE_ID] if given else os.urandom(8).hex()


class Client:
    def __init__(self, paths: Paths | None = None, *, trace_id: str | None = None,
                 environ: dict[str, str] | None = None, reply_timeout: float | None = None) -> None:
        self._reply_timeout = reply_timeout
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
        self.greeting_timeout: float | None = None
        """How long a connected daemon's hello is waited for (default: QMDD_START_TIMEOUT)."""

    @property
    def reply_timeout(self) -> float:
        if self._reply_timeout is None:
            self._reply_timeout = env_seconds("QMDD_TIMEOUT", REPLY_TIMEOUT_S, zero_ok=True)
        return self._reply_timeout

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
        """Connect and greet; False when no daemon answers. The socket computed from our environment
        first; failing that, the one the daemon using our index recorded (an MCP client, say, may lack
        the XDG_RUNTIME_DIR its daemon was started with). Raises PERMISSION_DENIED, having sent
        nothing, when another user owns the socket, its dir or the server."""
        _ = self.reply_timeout, start_timeout()  # a bad QMDD_TIMEOUT fails here, before a daemon is started
        if self._greet(self.socket_path):
            return True
        recorded = ownfiles.read_record(str(self.paths.address_file))
        if (recorded is None or not os.path.isabs(recorded) or recorded == self.socket_path
                or not self._greet(recorded)):
            return False
        # Only the daemon holding our index's lock is ours to use: a stale record may name a socket
        # where a daemon of another index now listens.
        if ownfiles.lock_holder(str(self.paths.index_lock))[1] != self.server.get("pid"):
            self.close()
            self.server = {}
            return False
        self.socket_path = recorded
        return True

    def _greet(self, path: str) -> bool:
        check_socket_path(path)
        if not ownfiles.check_socket(path):
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
            ownfiles.check_server(sock, path)  # before a byte is sent
            # Connected: a daemon owns the socket. It answers the hello once its actors are up,
            # which after a crash can take a BM25 rebuild: wait for that, not for a connect.
            sock.settimeout(self.greeting_timeout or start_timeout())
            framing.send_frame(sock, hello("client", client="qmdctl"))
            reply = server_frame(framing.recv_frame(sock))
        except (FileNotFoundError, ConnectionRefusedError, ConnectionError, TimeoutError):
            sock.close()
            return False
        except PermissionError:
            sock.close()
            raise QmddError(ErrorCode.PERMISSION_DENIED, f"not allowed to use {path}",
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
        self.server = dict(reply)
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
                try:
                    frame = server_frame(framing.recv_frame(self._sock))
                except QmddError:
                    self.close()  # a frame of unknown shape: nothing after it on this connection can be trusted
                    raise
                kind = frame["type"]
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


def _log_tail(paths: Paths, since: int, lines: int = 8) -> str:
    """The last lines this start wrote to the log (from offset `since`): what an earlier daemon wrote
    there is not this failure's cause, and shown beside it, misled."""
    try:
        with open(paths.log_file, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(since if size >= since else 0, size - 65_536))  # rotated meanwhile: all of it
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) or "(nothing written)"


def _open_log(paths: Paths) -> int:
    """The daemon's log, for appending, never through a link planted in its place."""
    try:
        return os.open(paths.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"{paths.log_file} is a symlink: qmdd writes through none",
                        hints=(f"Remove it: rm {paths.log_file}",)) from None


def start_daemon(paths: Paths, environ: dict[str, str] | None = None, timeout_s: float | None = None) -> int:
    """Start `qmdd` detached (own session, output to its log) and wait until it answers.

    It runs isolated from the caller: from /, with -P (else `-m` puts the caller's working directory,
    and any trio.py or mcp.py there, first on sys.path), -E, and only the environment it needs."""
    import subprocess

    timeout_s = start_timeout() if timeout_s is None else timeout_s
    ensure_private_dir(paths.data_dir)
    log = _open_log(paths)
    since = os.fstat(log).st_size
    try:
        proc = subprocess.Popen([sys.executable, "-E", "-P", "-m", "qmdd"], cwd="/", stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, close_fds=True,
                                env=daemon_environment(environ))
    finally:
        os.close(log)
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    probe = Client(paths)
    try:
        while time.monotonic() < deadline:
            if probe.try_connect():
                # The daemon stays this process's child: a long-lived caller (the `mcp` bridge) must reap
                # it when it exits, or it lingers as a zombie that `daemon stop` still sees running.
                threading.Thread(target=proc.wait, name="qmdd-reaper", daemon=True).start()
                return proc.pid
            code = proc.poll()
            # DAEMON_RUNNING: another client started one first. Wait for it while it is starting on our
            # socket; one holding our index on another socket would have answered through its record,
            # so that is a failure, at once, with the daemon's own words.
            if code is not None and (code != ErrorCode.DAEMON_RUNNING.spec.exit_code
                                     or not ownfiles.lock_holder(str(paths.lock_file))[0]):
                raise QmddError(ErrorCode.DAEMON_START_FAILED,
                                f"qmdd exited with status {code}; log {paths.log_file}:\n{_log_tail(paths, since)}",
                                hints=_start_hints(code))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
    finally:
        probe.close()
    raise QmddError(ErrorCode.DAEMON_START_FAILED,
                    f"qmdd did not answer within {timeout_s:.0f}s; log {paths.log_file}:\n{_log_tail(paths, since)}")


def _start_hints(code: int) -> tuple[str, ...] | None:
    if code != ErrorCode.DAEMON_RUNNING.spec.exit_code:
        return None  # DAEMON_START_FAILED's own: read the log
    return ("A qmdd started with other settings (XDG_RUNTIME_DIR, QMDD_HOME) uses this index and does not "
            "answer here: run qmdctl with the settings it was started with, or stop it (`qmdctl daemon stop` "
            "there) and retry.",)
