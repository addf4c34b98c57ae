"""A loaded model: tokenizer + CTranslate2 encoder, and the pooling or scoring head on top (numpy).

Blocking and CPU/GPU-bound: called from worker threads only (CTranslate2 releases the GIL, so the
event loop keeps running while a batch is computed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qmdd.models.convert import HEAD_FILE, MANIFEST, sha256_file
from qmdd.protocol import ErrorCode, QmddError

# tokenizers would tokenize a bulk batch on every core at once, starving the queries served meanwhile;
# tokenizing is ~1% of the embedding cost, so one thread loses nothing.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(requested: str) -> tuple[str, str]:
    """(device, compute type): CUDA with float16 where CTranslate2 sees a GPU, else CPU int8."""
    import ctranslate2

    if requested == "cpu":
        return "cpu", "int8"
    gpus = ctranslate2.get_cuda_device_count()
    if requested == "cuda" and not gpus:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, "device 'cuda' was asked for but CTranslate2 sees no GPU",
                        hints=("Set QMDD_DEVICE=auto or cpu.",))
    return ("cuda", "float16") if gpus else ("cpu", "int8")


def read_manifest(model_dir: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((model_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{model_dir} holds no converted model") from None
    except (OSError, ValueError) as exc:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{model_dir / MANIFEST}: {exc}") from None
    return manifest


class LoadedModel:
    """An embedding model (mean or CLS pooling, L2-normalised) or a cross-encoder (score head)."""

    def __init__(self, model_dir: Path, *, device: str, compute_type: str, threads: int, workers: int) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        self.manifest = read_manifest(model_dir)
        model_bin = model_dir / "model.bin"
        if not model_bin.exists() or sha256_file(model_bin) != self.manifest.get("model_bin_sha256"):
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{model_bin} is missing or does not match its checksum",
                            hints=("Delete the folder to have it converted again, or re-import the model.",))
        self.kind: str = self.manifest.get("kind", "embedding")
        self.pooling: str = self.manifest.get("pooling", "mean")
        self.max_length: int = int(self.manifest.get("max_length", 256))
        self.dims: int = int(self.manifest["hidden_size"])
        try:
            self.tokenizer = _load_tokenizer(Tokenizer, model_dir / "tokenizer.json")
            # The shipped tokenizer pads and truncates at 128; batches are padded by CTranslate2 and
            # the model's real limit is max_length.
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(self.max_length)
            self.encoder = ctranslate2.Encoder(str(model_dir), device=device, compute_type=compute_type,
                                               inter_threads=workers, intra_threads=threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"cannot load {model_dir}: {exc}") from None
        self.head: dict[str, np.ndarray] | None = None
        if self.manifest.get("has_head"):
            with np.load(model_dir / HEAD_FILE) as head:
                self.head = {"weight": head["weight"], "bias": head["bias"]}
        self.device = device
        self.compute_type = compute_type
        self.self_check_cosine: float | None = None  # set by the registry for models with a reference
        self.size_bytes = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def pair_ids(self, query: str, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        encoded = self.tokenizer.encode_batch([(query, t) for t in texts], add_special_tokens=True)
        return [(e.ids, e.type_ids) for e in encoded]

    def embed_ids(self, batch: Sequence[list[int]]) -> np.ndarray:
        output = self.encoder.forward_batch(list(batch))
        hidden = np.asarray(output.last_hidden_state, dtype=np.float32)
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            lengths = np.asarray([len(ids) for ids in batch], dtype=np.float32)
            mask = np.arange(hidden.shape[1])[None, :] < lengths[:, None]
            pooled = (hidden * mask[..., None]).sum(axis=1) / lengths[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def score_pairs(self, batch: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
        """Cross-encoder relevance logits: the classification head over the pooler output."""
        if self.head is None:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, "this model has no classification head; it cannot rerank")
        width = max(len(ids) for ids, _ in batch)
        ids = [ids for ids, _ in batch]
        types = [t + [0] * (width - len(t)) for _, t in batch]
        output = self.encoder.forward_batch(ids, token_type_ids=types)
        pooled = np.asarray(output.pooler_output, dtype=np.float32)
        logits = pooled @ self.head["weight"].T + self.head["bias"]
        # One label: the logit is the score. Two labels (irrelevant, relevant): their difference.
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, 0]


def _load_tokenizer(tokenizer_class: Any, path: Path) -> Any:
    try:
        return tokenizer_class.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises bare Exception for unreadable files
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path}: {exc}",
                        hints=("Re-import the model from a folder with a valid tokenizer.json.",)) from None


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
