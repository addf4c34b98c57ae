"""The result cache and trace context as pure functions: LRU, TTL, byte budget, generations; traceparent."""

from __future__ import annotations

import pytest
import trio

from qmdd.methods.cache import GenerationMemo, ResultCache, cache_key, cached
from qmdd.methods.call import Call
from qmdd.tracing import parse_traceparent, traceparent


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_for_their_generation_and_ttl() -> None:
    clock = Clock()
    cache = ResultCache(2, 10.0, clock=clock)
    cache.put("a", (1, 0), b"A")
    assert cache.get("a", (1, 0)) == b"A"
    assert cache.get("a", (2, 0)) is None  # the index moved: dropped, never served
    assert cache.get("a", (1, 0)) is None
    cache.put("b", (1, 0), b"B")
    clock.now += 10.5
    assert cache.get("b", (1, 0)) is None
    assert cache.statistics() | {"bytes": 0} == {"entries": 0, "bytes": 0, "capacity": 2, "hits": 1, "misses": 3,
                                                 "stale": 1, "expired": 1, "evicted": 0}


def test_a_memo_holds_for_one_generation_and_refuses_what_was_worked_out_before_a_change() -> None:
    memo = GenerationMemo()
    assert memo.get((1, 0), "k") is None
    memo.put((1, 0), "k", ["a"])
    assert memo.get((1, 0), "k") == ["a"]
    assert memo.get((1, 1), "k") is None  # the index moved: everything is forgotten
    assert memo.get((1, 0), "k") is None
    memo.get((2, 1), "other")  # a request saw a newer generation while one worked out "k" at (1, 0)
    memo.put((1, 0), "k", ["stale"])
    assert memo.get((2, 1), "k") is None
    for i in range(GenerationMemo.MAX_ENTRIES + 1):
        memo.put((2, 1), i, i)
    assert memo.get((2, 1), GenerationMemo.MAX_ENTRIES) == GenerationMemo.MAX_ENTRIES and memo.get((2, 1), 0) is None


def test_least_recently_used_go_first_within_entries_and_bytes() -> None:
    cache = ResultCache(2, 60.0, max_bytes=400)
    cache.put("a", (0, 0), b"x" * 10)
    cache.put("b", (0, 0), b"x" * 10)
    assert cache.get("a", (0, 0))  # a is now the most recent
    cache.put("c", (0, 0), b"x" * 10)
    assert cache.get("b", (0, 0)) is None and cache.get("a", (0, 0)) and cache.get("c", (0, 0))
    cache.put("big", (0, 0), b"x" * 101)  # over a quarter of the budget: not kept
    assert cache.get("big", (0, 0)) is None
    cache.put("d", (0, 0), b"x" * 95)
    cache.put("e", (0, 0), b"x" * 95)
    assert cache.statistics()["bytes"] <= 400 and cache.statistics()["evicted"] == 3


def test_keys_are_normalised_parameters() -> None:
    assert cache_key("search", {"query": "q", "limit": 5}) == cache_key("search", {"limit": 5, "query": "q"})
    assert cache_key("search", {"query": "q"}) != cache_key("vsearch", {"query": "q"})
    assert cache_key("search", {"query": "q", "limit": 5}) != cache_key("search", {"query": "q", "limit": 6})


def test_a_hit_replays_the_streamed_parts_and_the_answer() -> None:
    runs: list[dict[str, object]] = []
    generation = [(1, 1)]

    async def search(params: dict[str, object], call: Call) -> dict[str, object]:
        runs.append(params)
        await call.emit("results", [1, 2])
        return {"results": [], "streamed": "results"}

    table = cached({"search": search, "status": search}, ResultCache(10, 60.0), lambda: generation[0])

    async def run(method: str, params: dict[str, object]) -> tuple[object, list[object]]:
        parts: list[object] = []

        async def emit(kind: str, payload: object) -> None:
            parts.append((kind, payload))
        return await table[method](params, Call(emit)), parts

    async def main() -> None:
        with trio.fail_after(5):
            first = await run("search", {"query": "q"})
            assert await run("search", {"query": "q"}) == first == ({"results": [], "streamed": "results"},
                                                                     [("results", [1, 2])])
            assert len(runs) == 1
            await run("search", {"query": "q", "full": True})
            await run("status", {})
            await run("status", {})
            assert len(runs) == 4  # full answers and other methods are never cached
            generation[0] = (2, 1)
            await run("search", {"query": "q"})
            assert len(runs) == 5
    trio.run(main)


@pytest.mark.parametrize(("header", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                                  "00f067aa0ba902b7")),
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra", ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                                        "00f067aa0ba902b7")),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),  # version 00 has 4 fields
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case is invalid
    ("00-4bf92f35-00f067aa0ba902b7-01", None), ("", None), (None, None),
])
def test_traceparent_is_read_as_w3c_says(header: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(header) == expected


def test_traceparent_goes_out_only_for_w3c_trace_ids() -> None:
    assert traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7") == \
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert traceparent("a3ce929d0e0e4736", "00f067aa0ba902b7") == \
        "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert traceparent("agent-7", "00f067aa0ba902b7") is None
