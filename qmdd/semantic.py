"""RPC methods of semantic search: embed, vsearch, query, and the model commands."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import outcome
import trio

from qmdd.actors.base import typed_outcome
from qmdd.protocol import (
    EmbedTexts,
    IndexEmbedded,
    ModelStatus,
    SaveSnapshot,
    SetFingerprint,
    StoreEmbeddings,
    UseModel,
)
from qmdd.rpc import Call
from qmdd.search.hybrid import Engines, hybrid_search, vector_search
from qmdd.search.pipeline import SearchRequest, search_request
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb
from qmdd.store.documents import DocRow

if TYPE_CHECKING:
    from qmdd.api import Api

log = logging.getLogger("qmdd.semantic")

# Chunks per page: a page is embedded, then committed. ~1 s of CPU here, so a daemon that is stopped or
# killed often still makes progress; the embedder's batcher splits a page by tokens.
EMBED_PAGE = 128


class SemanticApi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.s = api.s
        self.engines = Engines(self.s.reader, self.s.bm25, self.s.embedder, self.s.vectors, self.s.tokenizer,
                               self.s.registry.selected_is_latin_only)
        self.embed_lock = trio.Lock()  # one embed run at a time; a second caller waits, then finds it done

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
        return await self._finish(answer, rows, request, call)

    async def query(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        request = search_request(params)
        answer, rows = await hybrid_search(self.engines, request, rerank=params["rerank"],
                                           candidates=max(1, min(params["candidates"], 1000)))
        return await self._finish(answer, rows, request, call)

    async def embed(self, params: dict[str, Any], call: Call) -> dict[str, Any]:
        model = await self.s.embedder.call(ModelStatus(load=True))
        collection_ids = None
        if params["collections"]:
            collection_ids = [docs.collection_by_name(self.s.reader, n).id for n in params["collections"]]
        return await self._embed_pending(model, collection_ids, call.emit)

    async def _embed_pending(self, model: dict[str, Any], collection_ids: list[int] | None,
                             emit: Callable[[str, Any], Awaitable[None]]) -> dict[str, Any]:
        """Embed every chunk without a vector for `model`, a page at a time, each page committed."""
        fingerprint: str = model["fingerprint"]
        async with self.embed_lock:
            await self.s.vectors.call(SetFingerprint(fingerprint, model["dims"]))
            total, embedded = await trio.to_thread.run_sync(emb.count_chunks, self.s.reader, fingerprint)
            started = time.monotonic()
            done = texts = 0
            after = 0
            await emit("progress", {"phase": "embed", "done": 0, "total": total - embedded,
                                    "model": model["embedding"]})
            while True:
                page = await trio.to_thread.run_sync(emb.pending_chunks, self.s.reader, fingerprint, after,
                                                     EMBED_PAGE, collection_ids)
                if not page:
                    break
                after = page[-1].chunk_id
                unique: dict[str, str] = {}
                for chunk in page:  # identical texts (copies, boilerplate) are embedded once
                    unique.setdefault(chunk.hash, chunk.text)
                hashes = list(unique)
                vectors = await self.s.embedder.call(EmbedTexts(list(unique.values()), "bulk"))
                await self.s.indexer.call(StoreEmbeddings(fingerprint, hashes, vectors.astype(np.float16)))
                await self.s.vectors.call(IndexEmbedded(fingerprint, hashes, vectors))
                done += len(page)
                texts += len(hashes)
                elapsed = time.monotonic() - started
                await emit("progress", {"phase": "embed", "done": done, "total": total - embedded,
                                        "chunks_per_s": round(done / elapsed, 1) if elapsed else None})
            await self.s.vectors.call(SaveSnapshot())
        elapsed = time.monotonic() - started
        return {"model": model["embedding"], "fingerprint": fingerprint, "chunks": total,
                "already_embedded": embedded, "embedded": done, "texts_embedded": texts,
                "seconds": round(elapsed, 3), "chunks_per_s": round(done / elapsed, 1) if done and elapsed else None}

    async def keep_embedded(self, indexed: trio.MemoryReceiveChannel[int]) -> None:
        """Runs while the daemon serves: after the watcher indexed new chunks, embed them (at bulk
        priority, behind every query) — but only once the user has vectors for the model in use, so a
        keyword-only user never pays for a model. A failure (no model, an embedder given up on) is
        logged and waits for the next change: it must never take the daemon down."""
        async for _ in indexed:
            ran = await typed_outcome(self._embed_new_chunks)
            if isinstance(ran, outcome.Error):
                log.warning("embedding the watcher's changes failed: %s", ran.error)
                continue
            result = ran.unwrap()
            if result is not None:
                log.info("embedded %d new chunk(s) in %.2fs", result["embedded"], result["seconds"])

    async def _embed_new_chunks(self) -> dict[str, Any] | None:
        model = await self.s.embedder.call(ModelStatus())
        if not model["fingerprint"]:
            return None
        total, embedded = await trio.to_thread.run_sync(emb.count_chunks, self.s.reader, model["fingerprint"])
        if embedded == 0 or embedded == total:
            return None

        async def no_progress(kind: str, payload: Any) -> None:
            return None

        return await self._embed_pending(await self.s.embedder.call(ModelStatus(load=True)), None, no_progress)

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
        model: dict[str, Any] = await self.s.embedder.call(ModelStatus())
        if model["fingerprint"]:
            total, embedded = await trio.to_thread.run_sync(emb.count_chunks, self.s.reader, model["fingerprint"])
            model["chunks"] = total
            model["embedded"] = embedded
        return model
