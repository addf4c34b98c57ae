"""Embeddings from a remote server that speaks OpenAI's embeddings API (Ollama, vLLM, llama.cpp, TEI,
OpenAI, or another qmdd's POST /v1/embeddings), in place of the local model.

Texts go in batches of `remote_batch`, at most `remote_in_flight` requests at once per priority (queries
have their own limiter, so a search never waits behind a bulk `embed`), each under `remote_timeout_s`.
Lost requests, 429 and 5xx are retried with exponential backoff and jitter (429's Retry-After honoured);
a refusal (400, 401/403, 404) is not. Every answer is checked (count, indices, one length, finite, not
zero) and its rows L2-normalised, so whatever the server is, the index gets what a local model gives it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import random
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from qmdd.config import Config
from qmdd.protocol.errors import ErrorCode, QmddError, unwrap_error

log = logging.getLogger("qmdd.remote")

BACKOFF_S = 0.5  # first retry after ~this; doubled each time
MAX_BACKOFF_S = 10.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is a server asking for a pause we do not make callers wait
MESSAGE_CHARS = 300
PROBE_TEXT = "dimensions"
RETRIED_STATUSES = frozenset({408, 425, 429})  # besides every 5xx


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    model: str
    key_env: str = ""
    key_file: str = ""
    batch: int = 64
    timeout_s: float = 30.0
    retries: int = 3
    in_flight: int = 4
    dims: int = 0
    query_prefix: str = ""
    passage_prefix: str = ""
    cosine_floor: float = 0.3

    @classmethod
    def from_config(cls, config: Config) -> RemoteSettings | None:
        if not config.remote_url:
            return None
        return cls(config.remote_url, config.remote_model, config.remote_key_env, config.remote_key_file,
                   config.remote_batch, config.remote_timeout_s, config.remote_retries, config.remote_in_flight,
                   config.remote_dims, config.remote_query_prefix, config.remote_passage_prefix,
                   config.remote_cosine_floor)

    @property
    def name(self) -> str:
        """The model as status shows it, and the head of its fingerprint: its name and the server's
        host:port (another server may serve another model under the same name)."""
        return f"remote:{self.model}@{urllib.parse.urlsplit(self.url).netloc}"

    def fingerprint(self, chunking: str) -> str:
        """Names the remote model, so its vectors never mix with a local model's or another server's,
        and its dimensions when remote_dims states them (every answer is checked against them). Unstated,
        they are known only from the first answer, while the fingerprint is needed at start, without the
        network: then only the name tells one model from another."""
        base = f"{self.name}/{chunking}" + (f"/dims:{self.dims}" if self.dims else "")
        if not (self.query_prefix or self.passage_prefix):
            return base
        return f"{base}/prefixes:{json.dumps([self.query_prefix, self.passage_prefix], ensure_ascii=False)}"


def read_key(settings: RemoteSettings, environ: dict[str, str] | None = None) -> str | None:
    """The API key: from the file (refused when group or others may read it, as ssh refuses such keys),
    or the environment variable; None when neither is set (servers without auth, such as Ollama)."""
    if settings.key_file:
        path = Path(settings.key_file).expanduser()
        try:
            with open(path, "rb") as file:
                st = os.fstat(file.fileno())
                if st.st_mode & 0o077 or st.st_uid != os.geteuid():
                    raise QmddError(ErrorCode.CONFIG_ERROR, f"remote_key_file {path} is readable by others "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}) or not yours: refused",
                                    hints=(f"chmod 600 {path}",))
                key = file.read(64 * 1024).decode("utf-8", "replace").strip()
        except OSError as exc:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"remote_key_file {path}: {exc.strerror}") from None
        if not key:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"remote_key_file {path} is empty")
        return key
    if settings.key_env:
        key = (os.environ if environ is None else environ).get(settings.key_env, "").strip()
        if not key:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"remote_key_env names {settings.key_env}, which is not set",
                            hints=("A daemon qmdctl starts keeps only QMDD_* variables: name one, or use "
                                   "remote_key_file.",))
        return key
    return None


class BadAnswer(ValueError):
    """The server answered 200 with something that is not the embeddings asked for."""


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[start:start + size] for start in range(0, len(texts), size)]


def parse_answer(body: Any, count: int, dims: int = 0) -> tuple[np.ndarray, int]:
    """(the rows of an OpenAI embeddings answer in input order, L2-normalised, float32; its prompt tokens).
    `dims`: the length every row must have (0: any, as long as all agree). Raises BadAnswer."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise BadAnswer("no `data` list in the answer")
    if len(data) != count:
        raise BadAnswer(f"{len(data)} embeddings for {count} texts")
    rows: list[np.ndarray | None] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise BadAnswer(f"data[{position}] is not an object")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count or rows[index] is not None:
            raise BadAnswer(f"data[{position}] has a wrong or repeated index")
        rows[index] = _vector(item.get("embedding"), position)
    widths = {len(row) for row in rows if row is not None}
    if len(widths) != 1:
        raise BadAnswer(f"embeddings of different lengths: {sorted(widths)[:4]}")
    width = widths.pop()
    if width == 0 or (dims and width != dims):
        raise BadAnswer(f"embeddings of {width} dimensions, not {dims}" if dims else "empty embeddings")
    matrix = np.stack([row for row in rows if row is not None]).astype(np.float32)
    if not np.isfinite(matrix).all():
        raise BadAnswer("an embedding holds NaN or an infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise BadAnswer("an embedding is all zeros")
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return matrix / norms, tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0


def _vector(value: Any, position: int) -> np.ndarray:
    """One embedding: a list of numbers, or (base64) little-endian float32 bytes."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise BadAnswer(f"data[{position}].embedding is not base64") from None
        if len(raw) % 4:
            raise BadAnswer(f"data[{position}].embedding is not float32 bytes")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError:
            array = np.asarray([])
        if array.ndim == 1 and array.dtype.kind in "if":
            return array.astype(np.float64)
    raise BadAnswer(f"data[{position}].embedding is not a list of numbers")


def sanitised(text: str, limit: int = MESSAGE_CHARS) -> str:
    """Server text made safe for a terminal and a log line: control and format characters (escapes,
    bidi overrides) become spaces, runs of spaces one, and it is cut to `limit` characters."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def server_message(response: httpx.Response) -> str:
    """What the server said went wrong: OpenAI's error.message, or another common shape, or its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message if isinstance(message, str) else body.get("message") or body.get("detail")
    return sanitised(message if isinstance(message, str) else response.text) or f"HTTP {response.status_code}"


def retry_delay(attempt: int, retry_after: str | None = None) -> float:
    """Seconds before retry `attempt` (0-based): Retry-After's when it gives seconds, else exponential
    backoff with jitter, so many clients refused at once do not come back at once."""
    if retry_after is not None:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER_S)
    return min(MAX_BACKOFF_S, BACKOFF_S * 2 ** attempt) * random.uniform(0.5, 1.0)


@dataclass
class RemoteStats:
    requests: int = 0
    texts: int = 0
    retries: int = 0
    failures: int = 0
    latency_s: float = 0.0
    max_latency_s: float = 0.0
    answered: int = 0
    last_error: str = ""
    encoding: str = "base64"  # float after a server refused base64

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "texts": self.texts, "retries": self.retries, "failures": self.failures,
                "mean_latency_ms": round(1000 * self.latency_s / self.answered, 1) if self.answered else 0.0,
                "max_latency_ms": round(1000 * self.max_latency_s, 1), "encoding": self.encoding,
                "last_error": self.last_error}


class RemoteEmbedder:
    """The client of one remote embeddings API. Its HTTP client (and the key) is made on first use, so
    a missing key file fails `embed`, not the daemon's start, and a fixed one needs no restart."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self.dims = settings.dims
        self.stats = RemoteStats()
        self._endpoint = settings.url + "/embeddings"
        self._limiters = {"query": trio.CapacityLimiter(settings.in_flight),
                          "bulk": trio.CapacityLimiter(settings.in_flight)}
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def learn_dims(self) -> int:
        """The model's dimensions, asking the server with one short text when no answer told them yet."""
        if not self.dims:
            await self.embed([PROBE_TEXT], "query", "query")
        return self.dims

    async def embed(self, texts: list[str], kind: str, priority: str) -> tuple[np.ndarray, int]:
        """(L2-normalised float32 rows for `texts`, in order; the tokens the server counted)."""
        prefix = self.settings.query_prefix if kind == "query" else self.settings.passage_prefix
        marked = [prefix + text for text in texts] if prefix else list(texts)
        parts = batches(marked, self.settings.batch)
        answers: list[tuple[np.ndarray, int] | None] = [None] * len(parts)
        limiter = self._limiters["query" if priority == "query" else "bulk"]

        async def one(i: int) -> None:
            answers[i] = await self._request(parts[i], limiter)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(parts)):
                    nursery.start_soon(one, i)
        except BaseExceptionGroup as group:
            error = unwrap_error(group)
            if error is None:  # cancellation or a bug: not ours to translate
                raise
            raise error from None
        done = [answer for answer in answers if answer is not None]
        if not done:
            return np.zeros((0, self.dims), dtype=np.float32), 0
        return np.concatenate([vectors for vectors, _ in done]), sum(tokens for _, tokens in done)

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            key = await trio.to_thread.run_sync(read_key, self.settings)
            headers = {"authorization": f"Bearer {key}"} if key else {}
            self._client = httpx.AsyncClient(
                headers=headers, timeout=self.settings.timeout_s,
                limits=httpx.Limits(max_connections=2 * self.settings.in_flight))
        return self._client

    async def _request(self, texts: list[str], limiter: trio.CapacityLimiter) -> tuple[np.ndarray, int]:
        client = await self._http()
        settings, stats = self.settings, self.stats
        attempt, base64_refused = 0, False
        while True:
            why, retry_after = "", None
            async with limiter:
                encoding = "float" if base64_refused else stats.encoding  # as learned by the requests before
                body = {"model": settings.model, "input": texts, "encoding_format": encoding}
                stats.requests += 1
                started = time.monotonic()
                response: httpx.Response | None = None
                # trio's deadline beside httpx's: httpx times each read, a trickling server could last forever.
                with trio.move_on_after(settings.timeout_s):
                    try:
                        response = await client.post(self._endpoint, json=body)
                    except httpx.TransportError as exc:
                        why = f"{type(exc).__name__}: {sanitised(str(exc), 120)}"
                if response is None and not why:
                    why = f"no answer within {settings.timeout_s:g}s"
            if response is not None:
                elapsed = time.monotonic() - started
                stats.answered += 1
                stats.latency_s += elapsed
                stats.max_latency_s = max(stats.max_latency_s, elapsed)
                status = response.status_code
                if status == 200:
                    stats.encoding = encoding
                    return self._accept(response, len(texts))
                if status in (400, 422) and encoding == "base64":
                    base64_refused = True  # a server that knows only floats; a real refusal comes again
                    continue
                if status not in RETRIED_STATUSES and status < 500:
                    if status in (401, 403):  # the key is read again for the next request: fixed without a restart
                        await self.aclose()
                    raise self._refused(response)
                why, retry_after = f"HTTP {status}: {server_message(response)}", response.headers.get("retry-after")
            if attempt >= settings.retries:
                stats.failures += 1
                stats.last_error = why
                raise QmddError(ErrorCode.BACKEND_UNAVAILABLE,
                                f"the remote embedder at {settings.url} failed {attempt + 1} time(s): {why}",
                                hints=(f"Check that {self._endpoint} answers (remote_url is the base URL with "
                                       "its /v1); keyword search keeps working meanwhile.",))
            stats.retries += 1
            delay = retry_delay(attempt, retry_after)
            log.info("remote embedder: %s; retry %d in %.1fs", why, attempt + 1, delay)
            attempt += 1
            await trio.sleep(delay)

    def _accept(self, response: httpx.Response, count: int) -> tuple[np.ndarray, int]:
        try:
            vectors, tokens = parse_answer(response.json(), count, self.dims)
        except (BadAnswer, ValueError) as exc:
            self.stats.failures += 1
            self.stats.last_error = f"bad answer: {exc}"
            raise QmddError(ErrorCode.EMBEDDING_FAILED, f"the remote embedder at {self.settings.url} answered "
                            f"badly: {sanitised(str(exc))}",
                            hints=("Check that remote_url is an OpenAI-compatible embeddings API.",)) from None
        if not self.dims:
            self.dims = vectors.shape[1]
        self.stats.texts += count
        return vectors, tokens

    def _refused(self, response: httpx.Response) -> QmddError:
        status, url = response.status_code, self.settings.url
        said = server_message(response)
        self.stats.failures += 1
        self.stats.last_error = f"HTTP {status}: {said}"
        if status in (401, 403):
            return QmddError(ErrorCode.UNAUTHORIZED, f"the remote embedder at {url} refused the key ({status}): "
                             f"{said}", hints=("Check the key in remote_key_file (read again at the next request) or "
                                              "remote_key_env's variable (read when the daemon starts).",))
        if status == 404:
            return QmddError(ErrorCode.MODEL_NOT_FOUND, f"the remote embedder at {url} answered 404: {said}",
                             hints=(f"remote_model is {self.settings.model!r}: is it the server's name for it?",
                                    f"remote_url is the base URL with its /v1: POSTs go to {self._endpoint}."))
        if status in (400, 413, 422):
            return QmddError(ErrorCode.INVALID_INPUT, f"the remote embedder at {url} refused the texts "
                             f"({status}): {said}", hints=("A smaller remote_batch may help.",))
        return QmddError(ErrorCode.EMBEDDING_FAILED, f"the remote embedder at {url} answered {status}: {said}")
