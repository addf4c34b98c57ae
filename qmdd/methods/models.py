"""Models and vectors: `embed`, `model.list`, `model.import`, `model.use`; the model part of `status`."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import trio

from qmdd.actors.base import typed_outcome
from qmdd.actors.messages import CatchUp, EmbedCollections, ModelStatus, SetFingerprint, UseModel
from qmdd.methods.call import Call, MethodHandler, planned
from qmdd.methods.progress import progress_pump
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store import documents as docs
from qmdd.store import embeddings as emb


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"embed": partial(embed, s), "model.list": partial(list_, s), "model.import": partial(import_, s),
            "model.use": partial(use, s)}


async def embed(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    """Embed what lacks a vector in these collections (all, when none is named), and keep them embedded."""
    names = params["collections"]
    for key in ("max_chunks_per_page", "max_page_bytes"):
        if params[key] is not None and params[key] < 1:
            raise QmddError(ErrorCode.INVALID_INPUT, f"{key} must be a positive integer, got {params[key]}",
                            hints=("Leave it out for the default page.",))
    if params["timeout_s"] is not None and params["timeout_s"] < 0:
        raise QmddError(ErrorCode.INVALID_INPUT, f"timeout_s must be 0 (no limit) or more, got {params['timeout_s']}")
    ids = [docs.collection_by_name(s.reader, n).id for n in names] if names else None
    send, receive = trio.open_memory_channel[dict[str, Any]](64)
    async with progress_pump(call.emit) as progress, trio.open_nursery() as nursery:
        nursery.start_soon(progress.follow, receive)
        async with send:
            summary: dict[str, Any] = await s.actors.embed_jobs.call(EmbedCollections(
                ids, progress=send, force=params["force"], page_chunks=params["max_chunks_per_page"],
                page_bytes=params["max_page_bytes"], timeout_s=params["timeout_s"] or None))
    return summary


async def list_(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    models = await trio.to_thread.run_sync(s.registry.list_models)
    status = await s.actors.embedder.call(ModelStatus())
    if "remote" in status:  # a server makes the embeddings: no local model does, whatever is selected
        for model in models:
            model["in_use"] = [role for role in model["in_use"] if role != "embedding"]
        models.insert(0, {"name": status["embedding"], "kind": "embedding", "pooling": "server's",
                          "max_length": None, "source": s.config.remote_url, "installed": True, "converted": False,
                          "dims": status["dims"] or None, "in_use": ["embedding"]})
    return {"models": models, "device": status["device"], "compute_type": status["compute_type"],
            "fingerprint": status["fingerprint"]}


async def import_(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    manifest = await trio.to_thread.run_sync(
        s.registry.import_checkpoint, Path(params["path"]), params["name"], params["kind"],
        params["pooling"], params["max_length"])
    return {"name": manifest["name"], "kind": manifest["kind"], "pooling": manifest["pooling"],
            "max_length": manifest["max_length"], "hidden_size": manifest["hidden_size"],
            "hint": f"Use it with `qmdctl model use {manifest['name']}`."}


async def use(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    name = params["name"]
    if name in (None, "", "none", "default"):
        name = None
    role = params["role"]
    if role is None:
        role = "embedding" if name is None else s.registry.choice(name).kind
    if params["dry_run"]:
        chosen = await trio.to_thread.run_sync(s.registry.check_selection, role, name)
        return planned({"role": role, "name": chosen})
    result: dict[str, Any] = await s.actors.embedder.call(UseModel(role, name))
    if role == "embedding":
        result["vectors"] = await s.actors.vectors.call(SetFingerprint(result["fingerprint"], result["dims"]))
        # A background run of the old model has failed; the chosen collections are looked at again for
        # this one (re-embedded where it already has vectors: switching back to a model used before).
        await typed_outcome(s.actors.embed_jobs.call, CatchUp())  # an actor down is status's to report
        total, embedded = await trio.to_thread.run_sync(emb.count_chunks, s.reader, result["fingerprint"])
        if embedded < total:
            result["hint"] = f"{total - embedded} chunk(s) need `qmdctl embed` for this model."
    return result


async def model_status(s: Services) -> dict[str, Any]:
    """The models, and under `collections` each collection's vector coverage by name."""
    model: dict[str, Any] = await s.actors.embedder.call(ModelStatus())
    fingerprint = model["fingerprint"]
    covered, chosen = await trio.to_thread.run_sync(_coverage, s, fingerprint)
    model["collections"] = {c.name: {"chunks": covered.get(c.id, (0, 0))[0],
                                     "embedded": covered.get(c.id, (0, 0))[1], "auto_embed": c.id in chosen}
                            for c in docs.list_collections(s.reader)}
    if fingerprint:
        model["chunks"] = sum(chunks for chunks, _ in covered.values())
        model["embedded"] = sum(embedded for _, embedded in covered.values())
    return model


def _coverage(s: Services, fingerprint: str | None) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    return emb.coverage(s.reader, fingerprint), emb.chosen_collections(s.reader)
