"""The result cache: search answers kept for repeated queries, whichever door asks.

An entry is keyed by the method and its checked parameters (defaults filled in, keys sorted), and it
remembers the index generation it was computed at: SQLite's data_version (moved by every commit of any
connection: an update, a watched edit, an embed, a collection or context change) and the in-memory
indexes' own counter (moved once BM25 or the vectors apply a change). An entry whose generation is not
the current one is never served, so no change can leave a stale answer behind; TTL and size bound the
rest. Answers are kept packed (msgpack): nothing a door does to a reply can alter the cached copy, and
the byte budget counts real sizes.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from qmdd.methods.call import Call, MethodHandler

CACHED_METHODS = frozenset({"search", "vsearch", "query"})
"""Answers that depend on the index only. `full` answers are not kept: they carry files read from disk."""

MAX_BYTES = 64 << 20
"""All entries together, packed: a thousand 1,000-result answers must not take gigabytes."""

GenerationKey = tuple[int, int]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    """Entries dropped because the index changed since they were computed."""
    expired: int = 0
    evicted: int = 0


class ResultCache:
    """Least recently used entries go first once `entries` or MAX_BYTES is reached; each lives `ttl_s`."""

    def __init__(self, entries: int, ttl_s: float, *, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = entries
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[GenerationKey, float, bytes]] = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def statistics(self) -> dict[str, Any]:
        return {"entries": len(self._entries), "bytes": self._bytes, "capacity": self.capacity,
                "hits": self.stats.hits, "misses": self.stats.misses, "stale": self.stats.stale,
                "expired": self.stats.expired, "evicted": self.stats.evicted}

    def get(self, key: str, generation: GenerationKey) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None:
            made_at, expires, packed = entry
            if made_at == generation and expires > self._clock():
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return packed
            if made_at != generation:
                self.stats.stale += 1
            else:
                self.stats.expired += 1
            self._drop(key)
        self.stats.misses += 1
        return None

    def put(self, key: str, generation: GenerationKey, packed: bytes) -> None:
        if self.capacity <= 0 or len(packed) > self.max_bytes // 4:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (generation, self._clock() + self.ttl_s, packed)
        self._bytes += len(packed)
        while len(self._entries) > self.capacity or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evicted += 1

    def _drop(self, key: str) -> None:
        self._bytes -= len(self._entries.pop(key)[2])


class GenerationMemo:
    """Facts worked out from the index that every answer would otherwise work out again (which searched
    collections lack vectors: two actor calls and two table reads), kept while the index generation
    stays what it was when they were worked out; the first look at a new generation forgets them all."""

    MAX_ENTRIES = 64  # keys per generation (one per set of collections searched by name)

    def __init__(self) -> None:
        self._generation: GenerationKey | None = None
        self._values: dict[Hashable, Any] = {}

    def get(self, generation: GenerationKey, key: Hashable) -> Any | None:
        if generation != self._generation:
            self._generation, self._values = generation, {}
        return self._values.get(key)

    def put(self, generation: GenerationKey, key: Hashable, value: Any) -> None:
        """Keep `value`, worked out after `generation` was read: unless the index has moved on since, when
        it belongs to no generation anyone still sees."""
        if generation != self._generation:
            return
        if len(self._values) >= self.MAX_ENTRIES:
            self._values.clear()
        self._values[key] = value


def cache_key(method: str, params: Mapping[str, Any]) -> str:
    """Checked parameters have every default filled in, so `{}` and `{"limit": 5}` share an entry."""
    return method + " " + json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cached(table: Mapping[str, MethodHandler], cache: ResultCache,
           generation: Callable[[], GenerationKey]) -> dict[str, MethodHandler]:
    """The table with CACHED_METHODS answered from `cache` when the index has not changed. A hit replays
    what the method streamed (long result lists come in parts over the socket) and returns its answer."""
    def wrap(method: str, handler: MethodHandler) -> MethodHandler:
        async def cached_handler(params: dict[str, Any], call: Call) -> Any:
            if cache.capacity <= 0 or params.get("full"):
                return await handler(params, call)
            key, seen = cache_key(method, params), generation()
            packed = cache.get(key, seen)
            if packed is not None:
                streamed, answer = msgpack.unpackb(packed)
                for kind, payload in streamed:
                    await call.emit(kind, payload)
                return answer
            parts: list[tuple[str, Any]] = []

            async def record(kind: str, payload: Any) -> None:
                parts.append((kind, payload))
                await call.emit(kind, payload)

            answer = await handler(params, replace(call, emit=record, generation=seen))
            if not _plugin_failed(answer):  # a plugin's failure may be passing (its time limit)
                # Stored under the generation read before the work: a change meanwhile makes it unservable.
                cache.put(key, seen, msgpack.packb([parts, answer]))
            return answer
        return cached_handler
    return {method: wrap(method, handler) if method in CACHED_METHODS else handler
            for method, handler in table.items()}


def _plugin_failed(answer: Any) -> bool:
    return isinstance(answer, dict) and any(w.get("code") == "PLUGIN_FAILED" for w in answer.get("warnings", ()))
