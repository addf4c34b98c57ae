"""RPC methods of semantic search: embed, vsearch, query, and the model commands."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from qmdd import faults
from qmdd.actors.messages import (
    ChooseForEmbedding,
    EmbedTexts,
    IndexEmbedded,
    ModelStatus,
    SaveSnapshot,
    SetFingerprint,
    StoreEmbeddings,
    UseModel,
    VectorCoverage,
)
from qmdd.auto_embed import BackgroundEmbedder
from qmdd.chunking import embedding_text
from qmdd.protocol.errors import ErrorCode
from qmdd.search.hybrid import Engines, hybrid_search, vector_search
from qmdd.search.pipeline import SearchRequest, search_request
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb
from qmdd.store.documents import DocRow
from qmdd.store.embeddings import PendingChunk
from qmdd.transports.rpc import Call

if TYPE_CHECKING:
    from qmdd.api import Api

log = logging.getLogger("qmdd.semantic")

# Chunks per page: a page is embedded, then committed. ~1 s of CPU here, so a daemon that is stopped or
# killed often still makes progress; the embedder's batcher splits a page by tokens.
EMBED_PAGE = 128
# A long request says how it is doing at least this often, waiting included: a client's silence
# timeout (QMDD_TIMEOUT) must never fire on a run that is alive.
HEARTBEAT_S = 2.0


class ProgressPump:
    """Streams the latest progress of a long job: each change at once, and the latest again after every
    HEARTBEAT_S of silence (a wait, a slow page). The only task that emits on the call."""

    def __init__(self, emit: Callable[[str, Any], Awaitable[None]], interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._latest: dict[str, Any] | None = None
        self._changed = trio.Event()
        self._unsent = False

    def update(self, payload: dict[str, Any]) -> None:
        self._latest = payload
        self._unsent = True
        self._changed.set()

    def waiting(self, payload: dict[str, Any]) -> None:
        """What the job waits for: said only if the wait outlasts a heartbeat, so quick runs stay quiet."""
        self._latest = payload
        self._unsent = False

    async def pump(self) -> None:
        while True:
            with trio.move_on_after(self._interval):
                await self._changed.wait()
            self._changed = trio.Event()
            await self.flush(always=True)

    async def flush(self, *, always: bool = False) -> None:
        if self._latest is not None and (always or self._unsent):
            self._unsent = False
            await self._emit("progress", self._latest)


@asynccontextmanager
async def progress_pump(emit: Callable[[str, Any], Awaitable[None]]) -> AsyncIterator[ProgressPump]:
    progress = ProgressPump(emit, HEARTBEAT_S)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.pump)
        yield progress
        nursery.cancel_scope.cancel()
    await progress.flush()  # the last count, before the result


class SemanticApi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.s = api.s
        self.engines = Engines(self.s.reader, self.s.bm25, self.s.embedder, self.s.vectors, self.s.tokenizer,
                               self.s.registry.selected_is_latin_only)
        # One writer of vectors at a time. A manual embed holds it for its whole run (a second one waits,
        # then finds the work done), the background embedder for one page: the lock is fair, so a manual
        # embed waits for one background page at most.
        self.embed_lock = trio.Lock()
        self.background = BackgroundEmbedder(self, enabled=self.s.config.auto_embed and self.s.config.watch)

    def methods(self) -> dict[str, Any]:
        return {"embed": self.embed, "vsearch": self.vsearch, "query": self.query, "model.list": self.model_list,
                "model.import": self.model_import, "model.use": self.model_use}

    async def _finish(self, answer: dict[str, Any], rows: list[DocRow], request: SearchRequest,
                      call: Call) -> dict[str, Any]:
        from qmdd.api import stream_long_list

        if request.full:
            await self.api.attach_bodies(answer, rows)
        await stream_long_list(call, answer, "results")
        return answer

    async def vsearch(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        request = search_request(params)
        answer, rows = await vector_search(self.engines, request)
        await self._warn_unembedded(answer, params["collections"], "vector search finds nothing in it")
        return await self._finish(answer, rows, request, call)

    async def query(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        request = search_request(params)
        answer, rows = await hybrid_search(self.engines, request, rerank=params["rerank"],
                                           candidates=max(1, min(params["candidates"], 1000)))
        await self._warn_unembedded(answer, params["collections"], "its results come from keywords alone")
        return await self._finish(answer, rows, request, call)

    async def _warn_unembedded(self, answer: dict[str, Any], names: Sequence[str] | None, consequence: str) -> None:
        """A collection searched by name without a single vector answers by keywords or not at all: say so,
        and how to fix it. (An unfiltered search spans collections left unembedded on purpose: `status`
        shows each collection's coverage.)"""
        if not names or any(w["code"] == ErrorCode.INDEX_NOT_READY.value for w in answer.get("warnings", ())):
            return
        indexed: dict[int, int] = await self.s.vectors.call(VectorCoverage())
        for name in dict.fromkeys(names):
            collection = docs.collection_by_name(self.s.reader, name)
            if indexed.get(collection.id, 0) == 0 and emb.has_chunks(self.s.reader, collection.id):
                answer.setdefault("warnings", []).append({
                    "code": ErrorCode.INDEX_NOT_READY.value,
                    "message": f"collection {name!r} has no vectors for the model in use, so {consequence}",
                    "hints": [f"Run `qmdctl embed -c {name}` to embed it (new changes are then embedded "
                              "in the background)."]})

    async def embed(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        names = params["collections"]
        chosen = ([docs.collection_by_name(self.s.reader, n) for n in names] if names
                  else docs.list_collections(self.s.reader))
        async with progress_pump(call.emit) as progress:
            progress.waiting({"phase": "embed", "done": 0, "total": None, "waiting": "loading the model"})
            model = await self.s.embedder.call(ModelStatus(load=True))
            # The user's choice, kept: the background embedder keeps these collections embedded from now on.
            await self.s.indexer.call(ChooseForEmbedding([c.id for c in chosen]))
            return await self._embed_pending(model, [c.id for c in chosen] if names else None, progress)

    async def _embed_pending(self, model: dict[str, Any], collection_ids: list[int] | None,
                             progress: ProgressPump) -> dict[str, Any]:
        """Embed every chunk without a vector for `model` (of these collections, or of all), a page at a
        time, each page committed."""
        fingerprint: str = model["fingerprint"]
        progress.waiting({"phase": "embed", "done": 0, "total": None, "model": model["embedding"],
                          "waiting": "the embed run or background page in progress"})
        async with self.embed_lock:
            await self.s.vectors.call(SetFingerprint(fingerprint, model["dims"]))
            total, embedded = await trio.to_thread.run_sync(emb.count_chunks, self.s.reader, fingerprint,
                                                            collection_ids)
            started = time.monotonic()
            done = texts = 0
            after = 0
            progress.update({"phase": "embed", "done": 0, "total": total - embedded, "model": model["embedding"]})
            while True:
                page = await trio.to_thread.run_sync(emb.pending_chunks, self.s.reader, fingerprint, after,
                                                     EMBED_PAGE, collection_ids)
                if not page:
                    break
                after = page[-1].chunk_id
                texts += await self.embed_page(fingerprint, page)
                done += len(page)
                elapsed = time.monotonic() - started
                progress.update({"phase": "embed", "done": done, "total": total - embedded,
                                 "chunks_per_s": round(done / elapsed, 1) if elapsed else None})
            await self.s.vectors.call(SaveSnapshot())
        elapsed = time.monotonic() - started
        return {"model": model["embedding"], "fingerprint": fingerprint, "chunks": total,
                "already_embedded": embedded, "embedded": done, "texts_embedded": texts,
                "seconds": round(elapsed, 3), "chunks_per_s": round(done / elapsed, 1) if done and elapsed else None}

    async def embed_page(self, fingerprint: str, page: Sequence[PendingChunk]) -> int:
        """Embed, store and index one page of chunks (at bulk priority); returns the texts embedded."""
        await faults.pause("embed.page")
        unique: dict[str, str] = {}
        for chunk in page:  # identical texts (copies, boilerplate) are embedded once
            unique.setdefault(chunk.hash, embedding_text(chunk.title, chunk.heading_path, chunk.text))
        hashes = list(unique)
        vectors = await self.s.embedder.call(EmbedTexts(list(unique.values()), "bulk"))
        await self.s.indexer.call(StoreEmbeddings(fingerprint, hashes, vectors.astype(np.float16)))
        await self.s.vectors.call(IndexEmbedded(fingerprint, hashes, vectors))
        return len(hashes)

    async def keep_embedded(self, indexed: trio.MemoryReceiveChannel[int]) -> None:
        await self.background.run(indexed)

    async def model_list(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        models = await trio.to_thread.run_sync(self.s.registry.list_models)
        status = await self.s.embedder.call(ModelStatus())
        return {"models": models, "device": status["device"], "compute_type": status["compute_type"],
                "fingerprint": status["fingerprint"]}

    async def model_import(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        manifest = await trio.to_thread.run_sync(
            self.s.registry.import_checkpoint, Path(params["path"]), params["name"], params["kind"],
            params["pooling"], params["max_length"])
        return {"name": manifest["name"], "kind": manifest["kind"], "pooling": manifest["pooling"],
                "max_length": manifest["max_length"], "hidden_size": manifest["hidden_size"],
                "hint": f"Use it with `qmdctl model use {manifest['name']}`."}

    async def model_use(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        name = params["name"]
        if name in (None, "", "none", "default"):
            name = None
        role = params["role"]
        if role is None:
            role = "embedding" if name is None else self.s.registry.choice(name).kind
        result: dict[str, Any] = await self.s.embedder.call(UseModel(role, name))
        if role == "embedding":
            result["vectors"] = await self.s.vectors.call(SetFingerprint(result["fingerprint"], result["dims"]))
            total, embedded = await trio.to_thread.run_sync(emb.count_chunks, self.s.reader, result["fingerprint"])
            if embedded < total:
                result["hint"] = f"{total - embedded} chunk(s) need `qmdctl embed` for this model."
        return result

    async def status(self) -> dict[str, Any]:
        """The models, and under `collections` each collection's vector coverage by name."""
        model: dict[str, Any] = await self.s.embedder.call(ModelStatus())
        fingerprint = model["fingerprint"]
        covered, chosen = await trio.to_thread.run_sync(self._coverage, fingerprint)
        model["collections"] = {c.name: {"chunks": covered.get(c.id, (0, 0))[0],
                                         "embedded": covered.get(c.id, (0, 0))[1], "auto_embed": c.id in chosen}
                                for c in docs.list_collections(self.s.reader)}
        if fingerprint:
            model["chunks"] = sum(chunks for chunks, _ in covered.values())
            model["embedded"] = sum(embedded for _, embedded in covered.values())
        return model

    def _coverage(self, fingerprint: str | None) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
        return emb.coverage(self.s.reader, fingerprint), emb.chosen_collections(self.s.reader)
