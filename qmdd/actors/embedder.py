"""Embedder actor: owns the models and batches every embedding request, queries first.

Requests from many clients (index jobs and queries) are split into texts, tokenized, and queued;
worker tasks (one per CTranslate2 worker) take batches bounded by padded tokens. Queries are taken
before bulk texts, and while queries are arriving one worker is kept free of bulk work, so a running
`embed` never makes a search wait for a whole bulk batch. A request is handled beside the inbox and
answered when its last text is done. If this actor crashes, the requests it held are put back into its
inbox for the restarted instance (once), so a crash mid-batch costs a retry, not an answer.

With remote_url set, embeddings come from that server instead (models/remote.py, which keeps queries
apart from bulk texts with limiters of its own); the reranker stays local. With embed_nats set, bulk
texts go to `qmdd worker`s over NATS (models/natspool.py), each batch this embedder's own when no
worker takes it; queries stay here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import outcome
import trio

from qmdd import faults
from qmdd.actors.base import Actor, Envelope, Handler, Mailbox, concurrent, send_reply, typed_outcome
from qmdd.actors.messages import EmbedCounted, Embedded, EmbedTexts, ModelStatus, RerankPairs, UseModel
from qmdd.models.natspool import NatsPool, PoolSettings
from qmdd.models.natswire import subject_for
from qmdd.models.registry import ModelChoice, ModelRegistry, prefixed
from qmdd.models.remote import RemoteEmbedder, RemoteSettings
from qmdd.models.runtime import LoadedModel
from qmdd.protocol.errors import ErrorCode, QmddError

log = logging.getLogger("qmdd.embedder")

MAX_ATTEMPTS = 2
QUERY_COALESCE_S = 0.001
INTERACTIVE_S = 3.0  # after a query, keep a worker free of bulk work this long
MAX_BATCH_ITEMS = 128


class _Job:
    """One EmbedTexts request's texts in the queues; its handler waits for `done`."""

    __slots__ = ("vectors", "remaining", "error", "done")

    def __init__(self, count: int, dims: int) -> None:
        self.vectors = np.zeros((count, dims), dtype=np.float32)
        self.remaining = count
        self.error: QmddError | None = None
        self.done = trio.Event()


class _Item:
    __slots__ = ("job", "index", "ids")

    def __init__(self, job: _Job, index: int, ids: list[int]) -> None:
        self.job = job
        self.index = index
        self.ids = ids


class BatchStats:
    def __init__(self) -> None:
        self.batches = {"query": 0, "bulk": 0}
        self.texts = {"query": 0, "bulk": 0}
        self.tokens = 0
        self.padded_tokens = 0
        self.inference_s = 0.0
        self.requests = 0
        self.retried = 0
        self.reranked = 0

    def as_dict(self) -> dict[str, Any]:
        batches = sum(self.batches.values())
        return {"requests": self.requests, "batches": dict(self.batches), "texts": dict(self.texts),
                "mean_batch_texts": round(sum(self.texts.values()) / batches, 2) if batches else 0.0,
                "tokens": self.tokens,
                "padding_overhead": round(self.padded_tokens / self.tokens - 1, 3) if self.tokens else 0.0,
                "inference_s": round(self.inference_s, 3), "retried": self.retried, "reranked": self.reranked}


class EmbedderActor(Actor):
    name = "embedder"

    def __init__(self, registry: ModelRegistry, mailbox: Mailbox, loader: Callable[[str], LoadedModel], *,
                 device: str, compute_type: str,
                 threads: int, workers: int, batch_tokens: int, chunking: str, idle_unload_s: float,
                 preload: bool = False, remote: RemoteSettings | None = None, pool: PoolSettings | None = None
                 ) -> None:
        super().__init__()
        self._remote = RemoteEmbedder(remote) if remote is not None else None
        self._pool = NatsPool(pool) if pool is not None else None
        self._registry = registry
        self._mailbox = mailbox
        self._loader = loader  # model name -> loaded model; blocking, run in a thread
        self._device, self._compute_type = device, compute_type
        self._threads, self._workers = threads, workers
        self._batch_tokens = batch_tokens
        self._chunking = chunking
        self._idle_unload_s = idle_unload_s
        self._preload = preload
        self._models: dict[str, LoadedModel] = {}
        self._load_s: dict[str, float] = {}
        self._queries: deque[_Item] = deque()
        self._bulk: deque[_Item] = deque()
        self._jobs: set[_Job] = set()
        self._work = trio.lowlevel.ParkingLot()
        self._bulk_running = 0
        self._last_query = -INTERACTIVE_S
        self._last_used = time.monotonic()
        self._cpu = trio.CapacityLimiter(workers)
        self._tokenizing = trio.CapacityLimiter(1)  # bulk requests are tokenized one at a time
        self._loading = trio.Lock()
        self.batch_stats = BatchStats()

    def handlers(self) -> dict[type, Handler]:
        return {EmbedTexts: concurrent(self._embed), EmbedCounted: concurrent(self._embed_counted),
                RerankPairs: self._rerank, ModelStatus: self._status, UseModel: self._use}

    async def setup(self) -> None:
        for _ in range(self._workers):
            self.nursery.start_soon(self._worker)
        if self._idle_unload_s > 0:
            self.nursery.start_soon(self._unload_when_idle)
        if self._preload and self._remote is None:
            self.nursery.start_soon(self._load_quietly)
        if self._pool is not None:
            self._pool.start()

    async def teardown(self) -> None:
        self._queries.clear()
        self._bulk.clear()
        if self._remote is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):  # its sockets, even when cancelled
                await self._remote.aclose()
        if self._pool is not None:
            with trio.CancelScope(shield=True):  # its thread and connection; bounded by NatsBridge.close
                await self._pool.aclose()

    def abandon(self, envelope: Envelope) -> None:
        """Hand a request this instance held back to the inbox, for the next one (or fail it for good)."""
        envelope.attempts += 1
        if envelope.attempts >= MAX_ATTEMPTS:
            send_reply(envelope, outcome.Error(QmddError(
                ErrorCode.EMBEDDING_FAILED, "the embedder failed on this request twice")))
            return
        try:
            self._mailbox.send_nowait(envelope)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            send_reply(envelope, outcome.Error(QmddError(
                ErrorCode.BACKEND_UNAVAILABLE, "the embedder is stopping or overloaded")))
            return
        self.batch_stats.retried += 1

    # --- models ------------------------------------------------------------------------------------

    def choice(self, role: str) -> ModelChoice | None:
        name = self._registry.selection()[role]
        return None if name is None else self._registry.choice(name)

    async def model(self, role: str) -> LoadedModel:
        """The loaded model for `role`, loading (and converting, the first time) on demand."""
        async with self._loading:
            name = self._registry.selection()[role]
            if name is None:
                raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"no {role} model is configured")
            loaded = self._models.get(role)
            if loaded is not None and loaded.manifest.get("name") == name:
                return loaded
            started = time.monotonic()
            loaded = await trio.to_thread.run_sync(self._loader, name)
            self._models[role] = loaded
            self._load_s[role] = round(time.monotonic() - started, 3)
            log.info("%s model %s loaded on %s/%s in %.2fs", role, name, self._device, self._compute_type,
                     self._load_s[role])
            return loaded

    async def _load_quietly(self) -> None:
        """Warm up in the background, so the first vsearch after a start does not pay the load."""
        loaded = await typed_outcome(self.model, "embedding")
        if isinstance(loaded, outcome.Error):
            log.warning("embedding model not preloaded: %s", loaded.error)

    async def _embed(self, message: EmbedTexts) -> np.ndarray:
        return (await self._embedded(message.texts, message.priority, message.kind)).vectors

    async def _embed_counted(self, message: EmbedCounted) -> Embedded:
        return await self._embedded(message.texts, message.priority, message.kind)

    async def _embedded(self, texts: list[str], priority: str, kind: str) -> Embedded:
        self.batch_stats.requests += 1
        if self._remote is not None:
            return await self._remote_embedded(self._remote, texts, priority, kind)
        if self._pool is not None and priority == "bulk" and texts:
            return await self._pooled(self._pool, texts, kind or "passage")
        return await self._local(texts, priority, kind)

    async def _local(self, texts: list[str], priority: str, kind: str) -> Embedded:
        model = await self.model("embedding")
        name = str(model.manifest.get("name"))
        self._last_used = time.monotonic()
        if not texts:
            return Embedded(np.zeros((0, model.dims), dtype=np.float32), 0, name)
        job = _Job(len(texts), model.dims)
        self._jobs.add(job)  # from now on the model is neither unloaded nor switched under it unnoticed
        try:
            query = priority == "query"
            marked = prefixed(model.manifest, kind or ("query" if query else "passage"), texts)
            if query:
                self._last_query = time.monotonic()
                ids = model.token_ids(marked)
            else:
                ids = await trio.to_thread.run_sync(model.token_ids, marked, limiter=self._tokenizing)
            if job in self._jobs:  # not failed by `model use` while it was tokenized
                # Sorted by length, a bulk request's texts batch with little padding.
                order = range(len(ids)) if query else sorted(range(len(ids)), key=lambda i: len(ids[i]))
                (self._queries if query else self._bulk).extend(_Item(job, i, ids[i]) for i in order)
                self._work.unpark_all()
            await job.done.wait()
        finally:
            self._jobs.discard(job)
        if job.error is not None:
            raise job.error
        return Embedded(job.vectors, sum(map(len, ids)), name)

    async def _pooled(self, pool: NatsPool, texts: list[str], kind: str) -> Embedded:
        # Loaded even when the pool takes everything: it is the fallback, and its dims check the replies.
        model = await self.model("embedding")
        fingerprint = self.fingerprint()[0]

        async def here(part: list[str]) -> tuple[np.ndarray, int]:
            embedded = await self._local(part, "bulk", kind)
            return embedded.vectors, embedded.tokens

        vectors, tokens = await pool.embed(subject_for(str(fingerprint)), model.dims, texts, kind, here)
        if self.fingerprint()[0] != fingerprint:  # `model use` while the pool worked: old vectors
            raise QmddError(ErrorCode.EMBEDDING_FAILED, "the embedding model changed; retry")
        return Embedded(vectors, tokens, str(model.manifest.get("name")))

    async def _remote_embedded(self, remote: RemoteEmbedder, texts: list[str], priority: str, kind: str
                               ) -> Embedded:
        self._last_used = time.monotonic()
        vectors, tokens = await remote.embed(texts, kind or ("query" if priority == "query" else "passage"), priority)
        return Embedded(vectors, tokens, remote.settings.name)

    # --- batching ----------------------------------------------------------------------------------

    def _bulk_slots(self) -> int:
        interactive = time.monotonic() - self._last_query < INTERACTIVE_S
        return max(1, self._workers - 1) if interactive else self._workers

    def _take(self, queue: deque[_Item]) -> list[_Item]:
        batch: list[_Item] = []
        longest = 0
        while queue and len(batch) < MAX_BATCH_ITEMS:
            width = max(longest, len(queue[0].ids))
            if batch and width * (len(batch) + 1) > self._batch_tokens:
                break
            longest = width
            batch.append(queue.popleft())
        return batch

    async def _worker(self) -> None:
        while True:
            if self._queries:
                await trio.sleep(QUERY_COALESCE_S)  # let concurrent queries join this batch
                kind, batch = "query", self._take(self._queries)
            elif self._bulk and self._bulk_running < self._bulk_slots():
                kind, batch = "bulk", self._take(self._bulk)
            else:
                await self._work.park()
                continue
            if not batch:
                continue
            model = self._models.get("embedding")
            if model is None:  # unloaded or switched while queued: fail these, never mix models
                self._fail({item.job for item in batch}, "the embedding model changed; retry")
                continue
            self._bulk_running += kind == "bulk"
            try:
                faults.check(f"embedder.{kind}_batch")
                started = time.monotonic()
                vectors = await trio.to_thread.run_sync(model.embed_ids, [item.ids for item in batch],
                                                        limiter=self._cpu)
                self._account(kind, batch, time.monotonic() - started)
            finally:
                self._bulk_running -= kind == "bulk"
                self._work.unpark_all()
            for item, vector in zip(batch, vectors, strict=True):
                job = item.job
                job.vectors[item.index] = vector
                job.remaining -= 1
                if job.remaining == 0 and job in self._jobs:
                    self._jobs.discard(job)
                    job.done.set()

    def _account(self, kind: str, batch: list[_Item], seconds: float) -> None:
        stats = self.batch_stats
        stats.batches[kind] += 1
        stats.texts[kind] += len(batch)
        stats.tokens += sum(len(item.ids) for item in batch)
        stats.padded_tokens += max(len(item.ids) for item in batch) * len(batch)
        stats.inference_s += seconds
        self._last_used = time.monotonic()

    def _fail(self, jobs: set[_Job], why: str) -> None:
        for job in jobs:
            if job in self._jobs:
                self._jobs.discard(job)
                job.error = QmddError(ErrorCode.EMBEDDING_FAILED, why)
                job.done.set()

    async def _unload_when_idle(self) -> None:
        while True:
            await trio.sleep(min(self._idle_unload_s, 5.0))
            idle = time.monotonic() - self._last_used
            if self._models and idle >= self._idle_unload_s and not self._jobs:
                async with self._loading:
                    log.info("models idle for %.0fs: unloading", idle)
                    self._models.clear()

    # --- other messages ------------------------------------------------------------------------------

    async def _rerank(self, message: RerankPairs) -> list[float] | None:
        if self._registry.selection()["reranker"] is None or not message.texts:
            return None
        model = await self.model("reranker")
        self._last_used = time.monotonic()
        pairs = await trio.to_thread.run_sync(model.pair_ids, message.query, message.texts)
        scores: list[float] = []
        for start in range(0, len(pairs), 16):
            logits = await trio.to_thread.run_sync(model.score_pairs, pairs[start:start + 16], limiter=self._cpu)
            scores.extend((1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))).tolist())
        self.batch_stats.reranked += len(pairs)
        return scores

    def fingerprint(self) -> tuple[str | None, int]:
        if self._remote is not None:
            return self._remote.settings.fingerprint(self._chunking), self._remote.dims
        choice = self.choice("embedding")
        loaded = self._models.get("embedding")
        dims = loaded.dims if loaded is not None else 0
        return (None if choice is None else choice.fingerprint(self._compute_type, self._chunking)), dims

    async def _status(self, message: ModelStatus) -> dict[str, Any]:
        if message.load:
            await (self._remote.learn_dims() if self._remote is not None else self.model("embedding"))
        fingerprint, dims = self.fingerprint()
        chosen = self._registry.selection()
        remote = {} if self._remote is None else {"embedding": self._remote.settings.name,
                                                  "remote": self._remote.stats.as_dict()}
        remote.update({} if self._pool is None else {"nats": self._pool.status()})
        return {"embedding": chosen["embedding"], "reranker": chosen["reranker"], **remote, "fingerprint": fingerprint,
                "dims": dims, "device": self._device, "compute_type": self._compute_type,
                "threads": self._threads, "workers": self._workers,
                "loaded": {role: {"name": m.manifest.get("name"), "load_s": self._load_s.get(role),
                                  "size_bytes": m.size_bytes, "self_check_cosine": m.self_check_cosine}
                           for role, m in self._models.items()},
                "queued": {"query": len(self._queries), "bulk": len(self._bulk)},
                "batching": self.batch_stats.as_dict(), "batch_tokens": self._batch_tokens}

    async def _use(self, message: UseModel) -> dict[str, Any]:
        if self._remote is not None and message.role == "embedding":
            raise QmddError(ErrorCode.CONFIG_ERROR, f"embeddings come from {self._remote.settings.url} "
                            "(remote_url), not a local model",
                            hints=("Unset remote_url ([embed] url) to use a local model; `model use` still picks "
                                   "the reranker.",))
        async with self._loading:
            chosen = await trio.to_thread.run_sync(self._registry.select, message.role, message.name)
            self._models.pop(message.role, None)
        if message.role == "embedding":
            self._fail(set(self._jobs), "the embedding model changed; retry")
            self._queries.clear()
            self._bulk.clear()
            loaded = await self.model("embedding")
            fingerprint = self.choice("embedding")
            return {"selection": chosen, "dims": loaded.dims,
                    "fingerprint": fingerprint.fingerprint(self._compute_type, self._chunking) if fingerprint else None}
        return {"selection": chosen}

    def extra_statistics(self) -> dict[str, Any]:
        return {"device": self._device, "compute_type": self._compute_type, "loaded": sorted(self._models),
                "queued": {"query": len(self._queries), "bulk": len(self._bulk)}, **self.batch_stats.as_dict(),
                **({} if self._remote is None else {"remote": self._remote.stats.as_dict()}),
                **({} if self._pool is None else {"nats": self._pool.status()})}
