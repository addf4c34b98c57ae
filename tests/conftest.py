"""Shared fixtures: a private QMDD_HOME per test (short, for the socket path), a real daemon process,
and helpers to run the real `qmdctl` CLI."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qmdctl.client import Client
from qmdd.paths import Paths, resolve_paths


@dataclass
class Env:
    home: Path
    vars: dict[str, str]

    @property
    def paths(self) -> Paths:
        return resolve_paths(self.vars)

    def client(self) -> Client:
        return Client(self.paths, environ=self.vars)

    def run(self, *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "qmdctl.main", *args], env=self.vars, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"qmdctl {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def json(self, *args: str, cwd: Path | None = None) -> Any:
        return json.loads(self.run(*args, "--json", cwd=cwd).stdout)

    def daemon_pid(self) -> int | None:
        try:
            return int(self.paths.pid_file.read_text())
        except (OSError, ValueError):
            return None

    def stop_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # A daemon auto-started by a Client in this process is our child: reap it, or it stays a
            # zombie that kill(pid, 0) still finds.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)


def exited(pid: int) -> bool:
    """Whether `pid` has ended: gone, or a zombie its parent (init, for a daemon whose client exited)
    has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of converted models for the whole session: each daemon would convert again."""
    return tmp_path_factory.mktemp("model-cache")


@contextlib.contextmanager
def open_env(model_cache: Path, prefix: str = "qmdd-") -> Iterator[Env]:
    """A daemon's environment in a fresh home (the daemon stopped and the home removed after); tests that
    need a second daemon beside `env` open another."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("QMDD_", "AGENT_", "XDG_"))}
    # The watcher is off unless a test turns it on (tests/test_watch.py): elsewhere a file written by a test
    # must be indexed by the `update` the test runs, not by a watcher racing it.
    variables.update(QMDD_HOME=str(home), NO_COLOR="1", QMDD_LOG_LEVEL="debug", QMDD_CACHE_DIR=str(model_cache),
                     QMDD_WATCH="0")
    e = Env(home, variables)
    try:
        yield e
    finally:
        e.stop_daemon()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def env(model_cache: Path) -> Iterator[Env]:
    with open_env(model_cache) as e:
        yield e


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """A small markdown collection with headings, code and a nested folder."""
    root = tmp_path / "notes"
    (root / "projects").mkdir(parents=True)
    (root / "alpha.md").write_text(
        "# Alpha Project\n\nThe alpha project tracks gnome-screenshot packaging.\n\n"
        "## Install\n\n```sh\napt install gnome-screenshot\n```\n\nMore text about cameras.\n")
    (root / "beta.md").write_text("# Beta\n\nBeta notes about databases and SQLite WAL mode.\n")
    (root / "projects" / "gamma.md").write_text(
        "---\ntitle: Gamma Plan\n---\n\n# Gamma\n\nQuarterly plan: ship the daemon.\n\n" +
        "\n".join(f"Line {i} of filler text." for i in range(1, 40)) + "\n")
    (root / "chinese.md").write_text("# 笔记\n\n我们使用全文搜索引擎来查找文档。\n")
    (root / "ignored.txt").write_text("not markdown: alpha\n")
    return root


class OwnDaemon:
    """A qmdd process of the test's own (optionally with a descriptor limit); its log is kept."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = env.paths.log_file

    def start(self, descriptor_limit: int | None = None, log_file: Path | None = None) -> None:
        def limit_descriptors() -> None:
            if descriptor_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

        paths = self.env.paths
        paths.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_file = log_file or paths.log_file
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "qmdd"], env=self.env.vars, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, preexec_fn=limit_descriptors)
        deadline = time.monotonic() + 60
        while self.env.daemon_pid() != self.proc.pid:  # the pid file is written once it serves
            code = self.proc.poll()
            assert code is None, f"qmdd exited with {code}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, "qmdd did not start within 60 s"
            time.sleep(0.01)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def client(self) -> Client:
        return Client(self.env.paths, environ=self.env.vars).connect(autostart=False)

    def descriptors(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def wait_loaded(self) -> None:
        """Until the vector index has loaded and reconciled (in the background, after the daemon answers)."""
        with self.client() as client:
            deadline = time.monotonic() + 60
            while not client.call("status")["actors"]["vectors"]["ready"]:
                assert time.monotonic() < deadline, "the vector index did not load within 60 s"
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            assert self.proc.wait(timeout=60) == 0, self.log()[-3000:]
            self.proc = None

    def restart_and_stop(self) -> None:
        """A restart reconciles the derived indexes with SQLite; the graceful stop then saves them."""
        self.start()
        self.wait_loaded()
        self.stop()
