"""A WebAssembly module's shape, read from its section headers before it is compiled: how many imports,
functions and exports it declares. Pure.

A plugin exports its memory, `qmd_alloc` and a hook or three, and imports nothing; a module declaring
hundreds of thousands of functions or exports is built to be slow. Compiling it took 14 s of both
cores, and listing its exports (one ctypes call each, holding the GIL between them) stalled every
search in the daemon for as long: such a module is refused before either.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FUNCTIONS = 20_000
"""A Rust or Zig plugin with its standard library declares a few hundred to a few thousand."""
MAX_EXPORTS = 256

_IMPORT, _FUNCTION, _EXPORT = 2, 3, 7


@dataclass(frozen=True)
class Shape:
    imports: int = 0
    functions: int = 0
    exports: int = 0


class Malformed(ValueError):
    """The bytes after the header are not a sequence of sections (wasmtime would say more)."""


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 number (at most 32 bits) at `at`, and the offset after it."""
    value, shift = 0, 0
    while True:
        if at >= len(data) or shift > 28:
            raise Malformed("a truncated or oversized number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def module_shape(binary: bytes) -> Shape:
    """The counts its import, function and export sections declare (0 for a section it lacks); the
    binary starts with the 8-byte header (magic and version)."""
    counts = {_IMPORT: 0, _FUNCTION: 0, _EXPORT: 0}
    at = 8
    while at < len(binary):
        section = binary[at]
        size, start = _leb128(binary, at + 1)
        at = start + size
        if at > len(binary):
            raise Malformed(f"section {section} runs past the end")
        if section in counts:
            counts[section], _ = _leb128(binary, start)
    return Shape(counts[_IMPORT], counts[_FUNCTION], counts[_EXPORT])


def too_big(shape: Shape) -> str | None:
    """Why a module of this shape is no plugin qmdd compiles, or None. (A few imports are refused
    later, by name; this many are not even listed.)"""
    if shape.imports > MAX_EXPORTS:
        return f"it imports {shape.imports:,} items (a plugin imports nothing)"
    if shape.functions > MAX_FUNCTIONS:
        return f"it declares {shape.functions:,} functions (a plugin has at most {MAX_FUNCTIONS:,})"
    if shape.exports > MAX_EXPORTS:
        return f"it exports {shape.exports:,} items (a plugin exports at most {MAX_EXPORTS})"
    return None
