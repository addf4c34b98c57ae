"""The plugin sandbox's engine (qmdd.sandbox) against real modules under wasmtime: the ABI's layout, the
example plugins doing what they promise, and every way a plugin can misbehave ending in a typed refusal
at install or a failed call with its reason, never in a crash."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import pytest

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.abi import RECORD, Candidate, MalformedOutput, batch_size, decode_keep, decode_scores, encode_batch
from qmdd.sandbox.manifest import Manifest, manifest_from, read_manifest
from qmdd.sandbox.runtime import Compiled, PluginCallFailed, Sandbox

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "plugins"
FIXTURES = REPO / "tests" / "fixtures" / "plugins"


def candidate(path: str, title: str = "Note", score: float = 0.5, rank: int = 0, text: str = "some text") -> Candidate:
    meta = json.dumps({"docid": "#abc123", "collection": path.split("/")[0], "line": 1, "context": None})
    return Candidate(score=score, text=text, title=title, path=path, meta=meta, rank=rank)


CANDIDATES = [
    candidate("notes/projects/alpha.md", "Alpha plan", 0.8, 0),
    candidate("notes/drafts/beta.md", "Beta", 0.7, 1),
    candidate("notes/gamma.md", "Draft: gamma", 0.6, 2),
    candidate("notes/delta.md", "Sqlite WAL notes", 0.5, 3),
    candidate("notes/draft-plan.md", "Plan ✓ ünïcode", 0.4, 4),
]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


def load(sandbox: Sandbox, path: Path) -> Compiled:
    return sandbox.compile(path.read_bytes(), text=path.suffix == ".wat", where=str(path))


# --- the layout ---------------------------------------------------------------------------------------

def test_the_batch_layout_is_the_documented_one() -> None:
    base = 4096
    batch = encode_batch("wal", CANDIDATES, "score", base)
    assert batch.size == batch_size("wal", CANDIDATES, "score") and batch.output_offset % 8 == 0
    assert batch.size == batch.output_offset + 4 * len(CANDIDATES)
    block = batch.block

    def text(ptr: int, length: int) -> str:
        return block[ptr - base:ptr - base + length].decode()

    query_ptr, query_len = struct.unpack_from("<II", block, 0)
    assert text(query_ptr, query_len) == "wal"
    for i, c in enumerate(CANDIDATES):
        score, *spans, rank = RECORD.unpack_from(block, 8 + 40 * i)
        assert score == pytest.approx(c.score) and rank == c.rank
        assert [text(spans[k], spans[k + 1]) for k in range(0, 8, 2)] == [c.text, c.title, c.path, c.meta]
    assert batch_size("", [], "filter") == 8


def test_answers_are_checked() -> None:
    assert decode_scores(struct.pack("<3f", 0.25, 1.5, -2.0), 3) == [0.25, 1.0, 0.0]
    with pytest.raises(MalformedOutput):
        decode_scores(struct.pack("<2f", 0.5, float("nan")), 2)
    with pytest.raises(MalformedOutput):
        decode_scores(struct.pack("<1f", float("inf")), 1)
    assert decode_keep(bytes([1, 0, 1]), 3) == [True, False, True]
    with pytest.raises(MalformedOutput):
        decode_keep(bytes([1, 7]), 2)


# --- manifests ----------------------------------------------------------------------------------------

def test_manifests_have_defaults_and_caps(tmp_path: Path) -> None:
    module = tmp_path / "my-plugin.wat"
    assert read_manifest(module) == Manifest(name="my-plugin")
    module.with_suffix(".toml").write_text('[plugin]\nname = "boost"\nversion = "2"\nfuel = 5000\ntime_ms = 20\n')
    assert read_manifest(module) == Manifest(name="boost", version="2", fuel=5000, time_ms=20)
    for bad in ('[plugin]\nfuel = 2000000000\n', '[plugin]\nmemory_mb = 0\n', '[plugin]\nname = "Bad Name"\n',
                '[plugin]\nnetwork = true\n', '[plugin]\ntime_ms = true\n', 'name = "x"\n', '[plugin\n'):
        module.with_suffix(".toml").write_text(bad)
        with pytest.raises(QmddError) as refused:
            read_manifest(module)
        assert refused.value.code is ErrorCode.INVALID_INPUT
        assert str(module.with_suffix(".toml")) in refused.value.message
    assert manifest_from({"name": "x", "memory_mb": 256}, "record").memory_mb == 256


# --- the examples -------------------------------------------------------------------------------------

def test_path_boost_raises_project_notes(sandbox: Sandbox) -> None:
    compiled = load(sandbox, EXAMPLES / "path-boost.wat")
    assert compiled.hooks == ("score",)
    result = sandbox.call(compiled, read_manifest(EXAMPLES / "path-boost.wat"), "score", "plan", CANDIDATES)
    assert result.values == pytest.approx([1.0, 0.7, 0.6, 0.5, 0.4])
    assert 0 < result.fuel < 1_000_000 and result.seconds < 1


def test_drop_drafts_filters_draft_paths_and_titles(sandbox: Sandbox) -> None:
    compiled = load(sandbox, EXAMPLES / "drop-drafts.wat")
    result = sandbox.call(compiled, read_manifest(EXAMPLES / "drop-drafts.wat"), "filter", "plan", CANDIDATES)
    assert result.values == [True, False, False, True, False]


def test_title_match_adds_to_titles_holding_the_query(sandbox: Sandbox) -> None:
    compiled = load(sandbox, EXAMPLES / "title-match.wat")
    result = sandbox.call(compiled, read_manifest(EXAMPLES / "title-match.wat"), "score", "SQLITE wal", CANDIDATES)
    assert result.values == pytest.approx([0.8, 0.7, 0.6, 0.7, 0.4])


def test_calls_run_in_parallel_threads_each_in_its_own_instance(sandbox: Sandbox) -> None:
    compiled = load(sandbox, FIXTURES / "constant.wat")
    many = [candidate(f"c/{i}.md", rank=i) for i in range(1000)]
    answers: list[list[float]] = []

    def run() -> None:
        for _ in range(5):
            answers.append(sandbox.call(compiled, Manifest(name="constant"), "score", "q", many).values)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 20 and all(a == [0.5] * 1000 for a in answers)


# --- misbehaving plugins --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "why"), [
    ("garbage.wasm", "not a WebAssembly module"),
    ("no-alloc.wat", "no `qmd_alloc`"),
    ("wrong-type.wat", "`qmd_score` has the type"),
    ("imports-wasi.wat", "imports wasi_snapshot_preview1.fd_write"),
    ("abi2.wat", "ABI version 2"),
])
def test_what_is_not_a_plugin_is_refused_at_install(sandbox: Sandbox, name: str, why: str) -> None:
    with pytest.raises(QmddError) as refused:
        load(sandbox, FIXTURES / name)
    assert refused.value.code is ErrorCode.INVALID_INPUT and why in refused.value.message
    assert refused.value.hints


def test_broken_text_is_refused_at_install(sandbox: Sandbox) -> None:
    with pytest.raises(QmddError, match="not WebAssembly text"):
        sandbox.compile(b"(module", text=True, where="x.wat")
    with pytest.raises(QmddError, match="nor WebAssembly text"):
        sandbox.compile(b"\xff\xfe", text=True, where="x.wat")


@pytest.mark.parametrize(("name", "manifest", "why"), [
    ("trap.wat", Manifest(name="t"), "trapped"),
    ("spin.wat", Manifest(name="t", fuel=1_000_000_000, time_ms=50), "time limit (50 ms)"),
    ("spin.wat", Manifest(name="t", fuel=100_000), "ran out of fuel (100,000 per call)"),
    ("grow.wat", Manifest(name="t", memory_mb=2, fuel=5_000_000), "ran out of fuel"),
    ("nan.wat", Manifest(name="t"), "malformed output"),
    ("fails.wat", Manifest(name="t"), "qmd_score returned 3"),
])
def test_a_misbehaving_call_fails_with_its_reason(sandbox: Sandbox, name: str, manifest: Manifest, why: str) -> None:
    compiled = load(sandbox, FIXTURES / name)
    started = time.monotonic()
    with pytest.raises(PluginCallFailed, match=why.replace("(", r"\(").replace(")", r"\)")):
        sandbox.call(compiled, manifest, "score", "q", CANDIDATES)
    assert time.monotonic() - started < 5
    # The sandbox goes on serving.
    constant = load(sandbox, FIXTURES / "constant.wat")
    assert sandbox.call(constant, Manifest(name="c"), "score", "q", CANDIDATES).values == [0.5] * 5


def test_a_filter_answering_other_than_0_or_1_fails(sandbox: Sandbox) -> None:
    compiled = load(sandbox, FIXTURES / "short-filter.wat")
    with pytest.raises(PluginCallFailed, match="not 0 or 1"):
        sandbox.call(compiled, Manifest(name="t"), "filter", "q", CANDIDATES)
    with pytest.raises(PluginCallFailed, match="no score hook"):
        sandbox.call(compiled, Manifest(name="t"), "score", "q", CANDIDATES)


# --- transforms ---------------------------------------------------------------------------------------

def test_strip_comments_removes_html_comments_only(sandbox: Sandbox) -> None:
    compiled = load(sandbox, EXAMPLES / "strip-comments.wat")
    assert compiled.hooks == ("transform",)
    texts = ["a<!-- x -->b", "no comment, ünïcode ✓", "<!-- unterminated", "x<!---->y<!-- a\nb -->z", "",
             "<!-- é -->é"]
    answer = sandbox.call(compiled, read_manifest(EXAMPLES / "strip-comments.wat"), "transform", "",
                          [candidate("notes/a.md", text=t, rank=i) for i, t in enumerate(texts)])
    assert answer.values == ["ab", "no comment, ünïcode ✓", "<!-- unterminated", "xyz", "", "é"]


@pytest.mark.parametrize(("name", "why"), [("transform-outside.wat", "outside its memory"),
                                           ("transform-latin1.wat", "not UTF-8")])
def test_a_transform_answer_is_checked(sandbox: Sandbox, name: str, why: str) -> None:
    with pytest.raises(PluginCallFailed, match=why):
        sandbox.call(load(sandbox, FIXTURES / name), Manifest(name="t"), "transform", "", CANDIDATES)


# --- the registry of installed plugins ----------------------------------------------------------------

def test_the_registry_keeps_plugins_across_restarts_and_disables_a_failing_one(tmp_path: Path) -> None:
    from qmdd.sandbox.registry import FAILURES_TO_DISABLE, PluginRegistry

    registry = PluginRegistry(tmp_path / "plugins")
    boost = EXAMPLES / "path-boost.wat"
    registry.install(boost.read_bytes(), where=boost.name, default_name="path-boost",
                     manifest=boost.with_suffix(".toml").read_text())
    trap = FIXTURES / "trap.wat"
    registry.install(trap.read_bytes(), where=trap.name, default_name="x", name="trap")
    with pytest.raises(QmddError, match="installed already"):
        registry.install(trap.read_bytes(), where=trap.name, default_name="trap")
    assert registry.call("path-boost", "score", "q", CANDIDATES[:1]) == [1.0]
    for _ in range(FAILURES_TO_DISABLE):
        with pytest.raises(PluginCallFailed, match="unreachable"):
            registry.call("trap", "score", "q", CANDIDATES)
    with pytest.raises(PluginCallFailed, match="disabled"):
        registry.call("trap", "score", "q", CANDIDATES)

    again = PluginRegistry(tmp_path / "plugins")
    again.load()
    assert [p.name for p in again.installed()] == ["path-boost", "trap"]
    assert not again.get("trap").enabled and "3 times in a row" in (again.get("trap").disabled_reason or "")
    assert again.get("path-boost").manifest.version == "1.0"
    again.set_enabled("trap", True)
    assert again.get("trap").enabled

    (tmp_path / "plugins" / "path-boost.wasm").write_bytes(b"\0asm\1\0\0\0")  # changed behind our back
    (tmp_path / "plugins" / "trap.cwasm").write_bytes(b"garbage")  # a bad cache is rebuilt from the module
    third = PluginRegistry(tmp_path / "plugins")
    third.load()
    assert [p.name for p in third.installed()] == ["trap"] and "does not match" in third.broken["path-boost"]
    assert third.remove("path-boost") is None and not (tmp_path / "plugins" / "path-boost.json").exists()


def test_a_transform_chain_has_an_identity(tmp_path: Path) -> None:
    from qmdd.sandbox.registry import PluginRegistry

    registry = PluginRegistry(tmp_path / "plugins")
    strip = EXAMPLES / "strip-comments.wat"
    registry.install(strip.read_bytes(), where=strip.name, default_name="strip-comments",
                     manifest=strip.with_suffix(".toml").read_text())
    assert registry.transform_chain(["path-boost", "nothing"]) == (None, "")
    apply, key = registry.transform_chain(["strip-comments"])
    assert apply is not None
    assert apply([("notes/a.md", "a<!-- b -->c"), ("notes/b.md", "d")]) == [("ac", True), ("d", True)]
    assert key.startswith("strip-comments@1.0:")
    registry.set_enabled("strip-comments", False)
    assert registry.transform_chain(["strip-comments"]) == (None, "")


def test_a_manifest_declares_hooks_the_module_must_export(tmp_path: Path) -> None:
    from qmdd.sandbox.registry import PluginRegistry

    registry = PluginRegistry(tmp_path / "plugins")
    boost = (EXAMPLES / "path-boost.wat").read_bytes()
    with pytest.raises(QmddError, match=r"declares the hook\(s\) \['filter'\]"):
        registry.install(boost, where="b.wat", default_name="b", manifest='[plugin]\nhooks = ["score", "filter"]\n')
    with pytest.raises(QmddError, match="hooks must be a list"):
        registry.install(boost, where="b.wat", default_name="b", manifest='[plugin]\nhooks = ["rank"]\n')
    installed = registry.install(boost, where="b.wat", default_name="b", manifest='[plugin]\nhooks = ["score"]\n')
    assert installed.compiled.hooks == ("score",) and installed.to_wire()["hooks"] == ["score"]
    again = PluginRegistry(tmp_path / "plugins")
    again.load()
    assert again.get("b").manifest.hooks == ("score",)
