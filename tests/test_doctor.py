"""`qmdctl doctor` against real homes: with no daemon (which it must not start, even where a socket listens),
with a running daemon and its HTTP door, and with broken pieces it must name, each with its fix and code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from qmdd import __version__
from qmdd.protocol.errors import ErrorCode
from tests.conftest import Env

SPEC = json.loads((Path(__file__).parent / "fixtures" / "anel" / "doctor.json").read_text(encoding="utf-8"))


def doctor(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    proc = env.run("doctor", "--json", *args, check=False, timeout=60)
    report = json.loads(proc.stdout)
    assert not list(Draft202012Validator(SPEC["output"]).iter_errors(report))
    return proc.returncode, report


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_no_daemon_is_reported_not_started(env: Env) -> None:
    code, report = doctor(env)
    checks = by_name(report)
    assert code == ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code and report["ok"] is False
    assert checks["daemon"]["status"] == "fail" and checks["daemon"]["code"] == "BACKEND_UNAVAILABLE"
    assert "qmdctl daemon start" in checks["daemon"]["fix"]
    assert {checks[n]["status"] for n in ("index", "problems", "embeddings")} == {"skip"}
    assert checks["python"]["status"] == checks["packages"]["status"] == "ok"
    assert f"qmdd {__version__}" in checks["packages"]["detail"]
    assert checks["environment"]["status"] == "warn" and "QMDD_HOME" in checks["environment"]["detail"]
    # Nothing was created: no daemon started, no data dir made.
    assert not (env.home / "data").exists() and not (env.home / "run").exists()
    assert env.daemon_pid() is None


def test_a_listening_socket_without_a_daemon_is_not_connected_to(env: Env) -> None:
    """A systemd-activated socket listens with no daemon behind it: connecting would start one."""
    run_dir = env.paths.runtime_dir
    run_dir.mkdir(mode=0o700, parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(env.paths.socket))
        listener.listen(4)
        code, report = doctor(env)
        checks = by_name(report)
        assert checks["daemon"]["detail"] == "not running" and code == 23
        assert checks["socket"]["status"] == "ok" and "mode" in checks["socket"]["detail"]
        listener.setblocking(False)
        try:
            listener.accept()
            raise AssertionError("doctor connected to the socket")
        except BlockingIOError:
            pass
    finally:
        listener.close()


def test_running_daemon_with_http_door(env: Env, notes: Path) -> None:
    env.run("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    code, report = doctor(env)
    checks = by_name(report)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert code == 0 and report["ok"] and not failed, failed
    assert checks["daemon"]["status"] == "ok" and f"pid {env.daemon_pid()}" in checks["daemon"]["detail"]
    assert checks["index"]["detail"].startswith("1 collections, 4 documents")
    assert checks["database"]["status"] == checks["socket"]["status"] == checks["data dir"]["status"] == "ok"
    assert checks["http"]["status"] == "ok" and checks["http"]["detail"].startswith("serving http://127.0.0.1:")
    assert checks["problems"]["status"] in ("ok", "warn") and checks["embeddings"]["status"] in ("ok", "warn", "skip")

    # Text: one mark a line, and the summary; NDJSON: metadata with `ok`, then one valid record per check.
    text = env.run("doctor").stdout
    assert "✓ daemon: pid" in text and text.rstrip().endswith("all checks pass")
    records = [json.loads(line) for line in env.run("doctor", "--ndjson").stdout.splitlines()]
    for record in records:
        assert not list(Draft202012Validator(SPEC["ndjson"]).iter_errors(record))
    assert records[0]["payload"]["ok"] is True and [r["payload"]["name"] for r in records[1:]] == list(checks)

    # A token file others can read fails the HTTP check, with its code and fix.
    env.paths.http_token.chmod(0o644)
    code, report = doctor(env)
    http = by_name(report)["http"]
    assert (http["status"], http["code"], code) == ("fail", "PERMISSION_DENIED", 17) and "--rotate" in http["fix"]


def test_plain_http_beyond_loopback_is_a_warning(env: Env) -> None:
    env.run("daemon", "start", "--http", "0.0.0.0:0")
    code, report = doctor(env)
    http = by_name(report)["http"]
    assert code == 0 and http["status"] == "warn" and "in the clear" in http["detail"] and "cert" in http["fix"]
    assert "serves plain HTTP beyond this machine" in env.paths.log_file.read_text()


def test_broken_pieces_are_named_with_their_code(env: Env) -> None:
    data = env.paths.data_dir
    data.mkdir(parents=True)
    data.chmod(0o755)
    code, report = doctor(env)
    data_check = by_name(report)["data dir"]
    assert (data_check["status"], data_check["code"], code) == ("fail", "PERMISSION_DENIED", 17)
    assert data_check["fix"] == f"chmod 700 {data}"

    # The first failed check gives the exit status: a bad config file comes before the data dir.
    env.paths.config_file.write_text("log_level = [unclosed\n")
    code, report = doctor(env)
    config = by_name(report)["config"]
    assert (config["status"], config["code"], code) == ("fail", "CONFIG_ERROR", 24)
    data.chmod(0o700)
    env.paths.config_file.unlink()

    # A database that is not SQLite.
    env.paths.database.write_bytes(b"this is not a database" * 100)
    database = by_name(doctor(env)[1])["database"]
    assert (database["status"], database["code"]) == ("fail", "STORAGE_ERROR")

    text = env.run("doctor", check=False).stdout
    assert "✗ database:" in text and "    fix: " in text and "checks failed" in text


def test_version_flag() -> None:
    for flag in ("--version", "-v"):
        proc = subprocess.run([sys.executable, "-m", "qmdctl.main", flag], capture_output=True, text=True,
                              timeout=30, env={**os.environ, "QMDD_HOME": "/nonexistent/qmdd-version"})
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"qmdctl {__version__} (qmdd {__version__})\n", "")
