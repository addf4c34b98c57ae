"""plugins/zig/title-boost: a scorer written in Zig, its committed build output (title-boost.wasm) and
the build command its source documents. The module is loaded and called through the sandbox like any
plugin; where the `ziglang` package is installed it is rebuilt from source and must come out the same."""

from __future__ import annotations

import json
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from qmdd.sandbox.abi import Candidate
from qmdd.sandbox.manifest import read_manifest
from qmdd.sandbox.runtime import Compiled, Sandbox

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "plugins" / "zig" / "title-boost.zig"
WASM = REPO / "plugins" / "zig" / "title-boost.wasm"


def f32(x: float) -> float:
    """`x` as the plugin's f32 holds it."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def boosted(score: float, matched: int) -> float:
    """The plugin's answer: an f32 product (exact in a double, so rounding it once matches), capped."""
    return min(1.0, f32(f32(score) * (1 + 0.25 * matched)))


def candidate(title: str, score: float, rank: int = 0) -> Candidate:
    meta = json.dumps({"docid": "#abc123", "collection": "notes", "line": 1, "context": None})
    return Candidate(score=score, text="some text", title=title, path=f"notes/{rank}.md", meta=meta, rank=rank)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


@pytest.fixture(scope="module")
def compiled(sandbox: Sandbox) -> Compiled:
    return sandbox.compile(WASM.read_bytes(), text=False, where=str(WASM))


def score(sandbox: Sandbox, compiled: Compiled, query: str, candidates: list[Candidate]) -> list[float]:
    return list(sandbox.call(compiled, read_manifest(WASM), "score", query, candidates).values)


def test_the_committed_module_is_a_scorer_that_imports_nothing(compiled: Compiled) -> None:
    assert compiled.hooks == ("score",)
    assert compiled.module.imports == []
    exports = {e.name for e in compiled.module.exports}
    assert {"memory", "qmd_alloc", "qmd_score", "qmd_abi_version"} <= exports
    manifest = read_manifest(WASM)
    assert (manifest.name, manifest.version) == ("title-boost", "1.0")


def test_title_words_of_the_query_raise_the_score(sandbox: Sandbox, compiled: Compiled) -> None:
    candidates = [
        candidate("SQLite WAL notes", 0.5, 0),   # both words, any case: x 1.5
        candidate("wal-mode", 0.4, 1),           # one word; `-` separates words: x 1.25
        candidate("walrus sqlite3", 0.4, 2),     # whole words only: no match
        candidate("Sqlite", 0.9, 3),             # x 1.25 = 1.125, capped at 1.0
        candidate("Plan ✓ ünïcode", 0.3, 4),    # no match: unchanged
        candidate("", 0.2, 5),                   # an empty title: unchanged
    ]
    assert score(sandbox, compiled, "SQLITE wal", candidates) == [
        boosted(0.5, 2), boosted(0.4, 1), f32(0.4), 1.0, f32(0.3), f32(0.2)]
    assert boosted(0.5, 2) == 0.75


def test_words_are_counted_once_and_short_ones_not_at_all(sandbox: Sandbox, compiled: Compiled) -> None:
    candidates = [candidate("The WAL", 0.4, 0), candidate("A note", 0.4, 1), candidate("code 42", 0.4, 2)]
    # `wal` said three times counts once; `a` (one letter) is no word; ü splits `ünïcode` into `n` and
    # `code`; digits make words too.
    assert score(sandbox, compiled, "wal WAL, Wal a ünïcode 42", candidates) == [
        boosted(0.4, 1), f32(0.4), boosted(0.4, 2)]


@pytest.mark.parametrize("query", ["", "a b c", "✓ - !"])
def test_a_query_without_words_changes_nothing(sandbox: Sandbox, compiled: Compiled, query: str) -> None:
    candidates = [candidate("A b c", 0.7, 0), candidate("SQLite WAL", 0.25, 1), candidate("", 1.0, 2)]
    assert score(sandbox, compiled, query, candidates) == [f32(0.7), 0.25, 1.0]


def test_a_batch_of_1000(sandbox: Sandbox, compiled: Compiled) -> None:
    titles = ["Release plan 2024", "Meeting notes", "release PLAN draft", "Plan"]
    candidates = [candidate(titles[i % 4], 0.001 * (i % 1000), i) for i in range(1000)]
    result = sandbox.call(compiled, read_manifest(WASM), "score", "release plan", candidates)
    matched = [2, 0, 2, 1]
    assert result.values == [boosted(c.score, matched[i % 4]) for i, c in enumerate(candidates)]
    assert result.fuel < read_manifest(WASM).fuel // 4


def test_qmd_alloc_is_8_aligned_grows_memory_and_answers_0_past_the_cap() -> None:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=16 << 20)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, WASM.read_bytes()), []).exports(store)
    alloc, memory = exports["qmd_alloc"], exports["memory"]
    assert isinstance(alloc, wasmtime.Func) and isinstance(memory, wasmtime.Memory)
    first, second = alloc(store, 3), alloc(store, 5)
    assert first > 0 and first % 8 == 0 and second == first + 8
    big = alloc(store, 4 << 20)
    assert big % 8 == 0 and big + (4 << 20) <= memory.data_len(store)
    assert alloc(store, 32 << 20) == 0          # past the 16 MiB cap: no room, no trap
    assert alloc(store, 0xFFFF_FFFF) == 0       # past 4 GiB
    assert alloc(store, 8) == big + (4 << 20)   # and it goes on from where it was


def documented_command() -> list[str]:
    """The build command in the source's opening comment, as argv."""
    header = [line.removeprefix("//!").strip() for line in SOURCE.read_text().splitlines()
              if line.startswith("//!")]
    start = next(i for i, line in enumerate(header) if line.startswith("python -m ziglang"))
    text = ""
    for line in header[start:]:
        text += line.removesuffix("\\") + " "
        if not line.endswith("\\"):
            break
    return shlex.split(text)


def test_the_documented_build_rebuilds_the_committed_module(
        tmp_path: Path, sandbox: Sandbox, compiled: Compiled) -> None:
    pytest.importorskip("ziglang")
    argv = documented_command()
    assert argv[:4] == ["python", "-m", "ziglang", "build-exe"]
    assert " ".join(argv) in re.sub(r"\\\n\s*", "", (REPO / "plugins" / "zig" / "README.md").read_text())
    assert "-femit-bin=plugins/zig/title-boost.wasm" in argv
    out = tmp_path / "title-boost.wasm"
    # Into tmp_path, caches included, so that nothing is written to the tree or the home directory.
    argv = [sys.executable, *(a for a in argv[1:] if not a.startswith("-femit-bin=")), f"-femit-bin={out}",
            "--cache-dir", str(tmp_path / "cache"), "--global-cache-dir", str(tmp_path / "cache")]
    subprocess.run(argv, cwd=REPO, check=True, timeout=300, capture_output=True)
    rebuilt = sandbox.compile(out.read_bytes(), text=False, where=str(out))
    candidates = [candidate("SQLite WAL notes", 0.5, 0), candidate("Meeting", 0.5, 1), candidate("wal", 0.9, 2)]
    assert score(sandbox, rebuilt, "sqlite wal", candidates) == score(sandbox, compiled, "sqlite wal", candidates)
    # The build is reproducible: the committed file is exactly what the source gives.
    assert out.read_bytes() == WASM.read_bytes()
