"""Plugins under wasmtime: compiled once, checked against the ABI, called in a fresh instance per batch
with a fuel budget, a memory cap and a time limit (plugins/ABI.md).

One Engine serves every plugin and thread; each call has its own Store, so calls run in parallel threads
and nothing a call leaves behind reaches the next. The time limit is epoch interruption: a ticker thread
advances the engine's epoch while calls are running and sleeps otherwise (no idle cost).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import wasmtime

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.abi import (
    ABI_VERSION,
    HOOKS,
    OUTPUT_WIDTH,
    Candidate,
    MalformedOutput,
    batch_size,
    decode_keep,
    decode_scores,
    decode_spans,
    decode_text,
    encode_batch,
)
from qmdd.sandbox.manifest import LIMITS, Manifest
from qmdd.sandbox.shape import Malformed, module_shape, too_big

WASM_MAGIC = b"\0asm"
TICK_S = 0.002
"""Epoch period: a time limit is kept to within about this."""
MAX_STACK_BYTES = 512 * 1024
SETUP_FUEL = 1_000_000
"""For instantiating and asking the ABI version at install."""
TRANSFORM_GROWTH = 4
"""A transform may return at most this many times its input's bytes (plus TRANSFORM_SLACK) per batch."""
TRANSFORM_SLACK = 64 * 1024
_I32_HOOK = (["i32", "i32", "i32"], ["i32"])
_SIGNATURES = {"qmd_alloc": (["i32"], ["i32"]), "qmd_abi_version": ([], ["i32"]),
               **{export: _I32_HOOK for export in HOOKS.values()}}


class PluginCallFailed(Exception):
    """A call that did not give a usable answer; the reason is for warnings, `status` and the log, and
    what the call spent before it failed (fuel, seconds) for the plugin's statistics."""

    def __init__(self, why: str, fuel: int = 0, seconds: float = 0.0) -> None:
        super().__init__(why)
        self.fuel = fuel
        self.seconds = seconds


@dataclass(frozen=True)
class Compiled:
    module: wasmtime.Module
    hooks: tuple[str, ...]
    """The hooks it exports ("score", "filter", "transform")."""
    binary: bytes
    """The module in binary form (WAT text compiled), as it is kept."""


@dataclass(frozen=True)
class CallResult:
    values: list[Any]
    """N scores (floats 0..1), N keep flags or N texts."""
    fuel: int
    seconds: float


class _Ticker:
    """Advances the engine's epoch every TICK_S while any call runs."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._active = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qmdd-plugin-epoch", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._wake.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(TICK_S)
            self._engine.increment_epoch()


class Sandbox:
    def __init__(self) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = MAX_STACK_BYTES
        # A large plugin compiles on one core: on all of them it starved the daemon's searches meanwhile.
        config.parallel_compilation = False
        self.engine = wasmtime.Engine(config)
        self._ticker = _Ticker(self.engine)

    # --- install -------------------------------------------------------------------------------------

    def compile(self, data: bytes, *, text: bool, where: str) -> Compiled:
        """Compile a module (WAT text when `text`) and check it against the ABI: INVALID_INPUT saying
        what is wrong when it is not a plugin qmdd can call."""
        try:
            binary = bytes(wasmtime.wat2wasm(data.decode("utf-8"))) if text else data
        except UnicodeDecodeError:
            raise _not_a_plugin(where, "neither a WebAssembly module (no \\0asm header) nor WebAssembly text "
                                "(not UTF-8)") from None
        except wasmtime.WasmtimeError as exc:
            raise _not_a_plugin(where, f"not WebAssembly text: {str(exc).splitlines()[0]}") from None
        if not binary.startswith(WASM_MAGIC):
            raise _not_a_plugin(where, "not a WebAssembly module (no \\0asm header)")
        with contextlib.suppress(Malformed):  # then wasmtime says what is wrong, below
            if (why := too_big(module_shape(binary))) is not None:
                raise _not_a_plugin(where, why)
        try:
            module = wasmtime.Module(self.engine, binary)
        except wasmtime.WasmtimeError as exc:
            raise _not_a_plugin(where, f"invalid WebAssembly: {str(exc).splitlines()[0]}") from None
        return self.checked(module, binary, where)

    def checked(self, module: wasmtime.Module, binary: bytes, where: str) -> Compiled:
        """A compiled module checked against the ABI (see `compile`)."""
        if module.imports:
            names = ", ".join(f"{i.module}.{i.name}" for i in module.imports[:5])
            raise _not_a_plugin(where, f"it imports {names}: plugins get nothing from the host but their input")
        exports = {e.name: e.type for e in module.exports}
        if not isinstance(exports.get("memory"), wasmtime.MemoryType):
            raise _not_a_plugin(where, "it exports no `memory`")
        for name, expected in _SIGNATURES.items():
            if name in exports and _signature(exports[name]) != expected:
                raise _not_a_plugin(where, f"`{name}` has the type {_signature(exports[name])}, "
                                    f"the ABI's is {expected}")
        if "qmd_alloc" not in exports:
            raise _not_a_plugin(where, "it exports no `qmd_alloc`")
        hooks = tuple(hook for hook, export in HOOKS.items() if export in exports)
        if not hooks:
            raise _not_a_plugin(where, f"it exports no hook ({', '.join(HOOKS.values())})")
        compiled = Compiled(module, hooks, binary)
        if "qmd_abi_version" in exports:
            version = self._abi_version(compiled, where)
            if version != ABI_VERSION:
                raise _not_a_plugin(where, f"it implements ABI version {version}; this qmdd speaks {ABI_VERSION}")
        return compiled

    def _abi_version(self, compiled: Compiled, where: str) -> int:
        # As much memory as any manifest may give it: its own limits are checked by `started`.
        version: int = self._setup(compiled, Manifest(name="install", memory_mb=LIMITS["memory_mb"][1]), where,
                                   "qmd_abi_version")
        return version

    def started(self, compiled: Compiled, manifest: Manifest, where: str) -> None:
        """Refuse a module that cannot start within its manifest's limits (a start function that never
        ends, more memory declared than memory_mb): every call of it would fail."""
        self._setup(compiled, manifest, where)

    def _setup(self, compiled: Compiled, manifest: Manifest, where: str, ask: str | None = None) -> Any:
        """An instance made with SETUP_FUEL under `manifest`'s memory and time limits, and what its
        export `ask` answers (None when not asked)."""
        setup = replace(manifest, fuel=SETUP_FUEL)
        store = self._store(setup)
        try:
            with self._ticker.running():
                instance = wasmtime.Instance(store, compiled.module, [])
                return None if ask is None else _func(instance.exports(store), ask)(store)
        except wasmtime.Trap as trap:
            raise _not_a_plugin(where, f"it failed when started: {_trap_reason(trap, setup, 'to start')}") from None
        except wasmtime.WasmtimeError as exc:
            raise _not_a_plugin(where, f"it failed when started: {_why(exc)}") from None

    # --- calls ---------------------------------------------------------------------------------------

    def call(self, compiled: Compiled, manifest: Manifest, hook: str, query: str,
             candidates: list[Candidate]) -> CallResult:
        """One batch through one hook, in a fresh instance; PluginCallFailed says why it gave nothing."""
        if hook not in compiled.hooks:
            raise PluginCallFailed(f"it has no {hook} hook")
        started = time.perf_counter()
        store = self._store(manifest)
        try:
            with self._ticker.running():
                values = self._run(store, compiled, hook, query, candidates)
        except (wasmtime.Trap, wasmtime.WasmtimeError, MalformedOutput, PluginCallFailed) as exc:
            # What it spent counts too: a plugin that runs out of fuel on every call is the costliest.
            raise PluginCallFailed(_failure(exc, manifest), manifest.fuel - store.get_fuel(),
                                   time.perf_counter() - started) from None
        return CallResult(values, manifest.fuel - store.get_fuel(), time.perf_counter() - started)

    def _store(self, manifest: Manifest) -> wasmtime.Store:
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=manifest.memory_mb << 20)
        store.set_fuel(manifest.fuel)
        # Ticks from now; one more, as the first may come at once.
        store.set_epoch_deadline(math.ceil(manifest.time_ms / 1000 / TICK_S) + 1)
        return store

    def _run(self, store: wasmtime.Store, compiled: Compiled, hook: str, query: str,
             candidates: list[Candidate]) -> list[Any]:
        exports = wasmtime.Instance(store, compiled.module, []).exports(store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)  # checked at install
        size = batch_size(query, candidates, hook)
        base = _func(exports, "qmd_alloc")(store, size)
        if not isinstance(base, int) or base <= 0 or base + size > memory.data_len(store):
            raise PluginCallFailed(f"qmd_alloc({size}) gave no room ({base})")
        batch = encode_batch(query, candidates, hook, base)
        memory.write(store, batch.block, base)
        returned = _func(exports, HOOKS[hook])(store, base, len(candidates), base + batch.output_offset)
        if returned != 0:
            raise PluginCallFailed(f"{HOOKS[hook]} returned {returned}")
        start = base + batch.output_offset
        answer = bytes(memory.read(store, start, start + OUTPUT_WIDTH[hook] * len(candidates)))
        if hook == "score":
            return decode_scores(answer, len(candidates))
        if hook == "filter":
            return decode_keep(answer, len(candidates))
        return _read_texts(store, memory, decode_spans(answer, len(candidates), memory.data_len(store)),
                           TRANSFORM_GROWTH * len(batch.block) + TRANSFORM_SLACK)


def _read_texts(store: wasmtime.Store, memory: wasmtime.Memory, spans: list[tuple[int, int]],
                budget: int) -> list[str]:
    if sum(length for _, length in spans) > budget:
        raise MalformedOutput(f"the transform returned more than {budget:,} bytes for this batch")
    return [decode_text(bytes(memory.read(store, ptr, ptr + length))) for ptr, length in spans]


def _func(exports: Any, name: str) -> wasmtime.Func:
    func = exports[name]
    assert isinstance(func, wasmtime.Func)  # checked at install
    return func


def _signature(kind: Any) -> tuple[list[str], list[str]] | str:
    if isinstance(kind, wasmtime.FuncType):
        return [str(p) for p in kind.params], [str(r) for r in kind.results]
    return type(kind).__name__


def _why(exc: Exception) -> str:
    """The cause wasmtime gives (the last line of its message: the first is a generic "error while
    executing" above a backtrace)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _failure(exc: Exception, manifest: Manifest) -> str:
    if isinstance(exc, wasmtime.Trap):
        return _trap_reason(exc, manifest)
    if isinstance(exc, wasmtime.WasmtimeError):
        return _why(exc)
    if isinstance(exc, MalformedOutput):
        return f"malformed output: {exc}"
    return str(exc)


def _trap_reason(trap: wasmtime.Trap, manifest: Manifest, fuel_for: str = "per call") -> str:
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return f"ran out of fuel ({manifest.fuel:,} {fuel_for})"
    if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
        return f"ran past its time limit ({manifest.time_ms} ms)"
    return f"trapped: {_why(trap)}"


def _not_a_plugin(where: str, why: str) -> QmddError:
    return QmddError(ErrorCode.INVALID_INPUT, f"{where} is not a qmdd plugin: {why}",
                     hints=("See plugins/ABI.md for what a plugin exports; plugins/*.wat are examples.",))
