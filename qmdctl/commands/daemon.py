"""`qmdctl daemon start|stop|status`."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from qmdctl.client import Client, start_daemon
from qmdd.protocol import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.main import Invocation

STOP_TIMEOUT_S = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_exit(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """True once `pid` has exited; False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def start(inv: Invocation) -> int:
    client = inv.client
    already = client.try_connect()
    if not already:
        environ = dict(os.environ if client.environ is None else client.environ)
        if inv.args.get("no_watch"):
            environ["QMDD_WATCH"] = "0"
        start_daemon(client.paths, environ)
        client.try_connect()
    info = {"running": True, "started": not already, "pid": client.server.get("pid"),
            "socket": str(client.paths.socket)}
    inv.output.value(info, lambda i: inv.output.line(
        f"qmdd {'started' if i['started'] else 'already running'} (pid {i['pid']}) on {i['socket']}"))
    return 0


def stop(inv: Invocation) -> int:
    client = inv.client
    if not client.try_connect():
        inv.output.value({"running": False, "stopped": False},
                         lambda _: inv.output.line("qmdd is not running"))
        return 0
    pid = int(client.call("shutdown")["pid"])
    client.close()
    if not wait_for_exit(pid):
        raise QmddError(ErrorCode.TIMEOUT, f"qmdd (pid {pid}) did not stop within {STOP_TIMEOUT_S:.0f}s",
                        hints=(f"kill {pid}",))
    inv.output.value({"running": False, "stopped": True, "pid": pid},
                     lambda _: inv.output.line(f"qmdd stopped (pid {pid})"))
    return 0


def status(inv: Invocation) -> int:
    client: Client = inv.client
    running = client.try_connect()
    info = {"running": running, "pid": client.server.get("pid") if running else None,
            "socket": str(client.paths.socket), "log_file": str(client.paths.log_file),
            "data_dir": str(client.paths.data_dir)}
    inv.output.value(info, lambda i: inv.output.line(
        (f"qmdd running (pid {i['pid']})" if i["running"] else "qmdd not running")
        + f"\n  socket: {i['socket']}\n  data:   {i['data_dir']}\n  log:    {i['log_file']}"))
    return 0 if running else ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code
