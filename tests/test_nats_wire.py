"""The NATS worker pool's codec (msgpack requests and replies, the subject) and its settings: no NATS
needed. The pool itself, with a real nats-server and real workers: tests/test_nats_pool.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from qmdd.config import display_url, load_config
from qmdd.models.natspool import PoolSettings
from qmdd.models.natswire import (
    BadReply,
    BadRequest,
    WorkerError,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
    subject_for,
)
from qmdd.protocol.errors import QmddError


def test_requests_and_replies_round_trip() -> None:
    assert decode_request(encode_request(["a", "b"], "query")) == (["a", "b"], "query")
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    got, tokens, worker = decode_reply(encode_reply(vectors, 7, "h:1"), 2, 3)
    assert got.dtype == np.float32 and (got == vectors).all() and (tokens, worker) == (7, "h:1")
    assert decode_reply(encode_reply(np.zeros((0, 3), np.float32), 0, "h:1"), 0, 3)[0].shape == (0, 3)
    subject = subject_for("all-minilm-l6-v2@53aa/int8/mean/256/chunks200-256-32")
    assert subject.startswith("qmdd.embed.") and len(subject) == 27 and " " not in subject
    assert subject_for("a/int8/x") != subject_for("a/float16/x")  # another compute type: another pool


def raw_reply(**body: Any) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@pytest.mark.parametrize(("data", "why"), [
    (encode_reply(np.ones((2, 4), np.float32), 1, "w"), "4 dimensions, not 3"),
    (encode_reply(np.ones((1, 3), np.float32), 1, "w"), "1 vectors for 2 texts"),
    (encode_reply(np.array([[1, 0, np.nan], [1, 0, 0]], np.float32), 1, "w"), "NaN"),
    (encode_reply(np.array([[0, 0, 0], [1, 0, 0]], np.float32), 1, "w"), "all zeros"),
    (raw_reply(vectors=[1.0, 2.0], dims=3), "no `vectors` bytes"),
    (raw_reply(vectors=b"\0" * 24, dims=True), "no `vectors` bytes"),
    (msgpack.packb([1, 2]), "not a map"),
    (b"\xc1", "not msgpack"),
])
def test_bad_replies_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(BadReply, match=why):
        decode_reply(data, 2, 3)


def test_error_replies_are_typed_and_made_printable() -> None:
    with pytest.raises(WorkerError) as refused:
        decode_reply(encode_error("MODEL_LOAD_FAILED", "no \x1b[31mmodel\n" + "x" * 500), 2, 3)
    assert refused.value.code == "MODEL_LOAD_FAILED" and "\x1b" not in str(refused.value)
    assert len(str(refused.value)) < 340
    with pytest.raises(WorkerError, match="EMBEDDING_FAILED: no message"):
        decode_reply(raw_reply(error="boom"), 2, 3)


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb({"texts": "a"}), msgpack.packb({"texts": [1]}),
                                  msgpack.packb({"texts": ["a"], "kind": "title"}), msgpack.packb(["a"])])
def test_bad_requests_are_refused(data: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_request(data)


def test_settings_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    env = {"QMDD_HOME": str(tmp_path)}
    (tmp_path / "config.toml").write_text('[embed]\nnats = "nats://10.0.0.5:4222"\nnats_in_flight = 4\n')
    config = load_config(env=env)
    assert (config.embed_nats, config.embed_nats_in_flight, config.embed_nats_timeout_s) == (
        "nats://10.0.0.5:4222", 4, 30.0)
    assert load_config(env={**env, "QMDD_EMBED_NATS_IN_FLIGHT": "2"}).embed_nats_in_flight == 2
    assert load_config({"embed_nats_in_flight": 3}, env={**env, "QMDD_EMBED_NATS_IN_FLIGHT": "2"}
                       ).embed_nats_in_flight == 3
    assert PoolSettings.from_config(config) == PoolSettings("nats://10.0.0.5:4222", 4, 30.0)
    assert PoolSettings.from_config(load_config(env={"QMDD_HOME": str(tmp_path / "none")})) is None
    for bad in ("http://h:4222", "nats://", "nats://h:99999", "nats://h:4222/x"):
        with pytest.raises(QmddError, match="embed_nats must be a nats://"):
            load_config(env={**env, "QMDD_EMBED_NATS": bad})
    with pytest.raises(QmddError, match="remote_url and embed_nats are both set"):
        load_config(env={**env, "QMDD_REMOTE_URL": "http://h/v1", "QMDD_REMOTE_MODEL": "m"})
    assert display_url("nats://user:secret@h:4222") == "nats://h:4222"
    assert display_url("tls://tok@[::1]:4222") == "tls://[::1]:4222"
