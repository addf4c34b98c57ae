"""A plugin's manifest (NAME.toml beside NAME.wasm or NAME.wat) and the daemon's caps on what it may ask."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmdd.protocol.errors import ErrorCode, QmddError

HOOK_NAMES = ("score", "filter", "transform")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LIMITS = {"fuel": (10_000_000, 1_000_000_000), "memory_mb": (16, 256), "time_ms": (100, 2_000)}
"""Setting -> (default, cap)."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str = "0"
    description: str = ""
    fuel: int = LIMITS["fuel"][0]
    memory_mb: int = LIMITS["memory_mb"][0]
    time_ms: int = LIMITS["time_ms"][0]
    hooks: tuple[str, ...] | None = None
    """The hooks it declares; None: whichever it exports."""

    def to_dict(self) -> dict[str, Any]:
        values = {"name": self.name, "version": self.version, "description": self.description, "fuel": self.fuel,
                  "memory_mb": self.memory_mb, "time_ms": self.time_ms}
        return values if self.hooks is None else {**values, "hooks": list(self.hooks)}


def _invalid(where: Path | str, why: str) -> QmddError:
    return QmddError(ErrorCode.INVALID_INPUT, f"{where}: {why}",
                     hints=("See plugins/ABI.md, 'The manifest'.",))


def check_name(name: str, where: Path | str = "plugin name") -> str:
    if not NAME.match(name):
        raise _invalid(where, f"{name!r:.80} is not a plugin name (lower-case letters, digits, - and _, "
                       "at most 64, starting with a letter or digit)")
    return name


def manifest_from(values: dict[str, Any], where: Path | str) -> Manifest:
    """A manifest from its [plugin] table (or a stored record), each limit checked against the caps."""
    unknown = set(values) - {"name", "version", "description", "hooks", *LIMITS}
    if unknown:
        raise _invalid(where, f"unknown key(s) {sorted(unknown)}")
    fields: dict[str, Any] = {"name": check_name(str(values.get("name", "")), where)}
    for key in ("version", "description"):
        if key in values:
            if not isinstance(values[key], str) or len(values[key]) > 1000 or not values[key].isprintable():
                raise _invalid(where, f"{key} must be printable text")
            fields[key] = values[key]
    if "hooks" in values:
        hooks = values["hooks"]
        if not (isinstance(hooks, list) and hooks and set(hooks) <= set(HOOK_NAMES) and len(set(hooks)) == len(hooks)):
            raise _invalid(where, f"hooks must be a list of distinct hooks from {list(HOOK_NAMES)}")
        fields["hooks"] = tuple(hooks)
    for key, (_, cap) in LIMITS.items():
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise _invalid(where, f"{key} = {value!r:.40} is not allowed: a whole number from 1 to {cap}")
            fields[key] = value
    return Manifest(**fields)


def manifest_text(text: str, where: Path | str, *, default_name: str) -> Manifest:
    """A manifest from its TOML text; `default_name` when it names no plugin."""
    try:
        table = tomllib.loads(text).get("plugin")
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(where, str(exc)) from None
    if not isinstance(table, dict):
        raise _invalid(where, "needs a [plugin] table")
    return manifest_from({"name": default_name, **table}, where)


def read_manifest(module_path: Path) -> Manifest:
    """The manifest beside a module, or the defaults named after its file when there is none."""
    beside = module_path.with_suffix(".toml")
    try:
        text = beside.read_text(encoding="utf-8")
    except FileNotFoundError:
        return manifest_from({"name": module_path.stem}, module_path)
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(beside, f"unreadable: {exc}") from None
    return manifest_text(text, beside, default_name=module_path.stem)
