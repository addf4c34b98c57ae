"""`embeddings`: vectors for the caller's texts from the daemon's own embedding model, answered in the
shape of OpenAI's embeddings API (the HTTP door serves it as POST /v1/embeddings), so that one qmdd can
embed for others, and a client written for OpenAI can use it unchanged."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import numpy as np
import trio

from qmdd.actors.messages import EmbedCounted, Embedded, ModelStatus
from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.pipeline import cpu_limiter

MAX_INPUTS = 2048
"""Texts in one request: OpenAI's own limit."""
MAX_INPUT_BYTES = 4 << 20
"""All the texts of one request together, in UTF-8: 2048 chunks of ~2 KiB (a 512-token model's) fit."""
QUERY_TEXTS = 8
QUERY_CHARS = 8 << 10
"""A request this small is a search waiting on its vector: it goes at the embedder's query priority (first,
with a worker kept free for it). A larger one is another indexer's page of chunks: at bulk priority it
yields to this daemon's own searches, and is tokenized in a worker thread, not on the event loop."""
KINDS = {None: "passage", "passage": "passage", "document": "passage", "query": "query"}
"""`input_type` -> how the model marks the texts (e5's "query: " / "passage: "). Passages by default: what
OpenAI clients send to this endpoint is mostly documents to index."""
ENCODINGS = ("float", "base64")
DEFAULT_MODEL = ("", "default")
"""`model` values meaning the daemon's embedding model, whichever it is (beside its own name, or none)."""


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"embeddings": partial(embeddings, s)}


async def embeddings(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    texts = _texts(params["input"])
    kind = KINDS.get(params["input_type"])
    if kind is None:
        raise _invalid("input_type", f"input_type must be one of {sorted(k for k in KINDS if k)}, "
                       f"not {params['input_type']!r:.40}")
    encoding = params["encoding_format"]
    if encoding not in ENCODINGS:
        raise _invalid("encoding_format", f"encoding_format must be one of {list(ENCODINGS)}, not {encoding!r:.40}")
    in_use = s.registry.selection()["embedding"]
    if params["model"] not in (None, *DEFAULT_MODEL, in_use):
        # The name the embedder serves under: a remote model's (remote_url), else the selection's.
        in_use = (await s.actors.embedder.call(ModelStatus()))["embedding"]
    if params["model"] not in (None, *DEFAULT_MODEL, in_use):
        raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"model {params['model']!r:.80} is not served here",
                        hints=(f"This daemon embeds with {in_use}: send \"model\": \"{in_use}\", or leave it out.",),
                        details={"param": "model"})
    if params["dimensions"] is not None:
        dims = (await s.actors.embedder.call(ModelStatus(load=True)))["dims"]
        if params["dimensions"] != dims:
            raise _invalid("dimensions", f"the model in use ({in_use}) makes vectors of {dims} dimensions, "
                           f"not {params['dimensions']}", hints=(f"Send dimensions {dims}, or leave it out.",))
    small = len(texts) <= QUERY_TEXTS and sum(map(len, texts)) <= QUERY_CHARS
    embedded: Embedded = await s.actors.embedder.call(EmbedCounted(texts, "query" if small else "bulk", kind))
    data = await trio.to_thread.run_sync(_encoded, embedded.vectors, encoding, limiter=cpu_limiter())
    return {"object": "list", "data": data, "model": embedded.model,
            "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}}


_JSON_KIND = {int: "a number", float: "a number", bool: "a boolean", list: "an array", dict: "an object",
              type(None): "null"}


def _texts(value: str | list[Any]) -> list[str]:
    """The texts of `input`, refused as OpenAI refuses them (none, an empty one) and within our limits.
    Token arrays (lists of integers, OpenAI's other form) are refused: their ids are the caller's
    tokenizer's, which need not be the model's here."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise _invalid("input", "input is empty: send a text or a list of texts")
    if len(texts) > MAX_INPUTS:
        raise _invalid("input", f"input has {len(texts)} texts; at most {MAX_INPUTS} are embedded at once",
                       hints=("Split the texts into several requests.",))
    size = 0
    if all(map(_is_token_id, texts)) or any(isinstance(t, list) and t and all(map(_is_token_id, t)) for t in texts):
        raise _invalid("input", "token arrays are not accepted: qmdd cannot know which tokenizer made "
                       "them", hints=("Send the texts themselves; the model's tokenizer reads them here.",))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _invalid("input", f"input[{i}] is {_JSON_KIND.get(type(text), 'a value')}, not a string")
        if not text:
            raise _invalid("input", f"input[{i}] is an empty string, which has no embedding")
        size += len(text.encode())
    if size > MAX_INPUT_BYTES:
        raise _invalid("input", f"input is {size} bytes of text; at most {MAX_INPUT_BYTES} are embedded at once",
                       hints=("Split the texts into several requests.",))
    return texts


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encoded(vectors: np.ndarray, encoding: str) -> list[dict[str, Any]]:
    """OpenAI's `data`: each vector as floats, or as its float32 bytes, little-endian, in base64."""
    rows = np.asarray(vectors, dtype="<f4")
    return [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(row.tobytes()).decode() if encoding == "base64" else row.tolist()}
            for i, row in enumerate(rows)]


def _invalid(param: str, message: str, hints: tuple[str, ...] | None = None) -> QmddError:
    """An INVALID_INPUT naming the parameter at fault (the `param` of OpenAI's error object)."""
    return QmddError(ErrorCode.INVALID_INPUT, message, hints=hints, details={"param": param})
