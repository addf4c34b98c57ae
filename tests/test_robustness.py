"""Bad input never takes the daemon down, and a killed daemon leaves a consistent index."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from qmdctl.client import Client
from qmdd.protocol import framing
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import MAX_FRAME_BYTES, PROTOCOL_VERSION, hello, request
from qmdd.store.db import connect
from tests.conftest import Env, exited


def raw_connect(env: Env, greet: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(env.paths.socket))
    if greet:
        framing.send_frame(sock, hello("client"))
        assert framing.recv_frame(sock)["type"] == "hello"
    return sock


def assert_serving(env: Env) -> None:
    with env.client() as c:
        assert c.call("ping")["pong"] is True


def test_a_frame_stalled_midway_is_answered_and_closed_while_idle_connections_stay(env: Env) -> None:
    env.vars["QMDD_FRAME_STALL_S"] = "0.5"
    assert_serving(env)  # starts the daemon with that setting
    idle = raw_connect(env)
    stalled = raw_connect(env)
    body = framing.encode(request(7, "ping", {}))
    stalled.sendall(body[:6])  # the header and two bytes, then nothing
    reply = framing.recv_frame(stalled)  # within the socket's 10 s timeout
    assert reply["type"] == "err" and reply["error"]["code"] == "PROTOCOL_ERROR"
    assert "stalled" in reply["error"]["message"]
    assert stalled.recv(1) == b""  # and closed
    stalled.close()
    time.sleep(0.6)  # an idle connection (between frames) is never timed out
    framing.send_frame(idle, request(8, "ping", {}))
    assert framing.recv_frame(idle)["result"]["pong"] is True
    idle.close()
    assert_serving(env)


def test_malformed_frames_get_typed_errors_and_daemon_keeps_serving(env: Env) -> None:
    env.run("daemon", "start")
    # Garbage msgpack inside a valid frame: a typed error, and the connection stays usable.
    sock = raw_connect(env)
    sock.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    reply = framing.recv_frame(sock)
    assert reply["type"] == "err" and reply["error"]["code"] == "PROTOCOL_ERROR"
    framing.send_frame(sock, {"type": "req", "id": 7, "method": "search", "params": {"query": 5}})
    reply = framing.recv_frame(sock)
    assert (reply["id"], reply["error"]["code"]) == (7, "INVALID_INPUT")
    framing.send_frame(sock, {"type": "req", "id": 8, "method": "no.such", "params": {}})
    assert framing.recv_frame(sock)["error"]["code"] == "UNKNOWN_METHOD"
    framing.send_frame(sock, request(9, "ping", {}))
    assert framing.recv_frame(sock)["result"]["pong"] is True
    sock.close()

    # An oversized frame header: typed error, then the daemon closes that connection.
    sock = raw_connect(env)
    sock.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
    assert framing.recv_frame(sock)["error"]["code"] == "FRAME_TOO_LARGE"
    assert sock.recv(1) == b""
    sock.close()

    # A wrong protocol version or no hello at all.
    sock = raw_connect(env, greet=False)
    framing.send_frame(sock, {"type": "hello", "version": PROTOCOL_VERSION + 99})
    assert framing.recv_frame(sock)["error"]["code"] == "PROTOCOL_ERROR"
    sock.close()
    sock = raw_connect(env, greet=False)
    sock.sendall(framing.encode(request(1, "ping", {})))
    assert framing.recv_frame(sock)["error"]["code"] == "PROTOCOL_ERROR"
    sock.close()

    # Truncated frames and abrupt disconnects from many clients.
    for _ in range(20):
        sock = raw_connect(env)
        sock.sendall(struct.pack(">I", 100) + msgpack.packb({"type": "req"})[:3])
        sock.close()
    assert_serving(env)


def test_client_disconnect_mid_stream_does_not_stop_indexing(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(1500):
        (root / f"n{i}.md").write_text(f"# Note {i}\n\nbody {i} marsupial\n")
    env.run("collection", "add", str(root), "--name", "many", "--no-update")
    sock = raw_connect(env)
    framing.send_frame(sock, request(1, "update", {}))
    sock.close()  # gone before the first progress item
    deadline = time.monotonic() + 60
    with env.client() as c:
        while time.monotonic() < deadline:
            docs = c.call("collection.list")[0]["documents"]
            if docs == 1500:
                break
            time.sleep(0.1)
        assert docs == 1500
        assert c.call("search", {"query": "marsupial", "limit": 3})["results"]


def test_second_daemon_is_refused_and_stale_socket_is_replaced(env: Env) -> None:
    env.run("daemon", "start")
    second = subprocess.run([sys.executable, "-m", "qmdd"], env=env.vars, capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == ErrorCode.DAEMON_RUNNING.spec.exit_code
    assert "DAEMON_RUNNING" in second.stderr
    assert_serving(env)

    pid = env.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    assert env.paths.socket.exists()  # a dead daemon's socket is left behind...
    assert_serving(env)  # ...and the next client call replaces it with a fresh daemon
    assert env.daemon_pid() != pid


def _wait_dead(pid: int) -> None:
    for _ in range(500):
        if exited(pid):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not die")


def test_sigterm_shuts_down_gracefully_and_removes_socket(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    pid = env.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    _wait_dead(pid)
    assert not env.paths.socket.exists()
    assert env.paths.bm25_snapshot.exists()
    log = env.paths.log_file.read_text()
    assert "qmdd stopped" in log
    # A restart loads the snapshot and answers the same.
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"
    status = env.json("status")
    assert status["actors"]["bm25"]["loaded_from"] == "snapshot"


def test_bad_files_are_reported_and_skipped(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    (root / "loop").mkdir(parents=True)
    (root / "good.md").write_text("# Good\n\nperfectly fine platypus\n")
    (root / "latin1.md").write_bytes("# Caf\xe9\n".encode("latin-1"))  # not UTF-8, but text: indexed
    (root / "binary.md").write_bytes(b"\x00\x01\x02binary")
    (root / "huge.md").write_bytes(b"# Huge\n" + b"x" * (2 * 1024 * 1024))
    os.symlink(root, root / "loop" / "again")
    env.vars["QMDD_MAX_FILE_BYTES"] = str(1024 * 1024)
    summary = env.json("collection", "add", str(root), "--name", "bad")["update"][0]
    codes = {p["path"]: p["code"] for p in summary["problems"]}
    assert "latin1.md" not in codes
    assert codes["binary.md"] == "binary"
    assert codes["huge.md"] == "too_large"
    assert any(c in ("symlink_loop", "outside_root") for c in codes.values())
    assert summary["indexed"] == 2
    assert env.json("search", "platypus")[0]["file"] == "qmd://bad/good.md"
    # Fixing a file makes it indexable; the problem disappears.
    (root / "binary.md").write_text("# Binary no more\n\nnow text platypus\n")
    again = env.json("update")[0]
    assert "binary.md" not in {p["path"] for p in again["problems"]}
    assert len(env.json("search", "platypus")) == 2


def _index_state(db: Path) -> tuple[int, int, int]:
    conn = connect(db)
    try:
        docs = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT collection_id, path FROM documents"
                           " GROUP BY 1, 2 HAVING COUNT(*) > 1)").fetchone()[0]
        orphans = conn.execute("SELECT COUNT(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)"
                               ).fetchone()[0]
    finally:
        conn.close()
    return docs, dup, orphans


def test_kill_9_during_update_then_update_again_is_consistent(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    n = 3000
    for i in range(n):
        (root / f"doc{i:05d}.md").write_text(f"# Doc {i}\n\nunique{i} shared words about echidna\n\n"
                                             + "filler line\n" * 20)
    env.vars["QMDD_INDEX_BATCH_FILES"] = "100"
    env.run("collection", "add", str(root), "--name", "corpus", "--no-update")
    pid = env.daemon_pid()
    assert pid is not None
    proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "update"], env=env.vars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = env.paths.database
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _index_state(db)[0] < 300:
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    proc.wait(timeout=30)
    partial, dup, orphans = _index_state(db)
    assert 0 < partial < n and dup == 0 and orphans == 0

    summary = env.json("update")[0]  # a fresh daemon starts, reconciles BM25, resumes
    assert summary["indexed"] == n - partial
    docs, dup, orphans = _index_state(db)
    assert (docs, dup, orphans) == (n, 0, 0)
    for i in (0, partial - 1, partial, n - 1):
        hits = env.json("search", f"unique{i}", "-n", "1")
        assert hits[0]["file"] == f"qmd://corpus/doc{i:05d}.md"
    assert len(env.json("search", "echidna", "--all")) == n


def test_client_reports_daemon_start_failure(env: Env) -> None:
    env.home.joinpath("config.toml").write_text("max_file_bytes = 'lots'\n")
    client = env.client()
    with pytest.raises(QmddError) as e:
        client.connect()
    assert e.value.code is ErrorCode.DAEMON_START_FAILED
    assert "CONFIG_ERROR" in e.value.message and "max_file_bytes" in e.value.message
    # A second failure, for another reason, shows its own log lines, not the first one's.
    env.home.joinpath("config.toml").write_text("stem = 'maybe'\n")
    with pytest.raises(QmddError) as again:
        env.client().connect()
    assert "stem" in again.value.message and "max_file_bytes" not in again.value.message


def test_bad_globs_are_typed_errors_and_never_break_the_indexer(env: Env, notes: Path) -> None:
    for args in (("--mask", "**/[z-a].md"), ("--exclude", "!")):
        proc = env.run("collection", "add", str(notes), "--name", "bad", *args, "--json", check=False)
        assert proc.returncode == ErrorCode.INVALID_INPUT.spec.exit_code, proc.stdout
    assert env.json("collection", "list") == []
    env.run("collection", "add", str(notes), "--name", "notes")
    proc = env.run("multi-get", "notes/[z-a].md", "--json", check=False)
    assert proc.returncode == ErrorCode.INVALID_INPUT.spec.exit_code
    status = env.json("status")
    assert status["state"] == "ok" and status["actors"]["indexer"]["restarts"] == 0


def test_get_on_a_fifo_fails_fast_instead_of_hanging(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    (notes / "beta.md").unlink()
    os.mkfifo(notes / "beta.md")
    started = time.monotonic()
    proc = env.run("get", "notes/beta.md", "--json", check=False, timeout=30)
    assert proc.returncode == ErrorCode.FILE_UNREADABLE.spec.exit_code
    assert time.monotonic() - started < 10
    summary = env.json("update")[0]
    assert {p["path"]: p["code"] for p in summary["problems"]}["beta.md"] == "not_regular"


def test_one_index_never_has_two_daemons(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QMDD_", "XDG_"))}
    base.update(XDG_DATA_HOME=str(tmp_path / "d"), XDG_CONFIG_HOME=str(tmp_path / "c"),
                XDG_CACHE_HOME=str(tmp_path / "k"))
    first_env = {**base, "XDG_RUNTIME_DIR": str(tmp_path / "r1")}
    with Client(environ=first_env) as client:  # starts the first daemon on demand
        pid = client.call("ping")["pid"]
        try:
            # Same index, another runtime dir (a shell without XDG_RUNTIME_DIR, say): refused.
            second = subprocess.run([sys.executable, "-m", "qmdd"],
                                    env={**base, "XDG_RUNTIME_DIR": str(tmp_path / "r2")},
                                    capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert second.returncode == ErrorCode.DAEMON_RUNNING.spec.exit_code, second.stderr
            assert "using the index" in second.stderr
            assert client.call("ping")["pid"] == pid
        finally:
            client.call("shutdown")
    _wait_dead(pid)  # the client started it as our child, and its reaper thread reaps it


def test_update_reports_a_missing_root_and_updates_the_others(env: Env, notes: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "g.md").write_text("# G\n\nwallaby\n")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("collection", "add", str(gone), "--name", "gone")
    (notes / "new.md").write_text("# New\n\nquokka\n")
    (gone / "g.md").unlink()
    gone.rmdir()
    proc = env.run("update", "--json", check=False)
    assert proc.returncode == ErrorCode.PATH_NOT_FOUND.spec.exit_code
    rows = {r["collection"]: r for r in json.loads(proc.stdout)}
    assert rows["gone"]["error"]["code"] == "PATH_NOT_FOUND" and rows["notes"]["indexed"] == 1
    assert env.json("search", "quokka")[0]["file"] == "qmd://notes/new.md"
    assert env.json("status")["state"] == "ok"


def test_other_users_are_refused_by_peer_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    from qmdd.transports import rpc
    from qmdd.transports.rpc import peer_uid

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    assert peer_uid(a) == os.getuid()  # SO_PEERCRED read correctly from a real socket
    monkeypatch.setattr(rpc, "peer_uid", lambda sock: os.getuid() + 1)
    server = rpc.RpcServer({}, "qmdd/test")

    async def main() -> None:
        with trio.fail_after(5):
            await server.handle_connection(trio.SocketStream(trio.socket.from_stdlib_socket(a)))

    with b:
        trio.run(main)
        reply = framing.recv_frame(b)
        assert reply["error"]["code"] == "PERMISSION_DENIED"
        assert b.recv(1) == b""  # and the connection is closed
    assert server.stats.rejected_peers == 1


def test_client_times_out_on_a_silent_daemon(tmp_path: Path) -> None:
    import threading

    from qmdd.paths import resolve_paths

    environ = {"QMDD_HOME": str(tmp_path)}
    paths = resolve_paths(environ)
    paths.runtime_dir.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.socket))
    server.listen(1)

    def greet_then_hang() -> None:
        conn, _ = server.accept()
        framing.recv_frame(conn)
        framing.send_frame(conn, hello("server", pid=0))
        framing.recv_frame(conn)  # the request, never answered
        time.sleep(3)
        conn.close()

    thread = threading.Thread(target=greet_then_hang, daemon=True)
    thread.start()
    with Client(paths, environ=environ, reply_timeout=0.3) as client, pytest.raises(QmddError) as e:
        client.call("ping")
    assert e.value.code is ErrorCode.TIMEOUT
    server.close()
