"""Test helpers: a tiny random BERT checkpoint on disk, and a plain numpy BERT forward to check against.

`make_tiny_bert` writes what a Hugging Face `save_pretrained` would (config.json, model.safetensors,
vocab.txt, tokenizer.json) for a BertModel or a BertForSequenceClassification, with seeded random
weights. `reference_forward` is an independent float64 implementation of the BERT encoder (post-norm,
exact erf GELU), so the CTranslate2 conversion can be compared with it number by number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "it", "on", "for", "how", "do", "i", "what", "where",
    "search", "index", "file", "folder", "note", "notes", "daemon", "model", "vector", "query", "text",
    "zip", "archive", "compress", "directory", "create", "pasta", "water", "boil", "salt", "cat", "dog",
    "run", "fast", "slow", "quick", "brown", "fox", "jumps", "over", "lazy", "red", "blue", "green",
    "##s", "##ing", "##ed", "##er", "##ly", ".", ",", "?", "!",
)

_erf_ufunc = np.frompyfunc(math.erf, 1, 1)  # math.erf, element by element: the exact GELU


# --- writing a checkpoint -------------------------------------------------------------------------------

def _bert_tensors(rng: np.random.Generator, *, vocab_size: int, layers: int, hidden: int, intermediate: int,
                  max_position: int, type_vocab: int) -> dict[str, np.ndarray]:
    def normal(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (1.0 + rng.standard_normal(hidden) * 0.05).astype(np.float32)

    t: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": normal(vocab_size, hidden, scale=0.2),
        "embeddings.position_embeddings.weight": normal(max_position, hidden, scale=0.1),
        "embeddings.token_type_embeddings.weight": normal(type_vocab, hidden, scale=0.1),
        "embeddings.LayerNorm.weight": norm_weight(),
        "embeddings.LayerNorm.bias": normal(hidden, scale=0.02),
    }
    for n in range(layers):
        p = f"encoder.layer.{n}"
        for part in ("query", "key", "value"):
            t[f"{p}.attention.self.{part}.weight"] = normal(hidden, hidden, scale=0.15)
            t[f"{p}.attention.self.{part}.bias"] = normal(hidden, scale=0.02)
        t[f"{p}.attention.output.dense.weight"] = normal(hidden, hidden, scale=0.1)
        t[f"{p}.attention.output.dense.bias"] = normal(hidden, scale=0.02)
        t[f"{p}.attention.output.LayerNorm.weight"] = norm_weight()
        t[f"{p}.attention.output.LayerNorm.bias"] = normal(hidden, scale=0.02)
        t[f"{p}.intermediate.dense.weight"] = normal(intermediate, hidden, scale=0.15)
        t[f"{p}.intermediate.dense.bias"] = normal(intermediate, scale=0.02)
        t[f"{p}.output.dense.weight"] = normal(hidden, intermediate, scale=0.1)
        t[f"{p}.output.dense.bias"] = normal(hidden, scale=0.02)
        t[f"{p}.output.LayerNorm.weight"] = norm_weight()
        t[f"{p}.output.LayerNorm.bias"] = normal(hidden, scale=0.02)
    t["pooler.dense.weight"] = normal(hidden, hidden, scale=0.15)
    t["pooler.dense.bias"] = normal(hidden, scale=0.02)
    return t


def write_tokenizer(folder: Path, vocab: Sequence[str]) -> None:
    """vocab.txt and a BERT-style tokenizer.json (WordPiece, lowercasing) for `vocab`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = {token: i for i, token in enumerate(vocab)}
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    tokenizer = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(folder / "tokenizer.json"))


def make_tiny_bert(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4,
                   intermediate: int = 64, vocab_words: Sequence[str] = DEFAULT_WORDS,
                   num_labels: int | None = None, max_position: int = 64, hidden_act: str = "gelu",
                   layer_norm_eps: float = 1e-12) -> Path:
    """Write a random BERT checkpoint (BertModel, or BertForSequenceClassification with `num_labels`)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [*SPECIAL_TOKENS, *(w for w in vocab_words if w not in SPECIAL_TOKENS)]
    rng = np.random.default_rng(seed)
    tensors = _bert_tensors(rng, vocab_size=len(vocab), layers=layers, hidden=hidden, intermediate=intermediate,
                            max_position=max_position, type_vocab=2)
    config: dict[str, Any] = {
        "architectures": ["BertModel"], "model_type": "bert", "attention_probs_dropout_prob": 0.1,
        "hidden_act": hidden_act, "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02,
        "intermediate_size": intermediate, "layer_norm_eps": layer_norm_eps,
        "max_position_embeddings": max_position, "num_attention_heads": heads, "num_hidden_layers": layers,
        "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
        "vocab_size": len(vocab),
    }
    if num_labels is not None:
        config["architectures"] = ["BertForSequenceClassification"]
        config["num_labels"] = num_labels
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        tensors = {f"bert.{name}": value for name, value in tensors.items()}
        tensors["classifier.weight"] = (rng.standard_normal((num_labels, hidden)) * 0.5).astype(np.float32)
        tensors["classifier.bias"] = (rng.standard_normal(num_labels) * 0.1).astype(np.float32)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / "model.safetensors"))
    write_tokenizer(folder, vocab)
    return folder


# --- the reference forward ------------------------------------------------------------------------------

def load_reference_weights(folder: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float64, with a task model's "bert." prefix removed."""
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    return {name.removeprefix("bert."): value.astype(np.float64) for name, value in tensors.items()
            if value.dtype.kind == "f"}


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf_ufunc(x / math.sqrt(2.0)).astype(np.float64))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_forward(folder: Path, ids: Sequence[int], type_ids: Sequence[int] | None = None,
                      *, weights: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(last hidden states [L, H], pooler output [H]) of one unpadded sequence, in float64."""
    config = json.loads((folder / "config.json").read_text())
    assert config.get("hidden_act", "gelu") == "gelu", "the reference implements the exact (erf) GELU only"
    w = weights if weights is not None else load_reference_weights(folder)
    eps = float(config.get("layer_norm_eps", 1e-12))
    heads = int(config["num_attention_heads"])
    ids_arr = np.asarray(ids, dtype=np.int64)
    types = np.zeros_like(ids_arr) if type_ids is None else np.asarray(type_ids, dtype=np.int64)
    length = len(ids_arr)

    x = (w["embeddings.word_embeddings.weight"][ids_arr] + w["embeddings.position_embeddings.weight"][:length]
         + w["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hidden = x.shape[1]
    d = hidden // heads

    def dense(v: np.ndarray, name: str) -> np.ndarray:
        return v @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    for n in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{n}"
        q, k, v = (dense(x, f"{p}.attention.self.{part}").reshape(length, heads, d).transpose(1, 0, 2)
                   for part in ("query", "key", "value"))
        attention = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d))
        context = (attention @ v).transpose(1, 0, 2).reshape(length, hidden)
        x = _layer_norm(x + dense(context, f"{p}.attention.output.dense"),
                        w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"], eps)
        h = _gelu(dense(x, f"{p}.intermediate.dense"))
        x = _layer_norm(x + dense(h, f"{p}.output.dense"),
                        w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps)
    if "pooler.dense.weight" in w:
        pooled = np.tanh(dense(x[0], "pooler.dense"))
    else:  # what the converter substitutes: an identity dense layer, still followed by tanh
        pooled = np.tanh(x[0])
    return x, pooled


def reference_embedding(folder: Path, ids: Sequence[int], pooling: str = "mean",
                        *, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The sentence embedding of one sequence: mean over all its tokens, or the [CLS] state; L2-normalised."""
    hidden, _ = reference_forward(folder, ids, weights=weights)
    if pooling == "mean":
        vector = hidden.mean(axis=0)
    elif pooling == "cls":
        vector = hidden[0]
    else:
        raise ValueError(pooling)
    return vector / np.linalg.norm(vector)


def reference_score(folder: Path, ids: Sequence[int], type_ids: Sequence[int],
                    *, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The sequence-classification logits [num_labels] of one (query, text) pair."""
    w = weights if weights is not None else load_reference_weights(folder)
    _, pooled = reference_forward(folder, ids, type_ids, weights=w)
    logits: np.ndarray = pooled @ w["classifier.weight"].T + w["classifier.bias"]
    return logits


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
