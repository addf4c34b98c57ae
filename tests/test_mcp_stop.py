"""`qmdctl mcp --http --daemon` and `qmdctl mcp stop`, as qmd has them: the daemon serves MCP over HTTP; `stop`
stops it only when `mcp --http` started it, and leaves a daemon started otherwise to its other users."""

from __future__ import annotations

import socket
import urllib.request

from qmdctl.commands.daemon import wait_for_exit
from tests.conftest import Env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_flag_starts_and_stop_stops(env: Env) -> None:
    port = free_port()
    out = env.run("mcp", "--http", "--daemon", "--port", str(port)).stdout
    pid = env.daemon_pid()
    assert pid is not None and f"MCP over HTTP: http://127.0.0.1:{port}/mcp (qmdd pid {pid}, started)" in out
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
        assert reply.status == 200
    record = env.paths.data_dir / "mcp-http.pid"
    assert record.read_text() == f"{pid}\n"
    assert "running" in env.run("mcp", "--daemon", "--port", str(port)).stdout  # --daemon implies --http

    assert env.run("mcp", "stop").stdout == f"Stopped the MCP HTTP server: qmdd (pid {pid}).\n"
    assert wait_for_exit(pid, 5) and not record.exists()
    assert env.run("mcp", "stop").stdout == "MCP over HTTP is not running\n"


def test_stop_leaves_a_daemon_it_did_not_start(env: Env) -> None:
    port = free_port()
    env.run("daemon", "start", "--http", f"127.0.0.1:{port}")
    pid = env.daemon_pid()
    assert "running" in env.run("mcp", "--http", "--daemon", "--port", str(port)).stdout
    out = env.run("mcp", "stop").stdout
    assert out.startswith(f"qmdd (pid {pid}) was not started by `qmdctl mcp --http`: left running")
    assert env.daemon_pid() == pid and not wait_for_exit(pid, 0.2)

    # A record naming a daemon that is gone (a crash, a `daemon stop`) is stale: removed, nothing stopped.
    record = env.paths.data_dir / "mcp-http.pid"
    record.write_text("999999\n")
    record.chmod(0o600)
    assert "left running" in env.run("mcp", "stop").stdout
    assert not record.exists() and env.daemon_pid() == pid


def test_unknown_action(env: Env) -> None:
    proc = env.run("mcp", "restart", check=False)
    assert proc.returncode == 10 and "unknown mcp action 'restart'" in proc.stderr
    assert not env.paths.data_dir.exists()
