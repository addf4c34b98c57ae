"""What the daemon and its `qmdd worker`s say to each other over NATS: the subject a model's batches go
to, and the msgpack request and reply. Shared by both sides (models/natspool.py, worker.py).

Request: {"texts": [str, ...], "kind": "passage" | "query"}; the worker puts the model's prefix before
each text, as the daemon's own embedder would. Reply: {"vectors": float32 little-endian bytes, row after
row, "dims": n, "tokens": n, "worker": "host:pid"} or {"error": {"code": str, "message": str}}.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np

from qmdd.models.registry import TEXT_KINDS

SUBJECT_PREFIX = "qmdd.embed."
QUEUE_GROUP = "qmdd-embed"
"""One group: NATS hands each batch to one of the workers subscribed to its subject."""
MESSAGE_CHARS = 300


def subject_for(fingerprint: str) -> str:
    """The subject of one fingerprint's batches: only workers whose model, weights, compute type and
    chunking give that fingerprint listen on it, so their vectors are the daemon's own. Hashed, since a
    fingerprint holds characters (`/`, `@`, spaces in prefixes) that NATS subjects do not take."""
    return SUBJECT_PREFIX + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


class BadRequest(ValueError):
    """A request a worker cannot read."""


class BadReply(ValueError):
    """A reply that is not the vectors asked for: the batch is embedded elsewhere."""


class WorkerError(BadReply):
    """A worker answered with an error instead of vectors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def encode_request(texts: list[str], kind: str) -> bytes:
    packed: bytes = msgpack.packb({"texts": texts, "kind": kind}, use_bin_type=True)
    return packed


def decode_request(data: bytes) -> tuple[list[str], str]:
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"not msgpack: {exc}") from None
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise BadRequest("`texts` must be a list of strings")
    kind = body.get("kind", "passage")
    if kind not in TEXT_KINDS:
        raise BadRequest(f"`kind` must be one of {TEXT_KINDS}")
    return texts, kind


def encode_reply(vectors: np.ndarray, tokens: int, worker: str) -> bytes:
    packed: bytes = msgpack.packb({"vectors": np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
                                   "dims": int(vectors.shape[1]), "tokens": tokens, "worker": worker},
                                  use_bin_type=True)
    return packed


def encode_error(code: str, message: str) -> bytes:
    packed: bytes = msgpack.packb({"error": {"code": code, "message": message[:MESSAGE_CHARS]}}, use_bin_type=True)
    return packed


def decode_reply(data: bytes, count: int, dims: int) -> tuple[np.ndarray, int, str]:
    """(the `count` x `dims` float32 rows, the tokens the worker counted, which worker). Raises BadReply,
    WorkerError for an error reply."""
    try:
        body: Any = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadReply(f"not msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise BadReply("the reply is not a map")
    error = body.get("error")
    if error is not None:
        error = error if isinstance(error, dict) else {}
        raise WorkerError(_text(error.get("code"), "EMBEDDING_FAILED"), _text(error.get("message"), "no message"))
    raw, width, tokens = body.get("vectors"), body.get("dims"), body.get("tokens", 0)
    if not isinstance(raw, bytes) or not isinstance(width, int) or isinstance(width, bool):
        raise BadReply("the reply has no `vectors` bytes and `dims`")
    if width != dims:
        raise BadReply(f"vectors of {width} dimensions, not {dims}")
    if len(raw) != 4 * count * dims:
        raise BadReply(f"{len(raw) // 4 / dims:g} vectors for {count} texts")
    vectors = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(count, dims)
    if not np.isfinite(vectors).all():
        raise BadReply("a vector holds NaN or an infinity")
    if count and not (np.linalg.norm(vectors, axis=1) > 0).all():
        raise BadReply("a vector is all zeros")
    tokens = tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else 0
    return vectors, tokens, _text(body.get("worker"), "?")


def _text(value: Any, default: str) -> str:
    """A worker's string, made safe for a log line and status: printable and short."""
    if not isinstance(value, str):
        return default
    return " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())[:MESSAGE_CHARS] or default
