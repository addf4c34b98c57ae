"""The daemon at the edges of its resources: few file descriptors, a full disk, a lost WAL."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmdd.consistency import check_index
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode
from qmdd.protocol.wire import hello
from tests.conftest import Env, OwnDaemon

DESCRIPTOR_LIMIT = 256


@pytest.fixture
def daemon(env: Env) -> Iterator[OwnDaemon]:
    own = OwnDaemon(env)
    try:
        yield own
    finally:
        if own.proc is not None:
            own.kill()


def greeted(env: Env) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)  # a daemon out of descriptors never answers the hello: fail, do not hang
    sock.connect(str(env.paths.socket))
    framing.send_frame(sock, hello("client"))
    assert framing.recv_frame(sock)["type"] == "hello"
    return sock


def mcp_initialize(env: Env) -> dict[str, Any]:
    """One MCP initialize through the real bridge, `qmdctl mcp` (stdin stays open until it answers:
    at EOF the bridge ends its session)."""
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
    with subprocess.Popen([sys.executable, "-m", "qmdctl.main", "mcp"], env=env.vars, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as bridge:
        assert bridge.stdin is not None and bridge.stdout is not None
        timer = threading.Timer(60, bridge.kill)  # a bridge that never answers fails the test, not hangs it
        timer.start()
        try:
            bridge.stdin.write(line + "\n")
            bridge.stdin.flush()
            reply = bridge.stdout.readline()
            bridge.stdin.close()
        finally:
            timer.cancel()
    answer: dict[str, Any] = json.loads(reply or "{}")
    return answer


def test_idle_connections_at_a_low_descriptor_limit_never_starve_requests_or_mcp(env: Env, daemon: OwnDaemon
                                                                                 ) -> None:
    daemon.start(descriptor_limit=DESCRIPTOR_LIMIT)
    idle_descriptors = daemon.descriptors()
    held = [greeted(env) for _ in range(360)]
    try:
        with daemon.client() as client:
            status = client.call("status")
        rpc = status["rpc"]
        # Within the cap, with room left for the daemon's own files; the oldest idle ones were closed.
        assert rpc["max_connections"] < DESCRIPTOR_LIMIT - idle_descriptors
        assert rpc["open_connections"] <= rpc["max_connections"]
        assert rpc["evicted_connections"] >= 360 - rpc["max_connections"]
        assert daemon.descriptors() < DESCRIPTOR_LIMIT - 32
        # The oldest connection was told why it was closed, with a typed error.
        frame = framing.recv_frame(held[0])
        assert frame["type"] == "err" and frame["error"]["code"] == str(ErrorCode.BACKEND_UNAVAILABLE)
        assert "idle" in frame["error"]["message"]
        # The newest ones still serve.
        framing.send_frame(held[-1], {"type": "req", "id": 1, "method": "ping", "params": {}})
        assert framing.recv_frame(held[-1])["result"]["pong"] is True
        answer = mcp_initialize(env)
        assert answer.get("result", {}).get("serverInfo", {}).get("name") == "qmdd", answer
    finally:
        for sock in held:
            sock.close()
    log = daemon.log()
    assert "EMFILE" not in log and "Too many open files" not in log and "MCP support unavailable" not in log
    daemon.stop()


def test_start_up_objects_are_frozen_once_the_daemon_settles(env: Env, daemon: OwnDaemon) -> None:
    """A full collection walks every object the collector tracks, with the event loop held: the ~140k
    that start-up leaves (modules, the MCP SDK, the indexes) are frozen once it settles, so later full
    collections walk only what requests left."""
    daemon.start()
    deadline = time.monotonic() + 60
    while (froze := re.search(r"froze (\d+) start-up objects", daemon.log())) is None:
        assert time.monotonic() < deadline, "start-up was not frozen within 60 s"
        time.sleep(0.05)
    assert int(froze[1]) > 50_000, froze[0]  # the MCP SDK's alone, imported by then
    with daemon.client() as client:
        assert client.call("search", {"query": "anything"})["results"] == []
    daemon.stop()


@pytest.fixture
def small_disk(env: Env) -> Iterator[Path]:
    """QMDD_HOME on a tmpfs of its own, to be filled up."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=700", "tmpfs", str(env.home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield env.home
    finally:
        subprocess.run(["umount", "-l", str(env.home)], check=False)


def test_a_collection_add_that_fills_the_disk_says_what_it_left_and_update_completes_it(
        env: Env, daemon: OwnDaemon, small_disk: Path, tmp_path: Path) -> None:
    notes = tmp_path / "many"
    notes.mkdir()
    for i in range(600):
        (notes / f"n{i:04d}.md").write_text(f"# Note {i}\n\nquokka{i} " + "filler words for the index " * 80 + "\n")
    env.vars["QMDD_INDEX_BATCH_FILES"] = "100"
    daemon.start(log_file=tmp_path / "qmdd.log")
    filler = small_disk / "filler"
    disk = os.statvfs(small_disk)
    with open(filler, "wb") as out:  # leave 1 MiB: room for a few batches, not for the ~3 MiB index
        out.write(b"\0" * (disk.f_bavail * disk.f_frsize - 1024 * 1024))
    added = env.run("collection", "add", str(notes), "--name", "many", "--json", check=False)
    assert added.returncode == ErrorCode.STORAGE_ERROR.spec.exit_code, added.stdout + added.stderr
    problem = json.loads(added.stderr)
    indexed = env.json("collection", "list")[0]["documents"]
    assert 0 < indexed < 600
    assert problem.get("details") == {"collection": "many", "registered": True, "indexed": indexed, "total": 600}
    assert "is registered" in problem["detail"] and f"{indexed} of 600 files" in problem["detail"], problem
    assert any("update -c many" in hint for hint in problem["recovery_hints"]), problem
    # Reads go on meanwhile.
    assert env.json("search", "quokka1", "-n", "1")[0]["file"] == "qmd://many/n0001.md"
    filler.unlink()
    env.run("update", "-c", "many")
    assert env.json("collection", "list")[0]["documents"] == 600
    assert env.json("search", "quokka599", "-n", "1")[0]["file"] == "qmd://many/n0599.md"
    daemon.stop()


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_a_wal_deleted_before_a_kill_is_reported_and_what_it_held_comes_back(env: Env, daemon: OwnDaemon,
                                                                             notes: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "wombat.md").write_text("# Wombat\n\nA burrowing marsupial.\n")
    daemon.start()
    with daemon.client() as client:
        client.call("collection.add", {"path": str(notes), "name": "notes"})
        env.paths.database.with_name("index.sqlite-wal").unlink()  # a cleaner, a careless rm
        client.call("collection.add", {"path": str(other), "name": "other"})
        client.call("context.add", {"target": "qmd://other/", "text": "Marsupials"})
    daemon.kill()  # no checkpoint: what the deleted WAL held is not in the database file
    report = check_index(env.vars, mode="partial")  # the offline checker sees it too
    assert "wal_lost" in {finding.code for finding in report.problems}, report.render()

    daemon.start()
    with daemon.client() as client:
        def documents() -> dict[str, int]:
            return {c["name"]: c["documents"] for c in client.call("collection.list")}

        wait_for(lambda: documents() == {"notes": 4, "other": 1}, "both collections registered again and rescanned")
        notice = client.call("status")["problems"][0]
        assert notice["code"] == "wal_lost" and "index.sqlite-wal was" in notice["message"], notice
        assert "WARNING" in daemon.log() and "registered again" in daemon.log()
        assert client.call("search", {"query": "wombat"})["results"][0]["context"] == "Marsupials"
        assert client.call("search", {"query": "gnome-screenshot"})["results"][0]["file"] == "qmd://notes/alpha.md"
        client.call("cleanup")  # rescans once more, then stops reporting it
        assert all(p["code"] != "wal_lost" for p in client.call("status")["problems"])

    def kill_then_read() -> None:  # the reader's close checkpoints and removes the WAL, as SQLite does
        daemon.kill()
        with contextlib.closing(sqlite3.connect(env.paths.database)) as reader:
            assert reader.execute("SELECT count(*) FROM documents").fetchone() == (5,)
        assert not env.paths.database.with_name("index.sqlite-wal").exists()

    # Nothing is lost by a kill with the WAL in place, by a WAL that SQLite itself checkpointed and
    # removed, or by a clean stop: no notice.
    for restart in (daemon.kill, kill_then_read, daemon.stop):
        restart()
        daemon.start()
        with daemon.client() as client:
            assert all(p["code"] != "wal_lost" for p in client.call("status")["problems"])
    daemon.stop()
