"""`qmdctl daemon start|stop|status`."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from qmdctl.client import CONNECT_TIMEOUT_S, Client, start_daemon
from qmdd import ownfiles
from qmdd.paths import listen_address
from qmdd.protocol.errors import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation

STOP_TIMEOUT_S = 30.0


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, not yet reaped by a parent that still runs) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # gone meanwhile, or no /proc: what kill said
        return True


def wait_for_exit(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """True once `pid` has exited; False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def ensure_running(client: Client, *, http: str | None = None, watch: bool = True) -> dict[str, Any]:
    """Start the daemon unless one answers; what `daemon start` reports (pid, socket, HTTP URL)."""
    already = client.try_connect()
    if not already:
        environ = dict(os.environ if client.environ is None else client.environ)
        if not watch:
            environ["QMDD_WATCH"] = "0"
        if http:
            environ["QMDD_HTTP_LISTEN"] = http
        start_daemon(client.paths, environ)
        client.try_connect()
    return {"running": True, "started": not already, "pid": client.server.get("pid"),
            "socket": client.socket_path, "http": ownfiles.read_record(str(client.paths.http_address))}


def start(inv: Invocation) -> int:
    http = inv.args.get("http")
    if http:  # checked here, where the flag was given: the daemon would blame the variable it is passed as
        try:
            listen_address(http)
        except ValueError:
            raise QmddError(ErrorCode.INVALID_INPUT, f"--http {http!r} is not HOST:PORT",
                            hints=("Give the address to listen on, e.g. --http 127.0.0.1:8181 or --http "
                                   "[::1]:8181 (port 0: any free one).",)) from None
    info = ensure_running(inv.client, http=http, watch=not inv.args.get("no_watch"))
    if http and info["http"] is None:  # asked for, and not served: a script must know
        raise QmddError(ErrorCode.DAEMON_RUNNING, f"qmdd is already running (pid {info['pid']}) without HTTP",
                        hints=("Stop it (`qmdctl daemon stop`), then start it again with --http.",))
    inv.output.value(info, lambda i: inv.output.line(
        f"qmdd {'started' if i['started'] else 'already running'} (pid {i['pid']}) on {i['socket']}"
        + (f"\n  http: {i['http']}" if i["http"] else "")))
    return 0


def stop(inv: Invocation) -> int:
    """Ask the daemon to shut down, or SIGTERM one that holds the index but does not answer, and wait
    for it to exit; a live one is never said gone. Only a pid the daemon's own lock file names (ours,
    no link, flock held, a process of ours) is ever signalled."""
    client = inv.client
    index_lock = str(client.paths.index_lock)
    held, pid = ownfiles.lock_holder(index_lock)
    if held:  # it exists: a healthy one greets in milliseconds, a stuck one is not waited for long
        client.greeting_timeout = CONNECT_TIMEOUT_S
    if client.try_connect():
        # The server runs as us (checked before the hello): its pid is good to wait for, not to signal.
        pid = int(client.call("shutdown")["pid"])
        client.close()
    elif not held:
        inv.output.value({"running": False, "stopped": False},
                         lambda _: inv.output.line("qmdd is not running"))
        return 0
    elif pid is None:
        raise QmddError(ErrorCode.TIMEOUT, f"a qmdd holds {index_lock} but does not answer, and its pid is unknown",
                        hints=(f"Find it with `fuser -v {index_lock}`, then kill it (SIGTERM, then SIGKILL).",))
    else:
        os.kill(pid, signal.SIGTERM)  # it does not answer: its graceful shutdown by signal
    if not wait_for_exit(pid, STOP_TIMEOUT_S):
        raise QmddError(ErrorCode.TIMEOUT, f"qmdd (pid {pid}) is still running {STOP_TIMEOUT_S:.0f}s after "
                        "being asked to stop", hints=(f"It may be stuck: see its log {client.paths.log_file}.",
                                                      f"Force it: kill -KILL {pid}"))
    inv.output.value({"running": False, "stopped": True, "pid": pid},
                     lambda _: inv.output.line(f"qmdd stopped (pid {pid})"))
    return 0


def status(inv: Invocation) -> int:
    client: Client = inv.client
    running = client.try_connect()
    info = {"running": running, "pid": client.server.get("pid") if running else None,
            "socket": client.socket_path, "log_file": str(client.paths.log_file),
            "data_dir": str(client.paths.data_dir)}
    inv.output.value(info, lambda i: inv.output.line(
        (f"qmdd running (pid {i['pid']})" if i["running"] else "qmdd not running")
        + f"\n  socket: {i['socket']}\n  data:   {i['data_dir']}\n  log:    {i['log_file']}"))
    return 0 if running else ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code
