"""Fault injection for tests and soak runs.

QMDD_FAULTS="point=count,..." makes `check(point)` raise InjectedFault (`check_os_error(point)`, an
OSError) the first `count` times it is reached in this process (a missing count means 1). Unset (always,
in normal use), `enabled` is false: the Actor template and the watcher test it before building a
point's name.

Points:

- ``actor.<actor>.<Message>``: in the Actor template's `_handle`, just before the handler of
  ``<Message>`` (a class name from qmdd.actors.messages) runs in actor ``<actor>`` (``bm25``, ``vectors``,
  ``embedder``, ``embed_jobs``, ``indexer``, ``watcher``). It fails like a bug in that handler: the
  caller gets BACKEND_UNAVAILABLE, the actor crashes and the supervisor restarts it (or, past the
  restart budget, gives up on it and the daemon reports itself degraded). Concurrent handlers are
  covered too. E.g. ``actor.bm25.Bm25Query`` (a search), ``actor.indexer.ScanCollections`` (an update),
  ``actor.vectors.SaveSnapshot`` (the end of an update), ``actor.embedder.ModelStatus`` (status,
  model list), ``actor.watcher.SyncWatches``.
- ``embedder.query_batch`` / ``embedder.bulk_batch``: an embedder worker fails while holding a batch.
- ``search.rank``: a `search`'s step after BM25 (re-scoring, collapsing, snippets) fails as a bug in it
  would. It runs in the BM25 actor's worker thread, yet the request alone fails (INTERNAL): the actor
  is not restarted.
- ``query.rank``: `query`'s step after both searches (fusion, re-scoring, collapsing, snippets) fails
  as a bug in it would. It runs in the vectors actor's worker thread (after the vector search), yet
  the request alone fails (INTERNAL): the actor is not restarted.
- ``http.server``: the HTTP door's server ends with an error right after it starts listening, as
  hypercorn's does when a connection's error escapes it: the door serves again on the same socket.
- ``watcher.notifier`` (`check_os_error`): opening a root's inotify watches fails as at the kernel's
  watch limit (ENOSPC): the watcher falls back to periodic rescans.

QMDD_FAULT_PAUSES="point=seconds,..." makes `pause(point)` wait that long the first time (to hold
work in flight while a test kills the daemon). Points: ``vectors.load`` (the vector index's
background load), ``mcp.tool`` (an MCP tool call), ``embed.page`` (a page of `embed` or of the background
embedder, before its texts go to the model), ``plugins.install`` (an install, as a long compile holds it),
``watcher.rescan`` (a collection's rescan, the start-up one first, before it goes to the indexer).
"""

from __future__ import annotations

import errno
import os


class InjectedFault(RuntimeError):
    pass


def _parse_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for part in spec.split(","):
        point, _, value = part.partition("=")
        if point.strip():
            pairs.append((point.strip(), value.strip()))
    return pairs


_armed = {point: int(count or 1) for point, count in _parse_pairs(os.environ.get("QMDD_FAULTS", ""))}
enabled = bool(_armed)
"""Whether any fault is armed: read it as `faults.enabled` (arm() may set it later)."""


def arm(point: str, count: int = 1) -> None:
    """Arm `point` for `count` more failures (for in-process tests; a daemon reads QMDD_FAULTS)."""
    global enabled
    _armed[point] = _armed.get(point, 0) + count
    enabled = True


def check(point: str) -> None:
    if _armed.get(point, 0) > 0:
        _armed[point] -= 1
        raise InjectedFault(f"injected fault at {point}")


def check_os_error(point: str) -> None:
    """`check`, failing as the kernel does when a resource runs out: callers must survive an OSError."""
    if _armed.get(point, 0) > 0:
        _armed[point] -= 1
        raise OSError(errno.ENOSPC, f"injected fault at {point}: no space left (watch limit)")


_pauses = {point: float(seconds) for point, seconds in _parse_pairs(os.environ.get("QMDD_FAULT_PAUSES", ""))}


async def pause(point: str) -> None:
    """QMDD_FAULT_PAUSES="point=seconds": the first time `point` is reached, wait that long (to hold a
    request in flight while a test kills the daemon)."""
    seconds = _pauses.pop(point, 0.0)
    if seconds > 0:
        import trio

        await trio.sleep(seconds)
