"""The installed plugins: kept in the data dir, compiled once, called with their statistics counted,
and disabled after repeated failures.

Each plugin is three files in its directory: NAME.wasm (the module as installed, WAT compiled),
NAME.json (its manifest, hooks, digest, state) and NAME.cwasm (wasmtime's compiled form, a cache:
rebuilt from NAME.wasm when missing or made by another wasmtime). Shared by the plugins actor (install,
remove, query-time calls) and the indexer (transforms), from worker threads: one lock guards the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import wasmtime

from qmdd import ownfiles
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.abi import Candidate
from qmdd.sandbox.manifest import Manifest, check_name, manifest_from, manifest_text
from qmdd.sandbox.runtime import Compiled, PluginCallFailed, Sandbox

log = logging.getLogger("qmdd.plugins")

FAILURES_TO_DISABLE = 3
"""Failed calls in a row after which a plugin is disabled (with the last reason) until enabled again."""
Transform = Callable[[list[tuple[str, str]]], list[tuple[str, bool]]]
"""[(path, text)] -> each one's new text, and whether every transform of the chain made it."""


@dataclass
class PluginStats:
    calls: int = 0
    failures: int = 0
    failures_in_a_row: int = 0
    fuel: int = 0
    seconds: float = 0.0
    last_error: str | None = None


@dataclass
class Installed:
    manifest: Manifest
    compiled: Compiled
    sha256: str
    installed_at: float
    enabled: bool = True
    disabled_reason: str | None = None
    stats: PluginStats = field(default_factory=PluginStats)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def identity(self) -> str:
        """What a transform's output depends on: enters the fingerprint of the documents it changed."""
        return f"{self.name}@{self.manifest.version}:{self.sha256[:16]}"

    def record(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_dict(), "hooks": list(self.compiled.hooks), "sha256": self.sha256,
                "installed_at": self.installed_at, "enabled": self.enabled, "disabled_reason": self.disabled_reason}

    def to_wire(self) -> dict[str, Any]:
        s = self.stats
        return {**self.manifest.to_dict(), "hooks": list(self.compiled.hooks), "sha256": self.sha256,
                "installed_at": self.installed_at, "enabled": self.enabled, "disabled_reason": self.disabled_reason,
                "bytes": len(self.compiled.binary),
                "calls": s.calls, "failures": s.failures, "fuel_used": s.fuel, "seconds": round(s.seconds, 6),
                "last_error": s.last_error}


def _declared(compiled: Compiled, manifest: Manifest, where: str) -> Compiled:
    """The module's hooks narrowed to those its manifest declares; INVALID_INPUT if one is not exported."""
    if manifest.hooks is None:
        return compiled
    missing = sorted(set(manifest.hooks) - set(compiled.hooks))
    if missing:
        raise QmddError(ErrorCode.INVALID_INPUT, f"{where}: its manifest declares the hook(s) {missing}, which it "
                        f"does not export (it exports {list(compiled.hooks)})",
                        hints=("See plugins/ABI.md, 'Exports' and 'The manifest'.",))
    return replace(compiled, hooks=tuple(h for h in compiled.hooks if h in manifest.hooks))


def not_installed(name: str) -> QmddError:
    return QmddError(ErrorCode.NOT_FOUND, f"no plugin named {name!r:.80} is installed",
                     hints=("`qmdctl plugin list` shows the installed plugins.",))


class PluginRegistry:
    def __init__(self, directory: Path, sandbox: Sandbox | None = None) -> None:
        self.directory = directory
        self.sandbox = sandbox or Sandbox()
        self._plugins: dict[str, Installed] = {}
        self._lock = threading.Lock()
        self.broken: dict[str, str] = {}
        """Plugins on disk that could not be loaded, with the reason (shown by `status`)."""

    # --- the table, on disk ----------------------------------------------------------------------

    def load(self) -> None:
        """Every plugin recorded in the directory; one that cannot be loaded is listed in `broken`."""
        if not self.directory.is_dir():
            return
        for record_file in sorted(self.directory.glob("*.json")):
            name = record_file.stem
            try:
                installed = self._load_one(check_name(name, record_file), record_file)
            except (OSError, ValueError, KeyError, TypeError, QmddError, wasmtime.WasmtimeError) as exc:
                self.broken[name] = str(exc)[:300]
                log.warning("plugin %s not loaded: %s", name, exc)
                continue
            with self._lock:
                self._plugins[name] = installed

    def _load_one(self, name: str, record_file: Path) -> Installed:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        binary = (self.directory / f"{name}.wasm").read_bytes()
        if hashlib.sha256(binary).hexdigest() != record["sha256"]:
            raise ValueError(f"{name}.wasm does not match its record (changed on disk?); install it again")
        manifest = manifest_from(record["manifest"], record_file)
        compiled = self._compiled_from_cache(name, binary) or self.sandbox.compile(binary, text=False, where=name)
        compiled = _declared(compiled, manifest, name)
        self.sandbox.started(compiled, manifest, name)
        return Installed(manifest, compiled, record["sha256"], float(record["installed_at"]),
                         bool(record["enabled"]), record.get("disabled_reason"))

    def _compiled_from_cache(self, name: str, binary: bytes) -> Compiled | None:
        cache = self.directory / f"{name}.cwasm"
        with contextlib.suppress(OSError, wasmtime.WasmtimeError):
            # The cache is ours (a private data dir), written from this very binary. Read, not mapped:
            # a mapped file truncated under a loaded module would kill the daemon with SIGBUS.
            module = wasmtime.Module.deserialize(self.sandbox.engine, cache.read_bytes())
            return self.sandbox.checked(module, binary, name)
        return None

    def _write(self, installed: Installed, binary: bytes | None = None) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        name = installed.name
        if binary is not None:
            ownfiles.replace_file(str(self.directory / f"{name}.wasm"), binary, durable=True)
            with contextlib.suppress(OSError, wasmtime.WasmtimeError):
                compiled = bytes(installed.compiled.module.serialize())
                ownfiles.replace_file(str(self.directory / f"{name}.cwasm"), compiled)
        ownfiles.replace_file(str(self.directory / f"{name}.json"), json.dumps(installed.record(), indent=1) + "\n",
                              durable=True)

    # --- management ------------------------------------------------------------------------------

    def install(self, data: bytes, *, where: str, default_name: str, name: str | None = None,
                manifest: str | None = None, replace_existing: bool = False) -> Installed:
        """Compile and check a module (WAT text or binary), then keep it under its name: `name`, else
        its manifest's, else `default_name` (the file's)."""
        if manifest is None:
            chosen = manifest_from({"name": default_name}, where)
        else:
            chosen = manifest_text(manifest, where, default_name=default_name)
        if name:
            chosen = replace(chosen, name=check_name(name))
        self._check_free(chosen.name, replace_existing)  # before compiling, which may take seconds
        compiled = _declared(self.sandbox.compile(data, text=not data.startswith(b"\0asm"), where=where),
                             chosen, where)
        self.sandbox.started(compiled, chosen, where)
        installed = Installed(chosen, compiled, hashlib.sha256(compiled.binary).hexdigest(), time.time())
        with self._lock:
            self._check_free(chosen.name, replace_existing)
            self._write(installed, compiled.binary)
            self._plugins[chosen.name] = installed
            self.broken.pop(chosen.name, None)
        log.info("plugin %s installed (%s, hooks %s)", installed.identity, where, ",".join(compiled.hooks))
        return installed

    def _check_free(self, name: str, replace_existing: bool) -> None:
        if name in self._plugins and not replace_existing:
            raise QmddError(ErrorCode.INVALID_INPUT, f"a plugin named {name!r} is installed already",
                            hints=("Pass --replace to install this one over it.",))

    def remove(self, name: str) -> Installed | None:
        """The plugin removed (None when it was one that could not be loaded)."""
        with self._lock:
            installed = self._plugins.pop(name, None)
            if installed is None and name not in self.broken:
                raise not_installed(name)
            self.broken.pop(name, None)
            for suffix in (".json", ".cwasm", ".wasm"):  # the record first: without it nothing loads
                (self.directory / f"{name}{suffix}").unlink(missing_ok=True)
        log.info("plugin %s removed", name)
        return installed

    def set_enabled(self, name: str, enabled: bool) -> Installed:
        with self._lock:
            installed = self.get(name)
            installed.enabled = enabled
            installed.disabled_reason = None if enabled else "disabled by the user"
            if enabled:
                installed.stats.failures_in_a_row = 0
            self._write(installed)
        return installed

    def get(self, name: str) -> Installed:
        installed = self._plugins.get(name)
        if installed is None:
            raise not_installed(name)
        return installed

    def installed(self) -> list[Installed]:
        with self._lock:
            return sorted(self._plugins.values(), key=lambda p: p.name)

    # --- calls -----------------------------------------------------------------------------------

    def call(self, name: str, hook: str, query: str, candidates: list[Candidate]) -> list[Any]:
        """One batch through a plugin's hook, counted; PluginCallFailed when it gave nothing usable
        (it is then disabled once it has failed FAILURES_TO_DISABLE times in a row)."""
        installed = self.get(name)
        if not installed.enabled:
            raise PluginCallFailed(f"it is disabled ({installed.disabled_reason})")
        try:
            result = self.sandbox.call(installed.compiled, installed.manifest, hook, query, candidates)
        except PluginCallFailed as exc:
            self._failed(installed, exc)
            raise
        with self._lock:
            s = installed.stats
            s.calls += 1
            s.failures_in_a_row = 0
            s.fuel += result.fuel
            s.seconds += result.seconds
        return result.values

    def _failed(self, installed: Installed, failure: PluginCallFailed) -> None:
        why = str(failure)
        with self._lock:
            s = installed.stats
            s.calls += 1
            s.failures += 1
            s.fuel += failure.fuel
            s.seconds += failure.seconds
            s.failures_in_a_row += 1
            s.last_error = why
            log.warning("plugin %s failed: %s", installed.name, why)
            if s.failures_in_a_row >= FAILURES_TO_DISABLE and installed.enabled:
                installed.enabled = False
                installed.disabled_reason = f"failed {s.failures_in_a_row} times in a row; last: {why}"
                log.warning("plugin %s disabled: %s", installed.name, installed.disabled_reason)
                with contextlib.suppress(OSError):
                    self._write(installed)

    # --- transforms, for the indexer -------------------------------------------------------------

    def transforms(self, names: Sequence[str]) -> list[Installed]:
        """Of these plugins, those installed, enabled and with a transform hook, in this order."""
        with self._lock:
            found = [self._plugins.get(n) for n in names]
        return [p for p in found if p is not None and p.enabled and "transform" in p.compiled.hooks]

    def transform_chain(self, names: Sequence[str]) -> tuple[Transform | None, str]:
        """The transforms of these plugins that apply now, chained, and their identity ('' for none)."""
        chain = self.transforms(names)
        if not chain:
            return None, ""

        def transform(documents: list[tuple[str, str]]) -> list[tuple[str, bool]]:
            paths = [path for path, _ in documents]
            texts, complete = [text for _, text in documents], [True] * len(documents)
            for installed in chain:
                texts, made = self._through(installed, paths, texts)
                complete = [c and m for c, m in zip(complete, made, strict=True)]
            return list(zip(texts, complete, strict=True))
        return transform, ",".join(p.identity for p in chain)

    def _through(self, installed: Installed, paths: list[str], texts: list[str]) -> tuple[list[str], list[bool]]:
        """The texts through one transform, and which it made. One that fails a group (a document too big
        for its limits, say) is tried on each document alone; a document it fails on goes on unchanged to
        the next transform: a failing transform after strip-comments used to undo strip-comments too."""
        batch = [Candidate(0.0, text, "", path, "{}", i)
                 for i, (path, text) in enumerate(zip(paths, texts, strict=True))]
        try:
            return self.call(installed.name, "transform", "", batch), [True] * len(texts)
        except PluginCallFailed as exc:
            if len(texts) == 1:
                log.warning("%s: transform %s left out for it: %s", paths[0], installed.name, exc)
                return texts, [False]
        alone = [self._through(installed, [path], [text]) for path, text in zip(paths, texts, strict=True)]
        return [t[0] for t, _ in alone], [m[0] for _, m in alone]
