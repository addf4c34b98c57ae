"""A loaded model: tokenizer + CTranslate2 encoder, and the pooling or scoring head on top (numpy).

Blocking and CPU/GPU-bound: called from worker threads only (CTranslate2 releases the GIL, so the
event loop keeps running while a batch is computed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qmdd.models.convert import HEAD_FILE, MANIFEST, build_spec, sha256_file, tensor_lookup
from qmdd.protocol.errors import ErrorCode, QmddError

log = logging.getLogger("qmdd.models")

# tokenizers would tokenize a bulk batch on every core at once, starving the queries served meanwhile;
# tokenizing is ~1% of the embedding cost, so one thread loses nothing.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(requested: str) -> tuple[str, str]:
    """(device, compute type): CUDA with float16 where CTranslate2 can run on a GPU, else CPU int8.

    A GPU that CTranslate2 sees is not enough: its wheels load cuBLAS of one CUDA major version at the
    first matrix product, and a machine with another CUDA has the GPU but not that library. `auto`
    then falls back to the CPU (with a warning naming the reason); an explicit `cuda` is an error."""
    import ctranslate2

    if requested == "cpu":
        return "cpu", "int8"
    if not ctranslate2.get_cuda_device_count():
        if requested == "cuda":
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, "device 'cuda' was asked for but CTranslate2 sees no GPU",
                            hints=("Set QMDD_DEVICE=auto or cpu.",))
        return "cpu", "int8"
    problem = cuda_problem()
    if problem is None:
        return "cuda", "float16"
    hints = (f"CTranslate2 {ctranslate2.__version__} needs the CUDA libraries it was built for; a cuBLAS "
             "of another CUDA version does not do (pip install nvidia-cublas-cu12 for the PyPI wheels, "
             "with its lib folder on LD_LIBRARY_PATH).", "Set QMDD_DEVICE=cpu to run on the CPU.")
    if requested == "cuda":
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"CTranslate2 sees a GPU but cannot run on it: {problem}",
                        hints=hints)
    log.warning("a GPU is present but CTranslate2 cannot run on it (%s): embedding on the CPU. %s",
                problem, hints[0])
    return "cpu", "int8"


@functools.cache
def cuda_problem() -> str | None:
    """Why CTranslate2 cannot run an encoder on the GPU, or None when it can: a probe model runs one
    forward pass there, which loads cuBLAS. Paid once, at daemon start, and only where a GPU is seen."""
    import ctranslate2

    with tempfile.TemporaryDirectory(prefix="qmdd-cuda-probe-") as folder:
        write_probe_model(folder)
        try:
            encoder = ctranslate2.Encoder(folder, device="cuda", compute_type="float16")
            host_array(encoder.forward_batch([PROBE_IDS]).last_hidden_state)
        except (RuntimeError, ValueError, OSError) as exc:
            return str(exc)
    return None


PROBE_IDS = [2, 4, 5, 3]
"""[CLS] a b [SEP] in the probe model's vocabulary."""


def write_probe_model(folder: str) -> None:
    """A one-layer BERT encoder of hidden size 8 with random weights, converted into `folder`."""
    rng = np.random.default_rng(0)
    hidden, inner, vocab, positions = 8, 16, 8, 16

    def dense(rows: int, cols: int, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": rng.standard_normal((rows, cols)).astype(np.float32),
                f"{prefix}.bias": np.zeros(rows, dtype=np.float32)}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": np.ones(hidden, dtype=np.float32),
                f"{prefix}.bias": np.zeros(hidden, dtype=np.float32)}

    layer = "encoder.layer.0"
    tensors = {"embeddings.word_embeddings.weight": rng.standard_normal((vocab, hidden)).astype(np.float32),
               "embeddings.position_embeddings.weight": rng.standard_normal((positions, hidden)).astype(np.float32),
               **norm("embeddings.LayerNorm"), **norm(f"{layer}.attention.output.LayerNorm"),
               **norm(f"{layer}.output.LayerNorm"), **dense(hidden, hidden, f"{layer}.attention.output.dense"),
               **dense(inner, hidden, f"{layer}.intermediate.dense"), **dense(hidden, inner, f"{layer}.output.dense"),
               **{k: v for part in ("query", "key", "value")
                  for k, v in dense(hidden, hidden, f"{layer}.attention.self.{part}").items()}}
    config = {"hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": vocab}
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"]
    spec = build_spec(config, tensor_lookup(tensors, Path(folder)), vocabulary)
    spec.validate()
    spec.optimize(quantization="float16")
    spec.save(folder)


def host_array(view: Any) -> np.ndarray:
    """A CTranslate2 output as a float32 numpy array: a GPU result is copied to host memory first
    (numpy cannot read device memory), and float16 widened."""
    import ctranslate2

    if view.device != "cpu":
        view = view.to_device(ctranslate2.Device.cpu)
    return np.asarray(view).astype(np.float32, copy=False)


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
        hidden = host_array(output.last_hidden_state)
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
        pooled = host_array(output.pooler_output)
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
