"""The client against a hostile neighbour: it runs nothing from the caller's directory in the daemon it
starts, talks to no socket or server of another user, never says a live daemon is gone, and turns a bad
timeout in its environment into a typed error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmdctl import client as qmdctl_client
from qmdctl.commands import daemon as daemon_command
from qmdctl.main import main as qmdctl_main
from qmdctl.units import SERVICE, UnitOptions, render
from qmdd.paths import ensure_private_dir
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode
from qmdd.protocol.wire import hello
from tests.conftest import Env, exited

NOBODY = 65534
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _environ_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in entries if e)


def test_an_auto_started_daemon_runs_nothing_from_the_callers_directory(env: Env, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    for module in ("trio", "mcp"):  # what the daemon imports first, and what its MCP preload imports
        (workdir / f"{module}.py").write_text(f"open({str(tmp_path / module)!r} + '.ran', 'w').close()\n")
    caller = Env(env.home, {**env.vars, "AGENT_IDENTITY_TOKEN": "token-of-the-caller",
                            "PYTHONPATH": str(workdir), "SHELL_SECRET": "s3cret"})
    caller.run("status", cwd=workdir)
    pid = caller.daemon_pid()
    assert pid is not None
    caller.run("status", cwd=workdir)  # the MCP preload has run by now, or is running in a thread
    assert not list(tmp_path.glob("*.ran"))
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    environ = _environ_of(pid)
    assert environ["QMDD_HOME"] == str(env.home)
    assert not {"AGENT_IDENTITY_TOKEN", "PYTHONPATH", "SHELL_SECRET"} & environ.keys()


def test_the_service_unit_runs_the_daemon_from_the_root_directory() -> None:
    service = render("/usr/bin/python3", {}, UnitOptions())[SERVICE]
    assert "\nWorkingDirectory=/\n" in service


class Impostor:
    """Another user's server on the victim's socket path: it answers like a daemon, and says it is pid 1."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.connections = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5)
                framing.recv_frame(conn)
                framing.send_frame(conn, hello("server", pid=1))
                frame = framing.recv_frame(conn)
                framing.send_frame(conn, {"type": "res", "id": frame["id"],
                                          "result": {"pid": 1, "results": [], "docs": "\x1b]0;owned\x07"}})

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture(params=["another user's", "world-writable"])
def impostor(request: pytest.FixtureRequest, env: Env) -> Iterator[Impostor]:
    run_dir = env.paths.runtime_dir
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o777)
    server = Impostor(env.paths.socket)
    if request.param == "another user's":
        os.chown(run_dir, NOBODY, NOBODY)
        os.chown(env.paths.socket, NOBODY, NOBODY)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("command", [("search", "x"), ("daemon", "start"), ("daemon", "stop"), ("mcp",)])
def test_the_client_sends_nothing_to_a_socket_in_a_directory_others_control(
        env: Env, impostor: Impostor, command: tuple[str, ...]) -> None:
    victim = Env(env.home, {**env.vars, "AGENT_IDENTITY_TOKEN": "token-of-the-victim"})
    if command == ("mcp",):
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        proc = subprocess.run([sys.executable, "-m", "qmdctl.main", "mcp"], env=victim.vars, input=json.dumps(
            initialize) + "\n", capture_output=True, text=True, timeout=60)
        assert "PERMISSION_DENIED" in json.loads(proc.stdout)["error"]["message"]
    else:
        proc = victim.run(*command, check=False, timeout=60)
        assert proc.returncode == ErrorCode.PERMISSION_DENIED.spec.exit_code, proc.stdout + proc.stderr
        assert "hint:" in proc.stderr and "already running" not in proc.stdout
    assert impostor.connections == 0


IMPOSTOR_OF_ANOTHER_UID = """
import os, socket, sys
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])  # as root, in the victim's own private dir: the socket file is the victim's
os.setgid(65534)
os.setuid(65534)
server.listen(8)  # the kernel records the listener's credentials here: uid 65534
print("listening", flush=True)
server.settimeout(20)
conn, _ = server.accept()
conn.settimeout(2)
received = b""
try:
    while chunk := conn.recv(65536):
        received += chunk
except TimeoutError:
    pass
print(len(received), flush=True)
"""


def test_the_client_sends_nothing_to_a_server_of_another_uid(env: Env) -> None:
    """What no file check can catch (a socket of ours, in our private dir, swapped or bound by a process
    that now runs as someone else): the kernel's word on the listener's uid, SO_PEERCRED."""
    ensure_private_dir(env.paths.runtime_dir)
    server = subprocess.Popen([sys.executable, "-c", IMPOSTOR_OF_ANOTHER_UID, str(env.paths.socket)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "listening\n"
        proc = env.run("search", "x", check=False, timeout=60)
        assert proc.returncode == ErrorCode.PERMISSION_DENIED.spec.exit_code, proc.stdout + proc.stderr
        assert "uid 65534" in proc.stderr
        assert server.stdout.readline() == "0\n"  # it got a connection, and not one byte
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize(("name", "value"), [("QMDD_TIMEOUT", "abc"), ("QMDD_START_TIMEOUT", "-1"),
                                              ("QMDD_START_TIMEOUT", "nan")])
def test_a_bad_timeout_in_the_environment_is_a_config_error(env: Env, name: str, value: str) -> None:
    proc = Env(env.home, {**env.vars, name: value}).run("status", check=False)
    assert proc.returncode == ErrorCode.CONFIG_ERROR.spec.exit_code, proc.stderr
    assert f"CONFIG_ERROR: {name} must be" in proc.stderr and "Traceback" not in proc.stderr


def _sigterm_pending(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


def test_stop_signals_a_daemon_that_does_not_answer_and_waits_for_it(env: Env) -> None:
    env.run("daemon", "start")
    pid = env.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # stuck: it accepts connections (the backlog) and answers nothing
    try:
        stop = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "daemon", "stop", "--json"],
                                env={**env.vars, "QMDD_START_TIMEOUT": "1"}, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not _sigterm_pending(pid) and stop.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sigterm_pending(pid), "daemon stop did not signal the stuck daemon"
    finally:
        os.kill(pid, signal.SIGCONT)  # it wakes up to the SIGTERM and shuts down gracefully
    out, _ = stop.communicate(timeout=60)
    assert stop.returncode == 0
    assert json.loads(out) == {"running": False, "stopped": True, "pid": pid}
    assert exited(pid)


def test_stop_never_says_a_live_daemon_is_gone(env: Env, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    env.run("daemon", "start")
    pid = env.daemon_pid()
    assert pid is not None
    for name in [n for n in os.environ if n.startswith(("QMDD_", "XDG_"))]:
        monkeypatch.delenv(name)
    for name, value in env.vars.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(qmdctl_client, "START_TIMEOUT_S", 1.0)
    monkeypatch.setattr(daemon_command, "STOP_TIMEOUT_S", 0.5)
    os.kill(pid, signal.SIGSTOP)  # stuck for good: it cannot even take the SIGTERM
    try:
        status = qmdctl_main(["daemon", "stop", "--json"])
    finally:
        os.kill(pid, signal.SIGCONT)
    problem = json.loads(capsys.readouterr().err)
    assert status == ErrorCode.TIMEOUT.spec.exit_code, problem
    assert str(pid) in problem["detail"] and f"kill -KILL {pid}" in " ".join(problem["recovery_hints"])
