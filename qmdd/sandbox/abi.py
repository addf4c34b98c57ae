"""The batch layout of plugins/ABI.md, version 1: pure functions, no wasmtime.

The host writes one block (header, 40-byte records, then the text they point to) and reads N floats or
N bytes back. Addresses in the block are absolute, so it is laid out for the address `qmd_alloc` gave.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

ABI_VERSION = 1
HEADER = struct.Struct("<II")
RECORD = struct.Struct("<fIIIIIIIII")
HOOKS = {"score": "qmd_score", "filter": "qmd_filter"}
"""Hook name -> the export that implements it."""
OUTPUT_WIDTH = {"score": 4, "filter": 1}


class MalformedOutput(ValueError):
    """What a plugin wrote back breaks the ABI (NaN, a byte that is not 0 or 1)."""


@dataclass(frozen=True, slots=True)
class Candidate:
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


def batch_size(query: str, candidates: list[Candidate], hook: str) -> int:
    """The bytes a batch needs (what `encode_batch(...).size` will be), known before `qmd_alloc` is asked
    for them."""
    texts = len(query.encode()) + sum(len(c.text.encode()) + len(c.title.encode()) + len(c.path.encode())
                                      + len(c.meta.encode()) for c in candidates)
    return _align(HEADER.size + RECORD.size * len(candidates) + texts) + OUTPUT_WIDTH[hook] * len(candidates)


def encode_batch(query: str, candidates: list[Candidate], hook: str, base: int) -> Batch:
    texts = [query.encode()]
    for c in candidates:
        texts += [c.text.encode(), c.title.encode(), c.path.encode(), c.meta.encode()]
    at = base + HEADER.size + RECORD.size * len(candidates)
    spans: list[tuple[int, int]] = []
    for encoded in texts:
        spans.append((at, len(encoded)))
        at += len(encoded)
    parts = [HEADER.pack(*spans[0])]
    for i, c in enumerate(candidates):
        text, title, path, meta = spans[1 + 4 * i: 5 + 4 * i]
        parts.append(RECORD.pack(c.score, *text, *title, *path, *meta, c.rank))
    block = b"".join(parts) + b"".join(texts)
    output_offset = _align(len(block))
    return Batch(block, output_offset, output_offset + OUTPUT_WIDTH[hook] * len(candidates))


def decode_scores(data: bytes, count: int) -> list[float]:
    """N new scores, clamped to 0..1; a NaN or an infinity breaks the ABI."""
    scores = list(struct.unpack(f"<{count}f", data[:4 * count]))
    if not all(math.isfinite(s) for s in scores):
        raise MalformedOutput("a score is NaN or infinite")
    return [min(1.0, max(0.0, s)) for s in scores]


def decode_keep(data: bytes, count: int) -> list[bool]:
    """N keep (1) or drop (0) flags; any other byte breaks the ABI."""
    flags = data[:count]
    if any(b > 1 for b in flags):
        raise MalformedOutput(f"a filter answer is {max(flags)}, not 0 or 1")
    return [b == 1 for b in flags]
