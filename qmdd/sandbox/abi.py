"""The batch layout of plugins/ABI.md, version 1: pure functions, no wasmtime.

The host writes one block (header, 40-byte records, then the text they point to) and reads N floats or
N bytes back. Addresses in the block are absolute, so it is laid out for the address `qmd_alloc` gave.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import NamedTuple

ABI_VERSION = 1
HEADER = struct.Struct("<II")
RECORD = struct.Struct("<fIIIIIIIII")
HOOKS = {"score": "qmd_score", "filter": "qmd_filter", "transform": "qmd_transform"}
"""Hook name -> the export that implements it."""
OUTPUT_WIDTH = {"score": 4, "filter": 1, "transform": 8}
"""Bytes the hook writes per candidate: an f32, a flag, or a (pointer, length) pair of u32."""
SPAN = struct.Struct("<II")


class MalformedOutput(ValueError):
    """What a plugin wrote back breaks the ABI (NaN, a byte that is not 0 or 1)."""


class Candidate(NamedTuple):
    """A tuple, not a dataclass: a thousand are built per scored search, and a frozen dataclass's
    constructor costs several times more."""

    score: float
    text: str
    title: str
    path: str
    meta: str
    """A JSON object (docid, collection, line, context)."""
    rank: int


@dataclass(frozen=True, slots=True)
class Batch:
    block: bytes
    """Header, records and text, laid out for `base`."""
    output_offset: int
    """Where the hook writes its answer, from `base`."""
    size: int
    """Everything `qmd_alloc` must give: block and output area."""


def _align(n: int, to: int = 8) -> int:
    return (n + to - 1) // to * to


def _text_lengths(strings: list[str]) -> list[int]:
    # Most text is ASCII, whose UTF-8 length is its length: no encoding per string, just one of the whole.
    return [len(t) if t.isascii() else len(t.encode()) for t in strings]


def _strings(query: str, candidates: list[Candidate]) -> list[str]:
    strings = [query]
    for c in candidates:
        strings += (c.text, c.title, c.path, c.meta)
    return strings


def batch_size(query: str, candidates: list[Candidate], hook: str) -> int:
    """The bytes a batch needs (what `encode_batch(...).size` will be), known before `qmd_alloc` is asked
    for them."""
    texts = sum(_text_lengths(_strings(query, candidates)))
    return _align(HEADER.size + RECORD.size * len(candidates) + texts) + OUTPUT_WIDTH[hook] * len(candidates)


def encode_batch(query: str, candidates: list[Candidate], hook: str, base: int) -> Batch:
    strings = _strings(query, candidates)
    lengths = _text_lengths(strings)
    count = len(candidates)
    starts = list(accumulate(lengths[:-1], initial=base + HEADER.size + RECORD.size * count))
    fields: list[float | int] = []
    for i, c in enumerate(candidates):
        k = 1 + 4 * i
        fields += (c.score, starts[k], lengths[k], starts[k + 1], lengths[k + 1], starts[k + 2], lengths[k + 2],
                   starts[k + 3], lengths[k + 3], c.rank)
    records = _records(count).pack(*fields) if count else b""
    block = HEADER.pack(starts[0], lengths[0]) + records + "".join(strings).encode()
    output_offset = _align(len(block))
    return Batch(block, output_offset, output_offset + OUTPUT_WIDTH[hook] * count)


@lru_cache(maxsize=64)
def _records(count: int) -> struct.Struct:
    """N records packed in one call (compiled once per batch size)."""
    return struct.Struct("<" + "fIIIIIIIII" * count)


def decode_scores(data: bytes, count: int) -> list[float]:
    """N new scores, clamped to 0..1; a NaN or an infinity breaks the ABI."""
    scores = array("f", data[:4 * count])
    if sys.byteorder == "big":
        scores.byteswap()
    if not math.isfinite(sum(scores)):  # any NaN or infinity makes the sum one (finite f32s cannot overflow it)
        raise MalformedOutput("a score is NaN or infinite")
    return [min(1.0, max(0.0, s)) for s in scores]


def decode_keep(data: bytes, count: int) -> list[bool]:
    """N keep (1) or drop (0) flags; any other byte breaks the ABI."""
    flags = data[:count]
    if any(b > 1 for b in flags):
        raise MalformedOutput(f"a filter answer is {max(flags)}, not 0 or 1")
    return [b == 1 for b in flags]


def decode_spans(data: bytes, count: int, memory_size: int) -> list[tuple[int, int]]:
    """N (pointer, length) pairs, each inside the module's memory."""
    spans = [SPAN.unpack_from(data, 8 * i) for i in range(count)]
    for ptr, length in spans:
        if ptr + length > memory_size:
            raise MalformedOutput(f"a transform answer ({ptr}, {length}) lies outside its memory ({memory_size} bytes)")
    return spans


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedOutput(f"a transform answer is not UTF-8 (byte {exc.start})") from None
