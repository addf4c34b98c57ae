"""The daemon itself: `ping`, `status`, `shutdown`, `cleanup`."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Any

import outcome

from qmdd import __version__
from qmdd.actors.base import typed_outcome
from qmdd.actors.messages import Cleanup, EmbedJobsStatus, ModelStatus
from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.collections import with_watch_state
from qmdd.methods.models import model_status
from qmdd.methods.services import Services
from qmdd.protocol.errors import QmddError
from qmdd.store import documents as docs


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"ping": partial(ping, s), "status": partial(status, s), "shutdown": partial(shutdown, s),
            "cleanup": partial(cleanup, s), "metrics": partial(metrics, s)}


async def metrics(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    """The Prometheus text exposition (version 0.0.4) of the daemon's metrics."""
    return {"text": s.metrics.exposition()}


async def ping(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    return {"pong": True, "pid": os.getpid(), "version": __version__}


async def shutdown(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    s.shutdown.set()
    return {"stopping": True, "pid": os.getpid()}


async def cleanup(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    model = await s.actors.embedder.call(ModelStatus())
    keep = [model["fingerprint"]] if model["fingerprint"] else []
    result: dict[str, Any] = await s.actors.indexer.call(Cleanup(keep))
    return result


async def _or_error(fn: Any, *args: Any) -> Any:
    """The answer of a part of `status`, or its typed error: an actor that is down must not take
    `status` (the place to see that it is down) with it."""
    answer = await typed_outcome(fn, *args)
    if isinstance(answer, outcome.Error) and isinstance(answer.error, QmddError):
        return {"error": answer.error.to_wire()}
    return answer.unwrap()


async def status(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    paths = s.config.paths
    sizes = {name: (p.stat().st_size if p.exists() else 0) for name, p in (
        ("database", paths.database), ("wal", paths.database.with_name(paths.database.name + "-wal")),
        ("bm25_snapshot", paths.bm25_snapshot), ("vector_snapshot", paths.vector_snapshot))}
    model = await _or_error(model_status, s)
    collections = await with_watch_state(s)
    vectors = model.pop("collections", {})
    for collection in collections:
        if collection["name"] in vectors:
            collection["vectors"] = vectors[collection["name"]]
    return {
        "version": __version__, "pid": os.getpid(), "time": time.time(),
        "uptime_s": round(time.time() - s.started_at, 1),
        "state": "degraded" if s.supervisor.degraded else "ok",
        "degraded_reason": s.supervisor.degraded_reason,
        "socket": str(paths.socket), "data_dir": str(paths.data_dir), "log_file": str(paths.log_file),
        "config_file": str(paths.config_file),
        "index_bytes": sizes, "collections": collections,
        "actors": s.supervisor.statistics(), "rpc": s.door_statistics(),
        "problems": docs.list_problems(s.reader), "model": model,
        "auto_embed": await _or_error(s.actors.embed_jobs.call, EmbedJobsStatus()),
    }
