"""The daemon's own files: planted links are replaced, never followed; a full disk does not keep it from
serving; and a client finds the daemon of its index wherever that one listens."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmdd.protocol.errors import ErrorCode
from tests.conftest import Env


def test_planted_links_in_place_of_the_lock_pid_and_address_files_are_not_followed(env: Env, tmp_path: Path) -> None:
    paths = env.paths
    for directory in (paths.runtime_dir, paths.data_dir):
        directory.mkdir(parents=True)
        directory.chmod(0o777)  # writable by anyone for a while, long enough to plant links
    victims = {}
    for planted in (paths.lock_file, paths.pid_file, paths.index_lock, paths.address_file, paths.socket):
        victim = tmp_path / f"victim-of-{planted.parent.name}-{planted.name}"
        victim.write_text("precious\n")
        victims[victim] = planted
        planted.symlink_to(victim)
    hard_linked = tmp_path / "hard-linked-victim"
    hard_linked.write_text("precious\n")
    paths.index_lock.unlink()
    os.link(hard_linked, paths.index_lock)
    for directory in (paths.runtime_dir, paths.data_dir):
        directory.chmod(0o700)  # closed again: a client refuses a socket dir others can write to

    env.run("daemon", "start")
    for victim in [*victims, hard_linked]:
        assert victim.read_text() == "precious\n", victim.name
    pid = env.daemon_pid()
    for own in (paths.lock_file, paths.pid_file, paths.index_lock, paths.address_file):
        assert not own.is_symlink() and own.stat().st_nlink == 1, own
    assert paths.address_file.read_text() == f"{paths.socket}\n"
    assert json.loads(env.run("daemon", "stop", "--json").stdout) == {"running": False, "stopped": True, "pid": pid}


@pytest.fixture
def full_runtime_dir(env: Env) -> Iterator[Path]:
    """A tiny tmpfs for $XDG_RUNTIME_DIR (it is one, /run/user/UID, and it can fill up)."""
    mount_point = env.home / "xdg-run"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def _xdg_env(env: Env, runtime_dir: Path) -> Env:
    """A client environment without QMDD_HOME: the XDG dirs decide, as for most users."""
    variables = {k: v for k, v in env.vars.items() if k != "QMDD_HOME"}
    variables.update(XDG_DATA_HOME=str(env.home / "share"), XDG_CONFIG_HOME=str(env.home / "config"),
                     XDG_CACHE_HOME=str(env.home / "cache"), XDG_RUNTIME_DIR=str(runtime_dir))
    return Env(env.home, variables)


def _fill(directory: Path) -> None:
    with contextlib.suppress(OSError), open(directory / "filler", "wb", buffering=0) as filler:
        while True:  # until ENOSPC
            filler.write(b"\0" * 4096)


def test_the_daemon_starts_and_serves_reads_when_its_runtime_dir_is_full(env: Env, full_runtime_dir: Path,
                                                                         notes: Path) -> None:
    user = _xdg_env(env, full_runtime_dir)
    try:
        user.run("collection", "add", str(notes), "--name", "notes")
        user.run("daemon", "stop")
        _fill(full_runtime_dir)
        assert user.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"
        assert "could not write" in user.paths.log_file.read_text()
        assert not user.paths.pid_file.exists()  # no stale pid file: none rather than a wrong one
        stopped = json.loads(user.run("daemon", "stop", "--json").stdout)
        assert stopped["stopped"] is True  # the pid from the instance lock, written where the old one was
    finally:
        user.run("daemon", "stop", check=False)


@pytest.fixture
def two_runtime_dirs(env: Env) -> Iterator[tuple[Env, Env]]:
    """A daemon started from a shell (runtime dir r1) and a client whose environment gives another
    runtime dir (r2; an MCP client without XDG_RUNTIME_DIR gets /tmp/qmdd-UID): same index."""
    short = Path(tempfile.mkdtemp(prefix="qmdd-rt-", dir="/tmp"))
    shell, agent = _xdg_env(env, short / "r1"), _xdg_env(env, short / "r2")
    for side in (shell, agent):
        side.vars["QMDD_START_TIMEOUT"] = "120"  # "fails at once" must not mean "after the timeout"
    try:
        yield shell, agent
    finally:
        for side in (shell, agent):
            side.run("daemon", "stop", check=False)
        shutil.rmtree(short, ignore_errors=True)


def test_a_client_with_another_runtime_dir_finds_the_daemon_of_its_index(two_runtime_dirs: tuple[Env, Env],
                                                                        notes: Path) -> None:
    shell, agent = two_runtime_dirs
    shell.run("collection", "add", str(notes), "--name", "notes")
    pid = json.loads(shell.run("daemon", "status", "--json").stdout)["pid"]
    assert agent.json("search", "gnome-screenshot", "-c", "notes")[0]["file"] == "qmd://notes/alpha.md"
    assert json.loads(agent.run("daemon", "status", "--json").stdout)["pid"] == pid
    assert "DAEMON_RUNNING" not in shell.paths.log_file.read_text()  # no second daemon was even tried

    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    bridge = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "mcp"], env=agent.vars, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert bridge.stdin is not None and bridge.stdout is not None
    try:
        bridge.stdin.write(json.dumps(initialize) + "\n")
        bridge.stdin.flush()
        assert select.select([bridge.stdout], [], [], 60)[0], "the MCP bridge did not answer"
        assert json.loads(bridge.stdout.readline())["result"]["serverInfo"]
    finally:
        bridge.stdin.close()
        bridge.wait(30)
    assert json.loads(agent.run("daemon", "stop", "--json").stdout)["pid"] == pid


def test_an_auto_start_refused_by_the_daemon_of_the_index_fails_at_once(two_runtime_dirs: tuple[Env, Env]) -> None:
    shell, agent = two_runtime_dirs
    shell.run("daemon", "start")
    shell.paths.address_file.unlink(missing_ok=True)  # as a daemon of an older qmdd, which recorded no address
    proc = agent.run("status", check=False, timeout=60)
    assert proc.returncode == ErrorCode.DAEMON_START_FAILED.spec.exit_code, proc.stderr
    assert "DAEMON_RUNNING" in proc.stderr and "using the index" in proc.stderr
    assert "exited with status" in proc.stderr  # not "did not answer within 120s"
