"""BERT-family checkpoint (safetensors) → CTranslate2 encoder model, without torch.

This fills CTranslate2's encoder spec from the raw tensors the way its own loaders do
(`ctranslate2.converters.transformers.BertLoader`, `RobertaLoader`, `XLMRobertaLoader`), so the result
is what `ct2-transformers-converter` would write, but with numpy only: no torch, no transformers.
(XLM-)RoBERTa is BERT with "roberta." tensor names and positions that start after the padding index
(its first padding_idx + 1 rows are never used, so they are dropped). A sequence-classification head
(cross-encoder rerankers) is not part of the CTranslate2 model; it is saved beside it as numpy arrays
and applied to the pooler output in `qmdd.models.runtime`. RoBERTa's head (dense + tanh, then a
projection, over the <s> state) is BERT's pooler + classifier under other names, so it maps onto them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qmdd.protocol.errors import ErrorCode, QmddError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish")
SUPPORTED_TYPES = ("bert", "roberta", "xlm-roberta")
ROBERTA_TYPES = ("roberta", "xlm-roberta")
HEAD_FILE = "head.npz"
MANIFEST = "qmdd-model.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_config(src: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((src / "config.json").read_text())
    except FileNotFoundError:
        raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{src} has no config.json",
                        hints=("Point at a Hugging Face checkpoint folder (config.json, model.safetensors, "
                               "tokenizer.json).",)) from None
    except (OSError, ValueError) as exc:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src / 'config.json'} is not a JSON object")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src / 'config.json'}: {key} is missing or not a "
                            "positive integer")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED,
                        f"{src / 'config.json'}: hidden_size is not a multiple of num_attention_heads")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED,
                        f"{src}: model_type {model_type!r} is not supported (BERT, RoBERTa and XLM-RoBERTa only)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src}: only absolute position embeddings are supported")
    if config.get("hidden_act", "gelu") not in SUPPORTED_ACTIVATIONS:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src}: activation {config.get('hidden_act')!r} unsupported")
    return config


def position_offset(config: Mapping[str, Any]) -> int:
    """Rows of the position table before the first real position: RoBERTa counts positions from
    padding_idx + 1 (the padding token's id), BERT from 0."""
    if config.get("model_type") in ROBERTA_TYPES:
        return int(config.get("pad_token_id", 1)) + 1
    return 0


def usable_positions(config: Mapping[str, Any]) -> int:
    """The longest input (special tokens included) the converted model has positions for."""
    return int(config.get("max_position_embeddings", 512)) - position_offset(config)


def load_tensors(src: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = src / "model.safetensors"
    if not path.exists():
        raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{src} has no model.safetensors",
                        hints=("Only safetensors checkpoints can be imported (no pickled .bin files).",))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path} is not a readable safetensors file: {exc}") from None
    # BertModel checkpoints name tensors "embeddings.*"; task models prefix the encoder with "bert."
    # or "roberta.".
    for prefix in ("bert.", "roberta."):
        if any(name.startswith(prefix) for name in tensors):
            tensors = {name.removeprefix(prefix): value for name, value in tensors.items()}
    return {name: value.astype(np.float32) if value.dtype != np.float32 and value.dtype.kind == "f" else value
            for name, value in tensors.items()}


class _Weights:
    """Tensor lookup that turns a missing name into a typed error instead of a KeyError."""

    def __init__(self, tensors: Mapping[str, np.ndarray], src: Path) -> None:
        self._tensors = tensors
        self._src = src

    def __call__(self, name: str) -> np.ndarray:
        try:
            return self._tensors[name]
        except KeyError:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED,
                            f"{self._src}: tensor {name!r} is missing; not a BERT-family checkpoint?") from None

    def has(self, name: str) -> bool:
        return name in self._tensors


def tensor_lookup(tensors: Mapping[str, np.ndarray], src: Path) -> _Weights:
    """The tensors of a checkpoint (or ones built in memory) as `build_spec` reads them."""
    return _Weights(tensors, src)


def _linear(spec: Any, w: _Weights, prefix: str) -> None:
    spec.weight = w(f"{prefix}.weight")
    spec.bias = w(f"{prefix}.bias")


def _layer_norm(spec: Any, w: _Weights, prefix: str) -> None:
    # Old checkpoints call them gamma/beta.
    spec.gamma = w(f"{prefix}.weight") if w.has(f"{prefix}.weight") else w(f"{prefix}.gamma")
    spec.beta = w(f"{prefix}.bias") if w.has(f"{prefix}.bias") else w(f"{prefix}.beta")


def build_spec(config: Mapping[str, Any], w: _Weights, vocabulary: list[str]) -> Any:
    from ctranslate2.specs import common_spec, transformer_spec

    activations = {"gelu": common_spec.Activation.GELU, "gelu_new": common_spec.Activation.GELUTanh,
                   "gelu_fast": common_spec.Activation.GELUTanh,
                   "gelu_pytorch_tanh": common_spec.Activation.GELUTanh,
                   "relu": common_spec.Activation.RELU, "silu": common_spec.Activation.SWISH,
                   "swish": common_spec.Activation.SWISH}
    layers = int(config["num_hidden_layers"])
    encoder = transformer_spec.TransformerEncoderSpec(
        layers, int(config["num_attention_heads"]), pre_norm=False,
        activation=activations[config.get("hidden_act", "gelu")], layernorm_embedding=True,
        num_source_embeddings=2, embeddings_merge=common_spec.EmbeddingsMerge.ADD)
    spec = transformer_spec.TransformerEncoderModelSpec(
        encoder, pooling_layer=True, pooling_activation=common_spec.Activation.Tanh)
    spec.encoder.scale_embeddings = False
    spec.encoder.embeddings[0].weight = w("embeddings.word_embeddings.weight")
    if w.has("embeddings.token_type_embeddings.weight"):
        spec.encoder.embeddings[1].weight = w("embeddings.token_type_embeddings.weight")
    else:
        spec.encoder.embeddings[1].weight = np.zeros((2, int(config["hidden_size"])), dtype=np.float32)
    spec.encoder.position_encodings.encodings = w("embeddings.position_embeddings.weight")[position_offset(config):]
    _layer_norm(spec.encoder.layernorm_embedding, w, "embeddings.LayerNorm")
    if w.has("pooler.dense.weight"):
        _linear(spec.pooler_dense, w, "pooler.dense")
    elif w.has("classifier.dense.weight"):  # a RoBERTa cross-encoder: its head's first half
        _linear(spec.pooler_dense, w, "classifier.dense")
    else:  # sentence-embedding exports often drop the pooler; CTranslate2 still wants one
        hidden = int(config["hidden_size"])
        spec.pooler_dense.weight = np.eye(hidden, dtype=np.float32)
        spec.pooler_dense.bias = np.zeros(hidden, dtype=np.float32)
    for index, layer in enumerate(spec.encoder.layer):
        prefix = f"encoder.layer.{index}"
        attention = f"{prefix}.attention.self"
        layer.self_attention.linear[0].weight = np.concatenate(
            [w(f"{attention}.{part}.weight") for part in ("query", "key", "value")])
        layer.self_attention.linear[0].bias = np.concatenate(
            [w(f"{attention}.{part}.bias") for part in ("query", "key", "value")])
        _linear(layer.self_attention.linear[1], w, f"{prefix}.attention.output.dense")
        _layer_norm(layer.self_attention.layer_norm, w, f"{prefix}.attention.output.LayerNorm")
        _linear(layer.ffn.linear_0, w, f"{prefix}.intermediate.dense")
        _linear(layer.ffn.linear_1, w, f"{prefix}.output.dense")
        _layer_norm(layer.ffn.layer_norm, w, f"{prefix}.output.LayerNorm")
    tokens = list(vocabulary)
    tokens.extend(f"<extra_id_{i}>" for i in range(int(config["vocab_size"]) - len(tokens)))
    spec.register_vocabulary(tokens)
    spec.config.unk_token = "<unk>" if config.get("model_type") in ROBERTA_TYPES else "[UNK]"
    spec.config.layer_norm_epsilon = float(config.get("layer_norm_eps", 1e-12))
    return spec


def read_vocabulary(src: Path) -> list[str]:
    """Token strings in id order, from tokenizer.json (preferred) or vocab.txt."""
    tokenizer_json = src / "tokenizer.json"
    if tokenizer_json.exists():
        try:
            vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
            # WordPiece and BPE map token -> id; Unigram (SentencePiece) lists [token, score] in id order.
            if isinstance(vocab, list):
                return [str(token) for token, _ in vocab]
            return [token for token, _ in sorted(vocab.items(), key=lambda item: int(item[1]))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{tokenizer_json}: {exc}") from None
    vocab_txt = src / "vocab.txt"
    if vocab_txt.exists():
        return vocab_txt.read_text(encoding="utf-8").splitlines()
    raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{src} has neither tokenizer.json nor vocab.txt")


CLASSIFIER_NAMES = ("classifier.weight", "classifier.out_proj.weight")  # BERT's, RoBERTa's


def classification_head(w: _Weights) -> dict[str, np.ndarray] | None:
    name = next((name for name in CLASSIFIER_NAMES if w.has(name)), None)
    if name is None:
        return None
    return {"weight": w(name), "bias": w(name.removesuffix("weight") + "bias")}


def _intact(dest: Path, manifest: Mapping[str, Any]) -> bool:
    """`dest` holds exactly this conversion, undamaged."""
    try:
        same = json.loads((dest / MANIFEST).read_text()) == manifest
    except (OSError, ValueError):
        return False
    return same and sha256_file(dest / "model.bin") == manifest["model_bin_sha256"]


def has_classifier(src: Path) -> bool:
    """Does the checkpoint carry a sequence-classification head (a cross-encoder)? Reads names only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(src / "model.safetensors"), "np") as f:
            return any(name in CLASSIFIER_NAMES for name in f.keys())  # noqa: SIM118 - a handle, not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src / 'model.safetensors'}: {exc}") from None


def convert_checkpoint(src: Path, dest: Path, *, quantization: str,
                       extra_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Convert the checkpoint folder `src` into `dest` atomically (a temp dir renamed into place);
    returns the manifest."""
    config = read_checkpoint_config(src)
    # CTranslate2 writes its own config.json; the checkpoint's is kept under another name.
    files = {"source-config.json": src / "config.json"}
    files.update({name: src / name for name in ("tokenizer.json", "vocab.txt") if (src / name).exists()})
    return write_conversion(config, tensor_lookup(load_tensors(src), src), read_vocabulary(src), files, dest,
                            quantization=quantization, extra_manifest=extra_manifest, src=src)


def write_conversion(config: Mapping[str, Any], w: _Weights, vocabulary: list[str],
                     files: Mapping[str, Path | bytes], dest: Path, *, quantization: str,
                     extra_manifest: Mapping[str, Any], src: Path) -> dict[str, Any]:
    """Build the spec, save it with `files` (name -> a file to copy, or the bytes to write) into a
    temporary folder beside `dest`, then rename it over `dest`; returns the manifest."""
    spec = build_spec(config, w, vocabulary)
    head = classification_head(w)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            spec.validate()
        except ValueError as exc:  # tensor shapes that disagree with config.json
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src}: inconsistent checkpoint: {exc}") from None
        spec.optimize(quantization=quantization)
        spec.save(str(work))
        if head is not None:
            np.savez(work / HEAD_FILE, weight=head["weight"], bias=head["bias"])
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, work / name)
            else:
                (work / name).write_bytes(content)
        manifest = {**extra_manifest, "quantization": quantization, "hidden_size": int(config["hidden_size"]),
                    "max_position_embeddings": usable_positions(config),
                    "has_head": head is not None, "model_bin_sha256": sha256_file(work / "model.bin")}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        fd = os.open(work, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if _intact(dest, manifest):  # another process converted the same model meanwhile
            shutil.rmtree(work)
            return manifest
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
