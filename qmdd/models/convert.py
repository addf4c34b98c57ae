"""BERT-family checkpoint (safetensors) → CTranslate2 encoder model, without torch.

This fills CTranslate2's encoder spec from the raw tensors the way its own BERT loader does
(`ctranslate2.converters.transformers.BertLoader`), so the result is what `ct2-transformers-converter`
would write, but with numpy only: no torch, no transformers. A sequence-classification head
(cross-encoder rerankers) is not part of the CTranslate2 model; it is saved beside it as numpy arrays
and applied to the pooler output in `qmdd.models.runtime`.
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
SUPPORTED_TYPES = ("bert",)
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
                        f"{src}: model_type {model_type!r} is not supported (only BERT-family checkpoints)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src}: only absolute position embeddings are supported")
    if config.get("hidden_act", "gelu") not in SUPPORTED_ACTIVATIONS:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src}: activation {config.get('hidden_act')!r} unsupported")
    return config


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
    # BertModel checkpoints name tensors "embeddings.*"; task models prefix the encoder with "bert.".
    if any(name.startswith("bert.") for name in tensors):
        tensors = {name.removeprefix("bert."): value for name, value in tensors.items()}
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
                            f"{self._src}: tensor {name!r} is missing; not a BERT checkpoint?") from None

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
    spec.encoder.position_encodings.encodings = w("embeddings.position_embeddings.weight")
    _layer_norm(spec.encoder.layernorm_embedding, w, "embeddings.LayerNorm")
    if w.has("pooler.dense.weight"):
        _linear(spec.pooler_dense, w, "pooler.dense")
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
    spec.config.unk_token = "[UNK]"
    spec.config.layer_norm_epsilon = float(config.get("layer_norm_eps", 1e-12))
    return spec


def read_vocabulary(src: Path) -> list[str]:
    """Token strings in id order, from tokenizer.json (preferred) or vocab.txt."""
    tokenizer_json = src / "tokenizer.json"
    if tokenizer_json.exists():
        try:
            vocab: dict[str, int] = json.loads(tokenizer_json.read_text())["model"]["vocab"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{tokenizer_json}: {exc}") from None
        return [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    vocab_txt = src / "vocab.txt"
    if vocab_txt.exists():
        return vocab_txt.read_text(encoding="utf-8").splitlines()
    raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{src} has neither tokenizer.json nor vocab.txt")


def classification_head(w: _Weights) -> dict[str, np.ndarray] | None:
    if not w.has("classifier.weight"):
        return None
    return {"weight": w("classifier.weight"), "bias": w("classifier.bias")}


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
            return "classifier.weight" in f.keys()  # noqa: SIM118 - a safetensors handle, not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{src / 'model.safetensors'}: {exc}") from None


def convert_checkpoint(src: Path, dest: Path, *, quantization: str,
                       extra_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Convert `src` into `dest` atomically (a temp dir renamed into place); returns the manifest."""
    config = read_checkpoint_config(src)
    w = tensor_lookup(load_tensors(src), src)
    spec = build_spec(config, w, read_vocabulary(src))
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
        for name in ("tokenizer.json", "vocab.txt"):
            if (src / name).exists():
                shutil.copyfile(src / name, work / name)
        # CTranslate2 writes its own config.json; the checkpoint's is kept under another name.
        shutil.copyfile(src / "config.json", work / "source-config.json")
        manifest = {**extra_manifest, "quantization": quantization, "hidden_size": int(config["hidden_size"]),
                    "max_position_embeddings": int(config.get("max_position_embeddings", 512)),
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
