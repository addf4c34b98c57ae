"""Daemon settings. Precedence: command-line flags > QMDD_* environment > config file > defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qmdd.paths import Paths, resolve_paths
from qmdd.protocol import ErrorCode, QmddError


@dataclass(frozen=True)
class Config:
    paths: Paths = field(default_factory=resolve_paths)
    log_level: str = "info"
    max_file_bytes: int = 10 * 1024 * 1024
    stem: bool = True
    # Tuned on the eval collections (bench/eval_quality.py): above the plain-BM25 reference on all
    # but drcd, where the gap is tokenization, not these parameters.
    k1: float = 1.3
    b: float = 0.55
    index_batch_files: int = 512
    """Files per SQLite transaction while indexing: bounds the work lost to a kill -9."""
    shutdown_grace_s: float = 5.0
    frame_stall_s: float = 30.0
    """A request frame that has begun must be complete within this long, or the connection is closed."""
    device: str = "auto"
    """auto (CUDA when CTranslate2 sees a GPU, else CPU), cpu or cuda."""
    embed_batch_tokens: int = 2048
    """Padded tokens per inference batch: ~2k measured best on a 2-core CPU."""
    embed_threads: int = 0
    """CPU threads for inference; 0 = all cores."""
    model_idle_unload_s: float = 0.0
    """Unload models after this many idle seconds (0: keep them loaded)."""
    watch: bool = True
    """Watch collection roots and index changes as they happen (`qmdd --no-watch` turns it off)."""
    watch_debounce_ms: int = 400
    """Longest a stream of changes is gathered before it is indexed (a quiet 50 ms ends it sooner)."""
    watch_poll_s: float = 2.0
    """How often a missing root is looked for, and a root without inotify watches rescanned (x15)."""
    auto_embed: bool = True
    """Embed chunks the watcher indexed, once vectors exist for the model in use."""


_TUNABLES = {f.name: f.type for f in fields(Config) if f.name != "paths"}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _TUNABLES[name]
    try:
        if kind in ("bool", bool):
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes", "on")
            return bool(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise QmddError(ErrorCode.CONFIG_ERROR, f"{source}: {name} = {value!r} is not a valid {kind}") from None


def load_config(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    paths = resolve_paths(env)
    values: dict[str, Any] = {}
    if paths.config_file.is_file():
        try:
            data = tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: {exc}") from None
        for key, value in data.get("daemon", data).items():
            if key in _TUNABLES:
                values[key] = _coerce(key, value, str(paths.config_file))
            elif not isinstance(value, dict):
                raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: unknown setting {key!r}")
    for key in _TUNABLES:
        env_value = env.get(f"QMDD_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, env_value, f"QMDD_{key.upper()}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return replace(Config(paths=paths), **values)
