"""Daemon settings. Precedence: command-line flags > QMDD_* environment > config file > defaults."""

from __future__ import annotations

import math
import os
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qmdd.paths import Paths, listen_address, resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import MAX_FRAME_BYTES


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
    """Keep embedded, newest first, the collections the user chose with `qmdctl embed` (all, without `-c`)."""
    http_listen: str = ""
    """HOST:PORT of the HTTP door (REST), e.g. 127.0.0.1:8181; empty: no HTTP. Config file: [http] listen."""
    http_rate_per_minute: float = 60.0
    """HTTP requests a client (by address) may make per minute, after its burst; 0: no limit. [http] rate_per_minute."""
    http_burst: int = 10
    """HTTP requests a client may make at once before the rate applies. [http] burst."""
    http_mcp_stateless: bool = False
    """MCP over HTTP without sessions: each POST /mcp stands alone, answered in JSON. [http] mcp_stateless."""
    http_cert: str = ""
    """PEM certificate file: the HTTP door speaks HTTPS (with http_key). [http] cert."""
    http_key: str = ""
    """PEM private key file of http_cert. [http] key."""
    cache_entries: int = 1000
    """Search answers kept for repeated queries (0: no cache); a change to the index retires them. [cache] entries."""
    cache_ttl_s: float = 3600.0
    """Longest a cached answer is kept. [cache] ttl_s."""
    log_format: str = "text"
    """text, or json: one JSON object per line (time, level, logger, trace_id, message). [log] format."""
    log_max_bytes: int = 10 * 1024 * 1024
    """The log file (qmdd.log) is rotated past this size (0: never). [log] max_bytes."""
    log_backups: int = 3
    """Rotated log files kept (qmdd.log.1 ... .N). [log] backups."""
    remote_url: str = ""
    """Base URL of an OpenAI-compatible embeddings API, /v1 included (POSTs go to it + /embeddings); empty:
    the local models. [embed] url."""
    remote_model: str = ""
    """The `model` sent to remote_url (required with it). [embed] model."""
    remote_key_env: str = ""
    """Environment variable holding the API key (QMDD_*, or an auto-started daemon never sees it). [embed] key_env."""
    remote_key_file: str = ""
    """File holding the API key, readable by its owner only (as ssh wants its keys). [embed] key_file."""
    remote_batch: int = 64
    """Texts per request to remote_url. [embed] batch."""
    remote_timeout_s: float = 30.0
    """Longest one request to remote_url may take. [embed] timeout_s."""
    remote_retries: int = 3
    """Retries of a request refused for load (429, 5xx) or lost (timeout, connection). [embed] retries."""
    remote_in_flight: int = 4
    """Bulk requests in flight at once (queries have as many beside them). [embed] in_flight."""
    remote_dims: int = 0
    """Dimensions the remote model must answer with (0: whatever its first answer has). [embed] dims."""
    remote_query_prefix: str = ""
    """Put before each query sent to remote_url (e5's "query: "); none by default. [embed] query_prefix."""
    remote_passage_prefix: str = ""
    """Put before each passage sent to remote_url. [embed] passage_prefix."""
    remote_cosine_floor: float = 0.3
    """The cosine unrelated texts reach with the remote model (the hybrid counts from it). [embed] cosine_floor."""
    embed_nats: str = ""
    """nats:// URL of a NATS server whose `qmdd worker`s embed bulk batches; empty: all local. [embed] nats."""
    embed_nats_in_flight: int = 8
    """Bulk batches at the worker pool at once. [embed] nats_in_flight."""
    embed_nats_timeout_s: float = 30.0
    """Longest a worker may take over a batch (its wait in the worker's queue included) before the batch
    is sent again, once, and then embedded here. [embed] nats_timeout_s."""


_TUNABLES = {f.name: f.type for f in fields(Config) if f.name != "paths"}
_TABLES = {
    "http": {"listen": "http_listen", "rate_per_minute": "http_rate_per_minute", "burst": "http_burst",
             "cert": "http_cert", "key": "http_key", "mcp_stateless": "http_mcp_stateless"},
    "cache": {"entries": "cache_entries", "ttl_s": "cache_ttl_s"},
    "log": {"format": "log_format", "max_bytes": "log_max_bytes", "backups": "log_backups",
            "level": "log_level"},
    "embed": {key: f"remote_{key}" for key in ("url", "model", "key_env", "key_file", "batch", "timeout_s",
                                               "retries", "in_flight", "dims", "query_prefix", "passage_prefix",
                                               "cosine_floor")}
    | {key: f"embed_{key}" for key in ("nats", "nats_in_flight", "nats_timeout_s")},
}
"""The config file's tables beside [daemon]: table -> key there -> setting."""

# Largest file the size guard may admit: a `get` reply carries the whole file in one frame.
MAX_FILE_BYTES_LIMIT = MAX_FRAME_BYTES - 1024 * 1024


@dataclass(frozen=True)
class _Range:
    """Allowed values of a number setting, both ends included. Every bound is finite, so NaN (which
    compares false to everything) and infinities fall outside."""

    low: float
    high: float
    note: str = ""

    def allows(self, value: float) -> bool:
        return self.low <= value <= self.high

    def describe(self) -> str:
        return f"a number from {_plain(self.low)} to {_plain(self.high)}{self.note}"


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else f"{number:g}"


_RANGES: dict[str, _Range] = {
    "max_file_bytes": _Range(1, MAX_FILE_BYTES_LIMIT, " (bytes)"),
    "k1": _Range(0.0, 10.0),
    "b": _Range(0.0, 1.0),
    "index_batch_files": _Range(1, 100_000),
    "shutdown_grace_s": _Range(0.0, 3600.0, " (seconds)"),
    # Above zero: with 0 or less every request frame would count as stalled the moment it began.
    "frame_stall_s": _Range(0.1, 3600.0, " (seconds)"),
    "embed_batch_tokens": _Range(1, 1_000_000),
    "embed_threads": _Range(0, 1024, " (0: all cores)"),
    "model_idle_unload_s": _Range(0.0, 7 * 86400.0, " (seconds; 0 keeps models loaded)"),
    "watch_debounce_ms": _Range(0, 60_000, " (milliseconds)"),
    "watch_poll_s": _Range(0.1, 3600.0, " (seconds)"),
    "http_rate_per_minute": _Range(0.0, 1e6, " (0: no limit)"),
    "http_burst": _Range(1, 1_000_000),
    "cache_entries": _Range(0, 1_000_000),
    "cache_ttl_s": _Range(0.0, 30 * 86400.0, " (seconds)"),
    "log_max_bytes": _Range(0, 1 << 40, " (bytes; 0: never rotate)"),
    "log_backups": _Range(1, 100),
    "remote_batch": _Range(1, 2048),
    "remote_timeout_s": _Range(0.1, 3600.0, " (seconds)"),
    "remote_retries": _Range(0, 20),
    "remote_in_flight": _Range(1, 256),
    "remote_dims": _Range(0, 65536, " (0: learned from the first answer)"),
    "remote_cosine_floor": _Range(-1.0, 1.0),
    "embed_nats_in_flight": _Range(1, 1024),
    "embed_nats_timeout_s": _Range(0.1, 3600.0, " (seconds)"),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": ("debug", "info", "warning", "error"),
    "device": ("auto", "cpu", "cuda"),
    "log_format": ("text", "json"),
}
_BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                  "off": False}


def allowed_values(name: str) -> str:
    """The rule for one setting, in words, for error messages and hints."""
    if name in _RANGES:
        allowed = _RANGES[name].describe()
        return allowed.replace("a number", "a whole number") if _TUNABLES[name] in ("int", int) else allowed
    if name in _CHOICES:
        return "one of " + ", ".join(_CHOICES[name])
    if _TUNABLES[name] in ("bool", bool):
        return "true or false (also 1/0, yes/no, on/off)"
    if name == "http_listen":
        return "HOST:PORT, e.g. 127.0.0.1:8181 or [::1]:8181 (empty: no HTTP)"
    if name == "remote_url":
        return "an http(s) base URL without credentials, e.g. http://127.0.0.1:11434/v1 (empty: local models)"
    if name == "embed_nats":
        return "a nats:// or tls:// URL, e.g. nats://10.0.0.5:4222 (empty: no worker pool)"
    return "text"


def _parse(kind: Any, value: Any) -> Any:
    """`value` (a TOML value or an environment/flag string) as `kind`; raises ValueError if it is not one."""
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.strip().lower()]
        raise ValueError(value)
    if isinstance(value, bool):  # a bool is an int in Python; `k1 = true` is a mistake, not 1.0
        raise ValueError(value)
    if kind in ("int", int):
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError(value)
    if kind in ("float", float):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError(value)
    if not isinstance(value, str):
        raise ValueError(value)
    return value.strip()


_VERBATIM = frozenset({"remote_query_prefix", "remote_passage_prefix"})
"""Text settings kept as given: a prefix such as "query: " ends in the space the model expects."""


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        parsed: Any = value if name in _VERBATIM and isinstance(value, str) else _parse(_TUNABLES[name], value)
        rule = _RANGES.get(name)
        if rule is not None and not (math.isfinite(parsed) and rule.allows(parsed)):
            raise ValueError(value)
        if name in _CHOICES:
            parsed = parsed.lower()
            if parsed not in _CHOICES[name]:
                raise ValueError(value)
        if name == "http_listen" and parsed:
            listen_address(parsed)
        if name == "remote_url" and parsed:
            parsed = remote_base_url(parsed)
        if name == "embed_nats" and parsed:
            nats_url(parsed)
    except (TypeError, ValueError, OverflowError):
        raise QmddError(ErrorCode.CONFIG_ERROR, f"{source}: {name} = {value!r} is not allowed: "
                        f"{name} must be {allowed_values(name)}",
                        hints=(f"Give {name} {allowed_values(name)}, or remove the setting to use the "
                               f"default ({getattr(Config, name)!r}).",),
                        details={"key": name, "allowed": allowed_values(name)}) from None
    return parsed


def load_config(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                flags: dict[str, str] | None = None) -> Config:
    """The settings: the config file, then QMDD_* variables, then `overrides` (command-line values, each
    named in errors by its flag in `flags`, else --its-key)."""
    env = dict(os.environ) if env is None else env
    paths = resolve_paths(env)
    values: dict[str, Any] = {}
    if paths.config_file.is_file():
        try:
            data = tomllib.loads(paths.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: {exc}") from None
        settings = data.get("daemon", data)
        if not isinstance(settings, dict):
            raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: [daemon] must be a table of settings")
        for key, value in settings.items():
            if key in _TUNABLES:
                values[key] = _coerce(key, value, str(paths.config_file))
            elif not isinstance(value, dict):
                raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: unknown setting {key!r}")
        for table, keys in _TABLES.items():
            given = data.get(table, {})
            if not isinstance(given, dict) or set(given) - set(keys):
                raise QmddError(ErrorCode.CONFIG_ERROR, f"{paths.config_file}: [{table}] takes {', '.join(keys)}")
            for key, value in given.items():
                values[keys[key]] = _coerce(keys[key], value, f"{paths.config_file} [{table}]")
    for key in _TUNABLES:
        env_value = env.get(f"QMDD_{key.upper()}")
        if env_value is not None:
            values[key] = _coerce(key, env_value, f"QMDD_{key.upper()}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, (flags or {}).get(key) or f"--{key.replace('_', '-')}")
    config = replace(Config(paths=paths), **values)
    _check_remote(config)
    return config


def _check_remote(config: Config) -> None:
    """The remote settings that only make sense together."""
    if not config.remote_url:
        return
    if config.embed_nats:
        raise QmddError(ErrorCode.CONFIG_ERROR, "remote_url and embed_nats are both set",
                        hints=("The worker pool embeds with the local model, which remote_url replaces: keep one.",))
    if not config.remote_model:
        raise QmddError(ErrorCode.CONFIG_ERROR, "remote_url is set but remote_model is not",
                        hints=("Set remote_model ([embed] model) to the model name the server expects.",))
    if config.remote_key_env and config.remote_key_file:
        raise QmddError(ErrorCode.CONFIG_ERROR, "remote_key_env and remote_key_file are both set",
                        hints=("Keep one: remote_key_file for a daemon qmdctl starts, or a QMDD_* variable.",))


def remote_base_url(value: str) -> str:
    """remote_url as the client uses it: the base URL (OpenAI clients' base_url) without its trailing '/'.
    Credentials in it are refused: the URL is logged and shown, a key file is not."""
    parts = urllib.parse.urlsplit(value)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password
            or parts.query or parts.fragment):
        raise ValueError(value)
    parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    return value.rstrip("/")


def nats_url(value: str) -> str:
    """embed_nats checked: nats:// or tls://, a host, a port that is a number in range."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("nats", "tls") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(value)
    parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in range
    return value


def display_url(value: str) -> str:
    """A NATS URL as logs and status show it: without the user, password or token it may hold."""
    parts = urllib.parse.urlsplit(value)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
