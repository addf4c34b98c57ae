"""systemd: the units `qmdctl service install` writes pass `systemd-analyze verify`; the real daemon
speaks sd_notify (READY, WATCHDOG, STATUS, STOPPING) to a socket the test binds, and serves on a
socket passed the way systemd's socket activation passes it; `qmdctl service install|status|uninstall`
work with and without a user manager (a stand-in `systemctl` plays the manager)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from jsonschema import Draft202012Validator

from qmdctl.spec import find_command
from qmdctl.units import DEFAULT_WATCHDOG_S, SERVICE, SOCKET, UnitOptions, render
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.transports import systemd
from tests.conftest import Env, exited

REPO = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "anel"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$2" in
    is-enabled) echo enabled ;;
    is-active) echo active ;;
    enable) if [ -n "$FAKE_SYSTEMCTL_FAIL" ]; then echo "Failed to enable unit: boom" >&2; exit 1; fi ;;
esac
exit 0
"""


# --- helpers ------------------------------------------------------------------------------------------

class NotifyReceiver:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket that collects sd_notify messages."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    def wait_for(self, field: str, timeout: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next(remaining)
            if message is not None and field in message:
                return message
        raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")

    def collect(self, seconds: float) -> list[dict[str, str]]:
        got = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.next(remaining)
            if message is not None:
                got.append(message)
        return got


def spawn_daemon(env: Env, extra: dict[str, str], argv: list[str] | None = None,
                 preexec_fn: Callable[[], object] | None = None, pass_fds: tuple[int, ...] = ()
                 ) -> subprocess.Popen[bytes]:
    with open(env.home / "daemon.log", "ab") as log:
        return subprocess.Popen(argv or [sys.executable, "-m", "qmdd"], env={**env.vars, **extra},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=preexec_fn,
                                pass_fds=pass_fds)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons a test spawned itself: killed and reaped whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def ping(env: Env) -> int:
    with env.client() as client:
        return int(client.call("ping")["pid"])


def wait_serving(env: Env, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until a daemon answers on its socket (the client itself would start one instead of waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with env.client() as client:
            if client.try_connect():
                return
        assert proc.poll() is None, (env.home / "daemon.log").read_text()
        time.sleep(0.05)
    raise AssertionError(f"no daemon answered within {timeout}s")


def activated(env: Env, sock: socket.socket, listen_pid: str = "$$") -> subprocess.Popen[bytes]:
    """The daemon as systemd starts it for a socket unit: the socket as fd 3, LISTEN_FDS=1 and LISTEN_PID
    (set by the shell that execs the daemon, so that it is the daemon's own pid)."""
    fd = sock.fileno()
    return spawn_daemon(env, {"LISTEN_FDS": "1"},
                        argv=["sh", "-c", f'LISTEN_PID={listen_pid} exec "$0" -m qmdd', sys.executable],
                        preexec_fn=lambda: os.dup2(fd, 3), pass_fds=(3,))


def listening_socket(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    return sock


def service_env(env: Env, tmp_path: Path, fake_systemctl: bool = False) -> dict[str, str]:
    """qmdctl's environment for `service` commands: units under tmp_path, and a `systemctl --user` that
    can never reach the real user manager (an empty XDG_RUNTIME_DIR, no session bus) or a stand-in."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    variables = {k: v for k, v in env.vars.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    variables.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_RUNTIME_DIR=str(runtime))
    if fake_systemctl:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
        (bin_dir / "systemctl").chmod(0o755)
        variables.update(PATH=f"{bin_dir}:{variables.get('PATH', '')}", FAKE_SYSTEMCTL_LOG=str(tmp_path / "calls"))
    return variables


def qmdctl(variables: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qmdctl.main", *args], env=variables, capture_output=True,
                          text=True, timeout=120)


def qmdctl_json(variables: dict[str, str], *args: str) -> Any:
    proc = qmdctl(variables, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    value = json.loads(proc.stdout)
    found = find_command(list(args))
    assert found is not None
    spec = json.loads((FIXTURES / f"{found[0].slug}.json").read_text(encoding="utf-8"))
    schema = spec["dry_run_output"] if "--dry-run" in args else spec["output"]
    errors = list(Draft202012Validator(schema).iter_errors(value))
    assert not errors, [e.message for e in errors]
    return value


def unit_dir(variables: dict[str, str]) -> Path:
    return Path(variables["XDG_CONFIG_HOME"]) / "systemd" / "user"


# --- the units ----------------------------------------------------------------------------------------

def systemd_verify(tmp_path: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    # `--user` needs a runtime dir of its own to set up a (never started) user manager in.
    runtime = tmp_path / "verify-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "--user", "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("flags", [(), ("--no-socket", "--watchdog", "0"), ("--http", "[::1]:8181")],
                         ids=["socket", "no-socket", "http"])
def test_installed_units_pass_systemd_analyze_verify(env: Env, tmp_path: Path, flags: tuple[str, ...]) -> None:
    baseline_dir = tmp_path / "baseline"
    baseline_dir.mkdir()
    (baseline_dir / "baseline.service").write_text("[Service]\nExecStart=/bin/sh -c true\n")
    baseline = systemd_verify(tmp_path, baseline_dir / "baseline.service")
    if baseline.returncode != 0:
        pytest.skip(f"systemd-analyze --user verify cannot run here: {baseline.stderr.strip()}")

    # A home with a space and a % (a specifier unless escaped) in its name.
    odd_home = env.home / "my notes 100%"
    variables = {**service_env(env, tmp_path), "QMDD_HOME": str(odd_home)}
    installed = qmdctl_json(variables, "service", "install", "--no-start", *flags)
    paths = [Path(unit["path"]) for unit in installed["units"]]
    assert [p.name for p in paths] == ([SERVICE] if flags else [SERVICE, SOCKET])
    verified = systemd_verify(tmp_path, *paths)
    complaints = [line for line in verified.stderr.splitlines() if "qmdd" in line]
    assert verified.returncode == 0 and not complaints, verified.stderr
    service = paths[0].read_text()
    http = f' --http "{flags[1]}"' if "--http" in flags else ""
    assert f"ExecStart={sys.executable} -m qmdd{http}\n" in service
    assert f'Environment="QMDD_HOME={str(odd_home).replace("%", "%%")}"\n' in service
    if "--no-socket" in flags:
        assert "WatchdogSec" not in service
    else:
        assert f"WatchdogSec={DEFAULT_WATCHDOG_S}\n" in service
    if not flags:
        socket_unit = paths[1].read_text()
        assert f"ListenStream={str(odd_home).replace('%', '%%')}/run/qmdd.sock\n" in socket_unit
        assert "SocketMode=0600\n" in socket_unit and "DirectoryMode=0700\n" in socket_unit


def test_reference_units_are_the_rendered_ones() -> None:
    """systemd/ holds the units for /usr/bin/python3 and the default paths, socket under %t as qmdd.paths puts it."""
    for name, text in render("/usr/bin/python3", {}, UnitOptions()).items():
        assert (REPO / "systemd" / name).read_text() == text, f"systemd/{name} is stale: regenerate it"
    socket_unit = (REPO / "systemd" / SOCKET).read_text()
    assert "ListenStream=%t/qmdd/qmdd.sock\n" in socket_unit  # qmdd.paths: $XDG_RUNTIME_DIR/qmdd/qmdd.sock
    service = (REPO / "systemd" / SERVICE).read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "StandardError=journal",
                 "ExecStart=/usr/bin/python3 -m qmdd"):
        assert f"\n{line}\n" in service
    found = find_command(["service", "install"])
    assert found is not None
    assert next(o for o in found[0].opts if o.name == "watchdog").default == DEFAULT_WATCHDOG_S


def test_unit_options_round_trip_through_the_header() -> None:
    for options in (UnitOptions(), UnitOptions(socket=False), UnitOptions(watchdog_s=0), UnitOptions(False, 5),
                    UnitOptions(http="127.0.0.1:8181"), UnitOptions(watchdog_s=5, http="[::1]:80")):
        text = render("/usr/bin/python3", {}, options)[SERVICE]
        parsed = UnitOptions.from_header(text)
        assert parsed is not None and (parsed.socket, parsed.watchdog_s, parsed.http) == \
            (options.socket, options.watchdog_s, options.http)
    assert UnitOptions.from_header("[Unit]\n") is None
    assert not UnitOptions(http="127.0.0.1:8181").socket  # the port must be served from login on
    with pytest.raises(QmddError, match="HOST:PORT"):
        UnitOptions(http="127.0.0.1:8181\nExecStartPre=/bin/evil")


# --- sd_notify ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_daemon_notifies_ready_watchdog_status_and_stopping(env: Env, abstract: bool,
                                                             daemons: list[subprocess.Popen[bytes]]) -> None:
    name = f"qmdd-test-notify-{os.getpid()}-{env.home.name}"
    receiver = NotifyReceiver("\0" + name if abstract else str(env.home / "notify.sock"))
    # The abstract case also names another process as the watched one: then the daemon must not ping.
    extra = {"NOTIFY_SOCKET": "@" + name if abstract else str(env.home / "notify.sock"), "WATCHDOG_USEC": "200000",
             **({"WATCHDOG_PID": "1"} if abstract else {})}
    proc = spawn_daemon(env, extra)
    daemons.append(proc)

    ready = receiver.wait_for("READY")
    assert ready["READY"] == "1" and ready["STATUS"] == "serving 0 collections"
    assert ping(env) == proc.pid  # at READY=1 the socket answers: no retry, no wait
    assert receiver.messages[0] is ready  # nothing before it
    later = receiver.collect(1.0)
    pings = [m for m in later if m.get("WATCHDOG") == "1"]
    if abstract:
        assert not pings, later
    else:
        assert len(pings) >= 3, later  # every 0.1 s: half of WATCHDOG_USEC

    proc.send_signal(signal.SIGTERM)
    stopping = receiver.wait_for("STOPPING")
    assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
    assert proc.wait(timeout=30) == 0


def test_status_follows_the_collections(env: Env, notes: Path, daemons: list[subprocess.Popen[bytes]]) -> None:
    receiver = NotifyReceiver(str(env.home / "notify.sock"))
    daemons.append(spawn_daemon(env, {"NOTIFY_SOCKET": str(env.home / "notify.sock"), "WATCHDOG_USEC": "100000"}))
    receiver.wait_for("READY")
    env.run("collection", "add", str(notes), "--name", "notes")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if receiver.wait_for("WATCHDOG").get("STATUS") == "serving 1 collection":
            break
    else:
        raise AssertionError(receiver.messages)


def test_a_status_change_met_by_a_full_manager_queue_is_sent_later(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The race behind a flaky "serving 1 collection": while the test ran `collection add` nobody read the
    # notify socket, its queue (net.unix.max_dgram_qlen, 10 by default) filled with WATCHDOG pings, the
    # STATUS change was dropped with a timed-out send (the event loop stalled a second meanwhile) and,
    # counted as reported, never sent again.
    receiver = NotifyReceiver(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    status = ["serving 0 collections"]
    stalls: list[float] = []

    async def main() -> None:
        with trio.fail_after(10):
            await inform()

    async def inform() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(systemd.keep_manager_informed, lambda: status[0])
            await trio.sleep(0.5)  # far more pings than the queue holds: it is full now
            status[0] = "serving 1 collection"
            for _ in range(30):  # the loop keeps its pace: no send waits for the manager
                before = trio.current_time()
                await trio.sleep(0.005)
                stalls.append(trio.current_time() - before)
            received = await trio.to_thread.run_sync(receiver.collect, 0.3)
            nursery.cancel_scope.cancel()
        assert any(m.get("STATUS") == "serving 1 collection" for m in received), receiver.messages

    trio.run(main)
    assert max(stalls) < 0.5


def test_status_reports_a_degraded_daemon(env: Env, daemons: list[subprocess.Popen[bytes]]) -> None:
    receiver = NotifyReceiver(str(env.home / "notify.sock"))
    # Every search crashes the BM25 actor, until the supervisor gives up on it.
    daemons.append(spawn_daemon(env, {"NOTIFY_SOCKET": str(env.home / "notify.sock"), "WATCHDOG_USEC": "100000",
                                      "QMDD_FAULTS": "actor.bm25.Bm25Query=100"}))
    receiver.wait_for("READY")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        env.run("search", "anything", check=False)
        if any(m.get("STATUS") == "degraded: actor bm25 failed" for m in receiver.collect(0.3)):
            break
    else:
        raise AssertionError(receiver.messages)


def test_without_a_manager_nothing_is_sent_and_listen_vars_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not a Unix socket: refused, not crashed
    assert systemd.notify("READY=1") is False
    # Variables meant for another process (a parent's, leaked): ignored, and removed for our children.
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "qmdd.socket")
    assert systemd.listen_fds() == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_period() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_period() is None


def test_journal_lines_carry_their_priority() -> None:
    formatter = systemd.JournalFormatter()
    record = logging.LogRecord("qmdd.x", logging.ERROR, __file__, 1, "broken %s", ("thing",), None)
    record.trace_id = "t1"
    assert formatter.format(record) == "<3>qmdd.x [t1] broken thing"
    record.levelno = logging.DEBUG
    assert formatter.format(record).startswith("<7>")


# --- socket activation --------------------------------------------------------------------------------

def test_socket_activation_serves_on_the_passed_socket_and_leaves_it(env: Env,
                                                                     daemons: list[subprocess.Popen[bytes]]) -> None:
    path = env.paths.socket
    sock = listening_socket(path)
    os.chmod(path, 0o600)
    before = path.stat()
    proc = activated(env, sock)
    daemons.append(proc)
    # A client connects before the daemon accepts (systemd queues it): answered once the daemon is up.
    assert env.json("daemon", "status")["pid"] == proc.pid
    assert env.json("status")["collections"] == []
    assert ping(env) == proc.pid

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    after = path.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)  # neither replaced nor removed
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(path))  # still systemd's (here: the test's) listening socket
    probe.close()
    log = (env.home / "daemon.log").read_text()
    assert "socket activation" in log and "qmdd stopped" in log
    sock.close()


def test_socket_activation_for_another_pid_is_ignored(env: Env, daemons: list[subprocess.Popen[bytes]]) -> None:
    other = listening_socket(env.home / "other.sock")
    proc = activated(env, other, listen_pid="1")
    daemons.append(proc)
    wait_serving(env, proc)
    assert env.json("daemon", "status")["pid"] == proc.pid  # on the socket it bound itself
    other.settimeout(0.2)
    with pytest.raises(TimeoutError):
        other.accept()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not env.paths.socket.exists()  # its own socket: removed as usual
    other.close()


@pytest.mark.parametrize("kind", ["not-listening", "datagram"])
def test_a_passed_socket_that_cannot_serve_is_a_config_error(env: Env, kind: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if kind == "datagram" else socket.SOCK_STREAM)
    sock.bind(str(env.home / "bad.sock"))
    proc = activated(env, sock)
    assert proc.wait(timeout=60) == ErrorCode.CONFIG_ERROR.spec.exit_code
    assert "not a listening Unix stream socket" in (env.home / "daemon.log").read_text()
    sock.close()


# --- qmdctl service -----------------------------------------------------------------------------------

def test_service_install_status_uninstall_without_a_user_manager(env: Env, tmp_path: Path) -> None:
    variables = service_env(env, tmp_path)
    units = unit_dir(variables)

    plan = qmdctl_json(variables, "service", "install", "--dry-run")
    assert str(units / SERVICE) in plan["action"] and "enable --now qmdd.socket" in plan["action"]
    assert not (tmp_path / "config").exists()  # a dry run writes nothing

    installed = qmdctl_json(variables, "service", "install")
    assert [u["name"] for u in installed["units"]] == [SERVICE, SOCKET]
    assert all(u["changed"] for u in installed["units"])
    assert installed["exec_start"] == f"{sys.executable} -m qmdd"
    assert f"ExecStart={sys.executable} -m qmdd\n" in (units / SERVICE).read_text()
    assert f"ListenStream={env.paths.socket}\n" in (units / SOCKET).read_text()
    # No manager answers: the command succeeds, says why, and what is left to run.
    assert installed["reason"] and "systemctl --user daemon-reload" in installed["to_run"]
    assert any(line.endswith("qmdd.socket") for line in installed["to_run"])
    if installed["ran"]:  # systemctl could enable the socket on the files alone
        assert installed["ran"] == ["systemctl --user enable qmdd.socket"]
        assert (units / "sockets.target.wants" / SOCKET).is_symlink()
    text = qmdctl(variables, "service", "install")
    assert text.returncode == 0 and "unchanged" in text.stdout and "run these" in text.stdout

    status = qmdctl_json(variables, "service", "status")
    assert status["installed"] and status["current"] and status["socket_activation"]
    assert [u["name"] for u in status["units"]] == [SERVICE, SOCKET]
    with (units / SERVICE).open("a") as f:
        f.write("# edited by hand\n")
    edited = qmdctl_json(variables, "service", "status")
    assert not edited["current"] and not edited["units"][0]["current"] and edited["units"][1]["current"]
    assert "outdated" in qmdctl(variables, "service", "status").stdout

    # Without socket activation: the socket unit goes, the service changes.
    switched = qmdctl_json(variables, "service", "install", "--no-socket")
    assert [u["name"] for u in switched["units"]] == [SERVICE] and not (units / SOCKET).exists()
    assert not (units / "sockets.target.wants" / SOCKET).exists()
    assert "WantedBy=default.target\n" in (units / SERVICE).read_text()
    assert qmdctl_json(variables, "service", "status")["current"]

    # With the HTTP door: on ExecStart, and status compares against an --http install.
    served = qmdctl_json(variables, "service", "install", "--http", "127.0.0.1:8181")
    assert served["exec_start"] == f"{sys.executable} -m qmdd --http 127.0.0.1:8181" and not served["socket_activation"]
    assert f'ExecStart={sys.executable} -m qmdd --http "127.0.0.1:8181"\n' in (units / SERVICE).read_text()
    assert qmdctl_json(variables, "service", "status")["current"]
    refused = qmdctl(variables, "service", "install", "--http", "8181")
    assert refused.returncode == ErrorCode.INVALID_INPUT.spec.exit_code
    qmdctl_json(variables, "service", "install", "--no-socket")

    assert qmdctl_json(variables, "service", "uninstall", "--dry-run")["action"].startswith("run `systemctl")
    assert (units / SERVICE).exists()
    removed = qmdctl_json(variables, "service", "uninstall")
    assert removed["removed"] == [str(units / SERVICE)] and not (units / SERVICE).exists()
    assert not (units / "default.target.wants" / SERVICE).exists()
    assert "systemctl --user daemon-reload" in removed["to_run"]
    again = qmdctl_json(variables, "service", "uninstall")
    assert again["removed"] == [] and again["to_run"] == []
    status = qmdctl_json(variables, "service", "status")
    assert not status["installed"] and not any(u["installed"] for u in status["units"])
    assert not env.paths.runtime_dir.exists()  # no daemon was contacted or started throughout


def test_service_install_with_a_user_manager_hands_over_the_running_daemon(env: Env, tmp_path: Path) -> None:
    variables = service_env(env, tmp_path, fake_systemctl=True)
    calls = tmp_path / "calls"
    env.run("daemon", "start")
    pid = env.daemon_pid()
    assert pid is not None

    installed = qmdctl_json(variables, "service", "install")
    assert installed["stopped_pid"] == pid and installed["to_run"] == [] and installed["reason"] is None
    assert exited(pid)  # stopped, else systemd's daemon would find the index taken
    assert installed["ran"] == ["systemctl --user daemon-reload", "systemctl --user enable --now qmdd.socket"]
    assert calls.read_text().splitlines()[-2:] == ["--user daemon-reload", "--user enable --now qmdd.socket"]

    status = qmdctl_json(variables, "service", "status")
    assert all(u["enabled"] == "enabled" and u["active"] == "active" for u in status["units"])

    # A changed unit is restarted: enable --now alone would leave it on its old settings.
    changed = qmdctl_json(variables, "service", "install", "--watchdog", "5")
    assert changed["ran"][-1] == "systemctl --user restart qmdd.socket" and changed["stopped_pid"] is None
    assert "WatchdogSec=5\n" in (unit_dir(variables) / SERVICE).read_text()
    assert qmdctl_json(variables, "service", "status")["current"]

    failing = qmdctl({**variables, "FAKE_SYSTEMCTL_FAIL": "1"}, "service", "install", "--no-start", "--json")
    assert failing.returncode == ErrorCode.CONFIG_ERROR.spec.exit_code
    problem = json.loads(failing.stderr)
    assert problem["code"] == "CONFIG_ERROR" and "boom" in problem["detail"] and problem["recovery_hints"]
    assert qmdctl(variables, "service", "install", "--watchdog", "-1").returncode == \
        ErrorCode.USAGE_ERROR.spec.exit_code

    removed = qmdctl_json(variables, "service", "uninstall")
    assert removed["ran"] == ["systemctl --user disable --now qmdd.socket qmdd.service",
                              "systemctl --user daemon-reload"]
    assert removed["removed"] and not list(unit_dir(variables).glob("qmdd.*"))


def test_the_worker_unit_runs_qmdd_worker_and_passes_verify(tmp_path: Path) -> None:
    """systemd/qmdd-worker.service (README, NATS pool): `qmdd worker` on QMDD_NATS from its EnvironmentFile."""
    unit = (REPO / "systemd" / "qmdd-worker.service").read_text()
    for line in ("ExecStart=/usr/bin/python3 -m qmdd worker --nats ${QMDD_NATS}",
                 "EnvironmentFile=%h/.config/qmdd/worker.env", "Restart=on-failure", "RestartPreventExitStatus=24",
                 "WantedBy=default.target"):
        assert f"\n{line}\n" in unit
    assert ErrorCode.CONFIG_ERROR.spec.exit_code == 24 and ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code != 24
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    home = tmp_path / "home"
    (home / ".config" / "qmdd").mkdir(parents=True)
    (home / ".config" / "qmdd" / "worker.env").write_text("QMDD_NATS=nats://127.0.0.1:4222\n")
    copy = tmp_path / "qmdd-worker.service"
    copy.write_text(unit.replace("/usr/bin/python3", sys.executable))
    runtime = tmp_path / "verify-runtime"
    runtime.mkdir(mode=0o700)
    verified = subprocess.run([SYSTEMD_ANALYZE, "--user", "verify", str(copy)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)})
    if verified.returncode != 0 and "Failed to" in verified.stderr and "qmdd-worker" not in verified.stderr:
        pytest.skip(f"systemd-analyze --user verify cannot run here: {verified.stderr.strip()}")
    assert verified.returncode == 0 and "qmdd-worker" not in verified.stderr, verified.stderr
