"""Bulk embedding by a pool of `qmdd worker`s over NATS (embed_nats), with the local model as fallback.

nats-py speaks asyncio only, so it runs on an asyncio loop in a thread of its own (NatsBridge); a trio
task that asks for a batch waits on a trio.Event which the asyncio side sets through the trio token,
holding no thread while it waits. Texts go BATCH_TEXTS at a time, at most `in_flight` batches at the
pool at once, each to the subject of the local model's fingerprint (models/natswire.py), so every vector
is one the local model would give. Nothing is lost: no worker (or no NATS) → that batch is embedded
locally at once; no answer within `timeout_s` (a worker died with it) → sent once more, then locally;
a bad or error reply → locally.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from qmdd.config import Config, display_url
from qmdd.models.natswire import BadReply, decode_reply, encode_request
from qmdd.protocol.errors import unwrap_error

log = logging.getLogger("qmdd.natspool")

# ~25 KB of chunks a request, ~25 KB of vectors a reply (far under NATS's 1 MB payload), and a page of
# `embed` (128 chunks, embed_jobs.py) is 8 batches: as many workers as the default in_flight work on it.
BATCH_TEXTS = 16
CLOSE_S = 2.0
MAX_WORKERS_SHOWN = 32  # answers counted per worker (host:pid) in status; restarted workers are new ones
Local = Callable[[list[str]], Awaitable[tuple[np.ndarray, int]]]
"""Embeds a batch with the local model: (vectors, tokens)."""


@dataclass(frozen=True)
class PoolSettings:
    url: str
    in_flight: int = 8
    timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings | None:
        if not config.embed_nats:
            return None
        return cls(config.embed_nats, config.embed_nats_in_flight, config.embed_nats_timeout_s)


class NoWorker(Exception):
    """Nobody can take the batch now (no NATS connection, no worker on the subject): embed it here."""


class Lost(Exception):
    """A worker took the batch but did not answer in time."""


class NatsBridge:
    """A nats-py client on an asyncio loop in its own thread. It connects in the background and keeps
    reconnecting, so a NATS server down when the daemon starts is used once it is up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.state = "connecting"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="qmdd-nats", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), loop)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def _connect(self) -> None:
        try:
            import nats
        except ImportError:
            self.state = "unavailable: nats-py is not installed (pip install 'qmdd[nats]')"
            log.warning("embed_nats is set but nats-py is not installed: embedding locally")
            return
        warned = False

        async def on_error(exc: Exception) -> None:
            nonlocal warned
            if self.state == "connected":
                log.info("NATS: %s", exc)
                return
            if self._client is None and not warned:  # failing to connect: said once, retried quietly
                warned = True
                self.state = f"unreachable: {exc}"
                log.warning("NATS at %s unreachable (%s): embedding locally until it answers",
                            display_url(self.url), exc)
            log.debug("NATS: %s", exc)

        async def on_disconnect() -> None:
            if self.state == "connected":  # called again at each failed reconnect
                log.warning("NATS at %s lost: embedding locally until it is back", display_url(self.url))
            self.state = "disconnected: reconnecting"

        async def on_reconnect() -> None:
            self.state = "connected"
            log.info("NATS at %s back", display_url(self.url))

        # max_reconnect_attempts=-1: connect() itself retries until a server answers.
        self._client = await nats.connect(self.url, name="qmdd", connect_timeout=2, reconnect_time_wait=2,
                                          max_reconnect_attempts=-1, error_cb=on_error,
                                          disconnected_cb=on_disconnect, reconnected_cb=on_reconnect)
        self.state = "connected"
        log.info("NATS at %s connected: bulk embedding goes to the worker pool", display_url(self.url))

    async def _ask(self, subject: str, payload: bytes, within_s: float) -> bytes:
        if not self.connected:
            raise NoWorker(f"not connected to NATS ({self.state})")
        from nats import errors  # installed: a client exists

        try:
            message = await self._client.request(subject, payload, timeout=within_s)
        except errors.NoRespondersError:
            raise NoWorker("no worker listens for this model") from None
        except errors.TimeoutError:
            raise Lost(f"no answer within {within_s:g}s") from None
        except errors.Error as exc:  # the connection closed or broke under the request, a payload too big
            raise NoWorker(f"NATS: {exc}") from None
        data: bytes = message.data
        return data

    async def request(self, subject: str, payload: bytes, within_s: float) -> bytes:
        """The reply to one request, due within `within_s` (nats-py's own timeout, on the asyncio side).
        Raises NoWorker or Lost. A cancelled caller cancels the request."""
        if self._loop is None or self._closed:
            raise NoWorker("the NATS client is closed")
        token = trio.lowlevel.current_trio_token()
        answered = trio.Event()

        def wake(_: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(answered.set)

        future = asyncio.run_coroutine_threadsafe(self._ask(subject, payload, within_s), self._loop)
        future.add_done_callback(wake)
        try:
            await answered.wait()
        finally:
            future.cancel()  # a no-op once done; else the asyncio side stops waiting too
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # the client closed under it (close())
            raise NoWorker("the NATS client is closed") from None

    async def _shutdown(self) -> None:
        if self._client is not None:
            from nats import errors

            try:
                await asyncio.wait_for(self._client.close(), CLOSE_S)
            except (TimeoutError, OSError, errors.Error) as exc:  # closing what may be broken already
                log.info("NATS close: %r", exc)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:  # a connect() still retrying, requests of cancelled callers
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        """Blocking (run it in a thread): the connection closed, the loop stopped, its thread ended."""
        loop, thread, self._closed = self._loop, self._thread, True
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(2 * CLOSE_S)
        except TimeoutError:
            log.warning("the NATS client did not close within %gs", 2 * CLOSE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_S)
        if not thread.is_alive():
            loop.close()


@dataclass
class PoolStats:
    sent: int = 0
    answered: int = 0
    fallen_back: int = 0
    resent: int = 0
    bad_replies: int = 0
    texts: int = 0
    latency_s: float = 0.0
    last_fallback: str = ""
    workers: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "fallen_back": self.fallen_back,
                "resent": self.resent, "bad_replies": self.bad_replies, "texts": self.texts,
                "mean_latency_ms": round(1000 * self.latency_s / self.answered, 1) if self.answered else 0.0,
                "last_fallback": self.last_fallback, "workers": dict(self.workers)}


class NatsPool:
    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.stats = PoolStats()
        self._bridge = NatsBridge(settings.url)
        self._limiter = trio.CapacityLimiter(settings.in_flight)

    def start(self) -> None:
        self._bridge.start()

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._bridge.close)

    def status(self) -> dict[str, Any]:
        state = self._bridge.state
        warning = {} if state == "connected" else {"warning": f"worker pool not in use ({state}): bulk "
                                                              "embedding runs here"}
        return {"url": display_url(self.settings.url), "state": state, **warning, **self.stats.as_dict()}

    async def embed(self, subject: str, dims: int, texts: list[str], kind: str, local: Local
                    ) -> tuple[np.ndarray, int]:
        """(float32 rows for `texts` in order, tokens): from the pool where it answers, else from `local`."""
        parts = [texts[start:start + BATCH_TEXTS] for start in range(0, len(texts), BATCH_TEXTS)]
        answers: list[tuple[np.ndarray, int]] = [(np.zeros((0, dims), dtype=np.float32), 0)] * len(parts)

        async def one(i: int) -> None:
            answers[i] = await self._batch(subject, dims, parts[i], kind, local)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(parts)):
                    nursery.start_soon(one, i)
        except BaseExceptionGroup as group:
            error = unwrap_error(group)
            if error is None:  # cancellation or a bug: not ours to translate
                raise
            raise error from None
        if not parts:
            return np.zeros((0, dims), dtype=np.float32), 0
        return np.concatenate([vectors for vectors, _ in answers]), sum(tokens for _, tokens in answers)

    async def _batch(self, subject: str, dims: int, texts: list[str], kind: str, local: Local
                     ) -> tuple[np.ndarray, int]:
        stats, payload = self.stats, encode_request(texts, kind)
        why = ""
        for attempt in range(2):
            async with self._limiter:
                stats.sent += 1
                started = time.monotonic()
                try:
                    data = await self._bridge.request(subject, payload, self.settings.timeout_s)
                except NoWorker as exc:
                    why = str(exc)
                    break
                except Lost as exc:
                    why = f"{exc} (sent {attempt + 1} time(s))"
                    if attempt == 0:
                        stats.resent += 1
                        log.info("worker pool: %s; sending the batch again", exc)
                    continue
            try:
                vectors, tokens, worker = decode_reply(data, len(texts), dims)
            except BadReply as exc:
                stats.bad_replies += 1
                why = f"bad reply: {exc}"
                log.warning("worker pool: %s", why)
                break
            stats.answered += 1
            stats.texts += len(texts)
            stats.latency_s += time.monotonic() - started
            if worker in stats.workers or len(stats.workers) < MAX_WORKERS_SHOWN:
                stats.workers[worker] = stats.workers.get(worker, 0) + 1
            return vectors, tokens
        stats.fallen_back += 1
        stats.last_fallback = why
        log.debug("worker pool: %s; embedding %d texts here", why, len(texts))
        return await local(texts)
