"""Plugins actor: installs, removes and switches plugins, and runs their query-time hooks.

The plugins themselves live in a `PluginRegistry` (the engine: one wasmtime Engine, the installed table,
their statistics), which the indexer also uses for transforms. Every message is handled beside the
inbox: management one change at a time (its own limiter of one), calls each in a worker thread under
the calls' limiter, so a slow plugin holds a thread, never the event loop, and never more than
PLUGIN_THREADS of the CALL_THREADS at once. Management in turn held the inbox, and with it every search's hooks, for as
long as an install compiled (seconds for a large module). Every change advances the index generation:
a cached search answer never outlives the plugins it was computed with.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from qmdd import faults
from qmdd.actors.base import Actor, Generation, Handler, concurrent
from qmdd.actors.messages import InstallPlugin, ListPlugins, RemovePlugin, RunPlugin, SetPluginEnabled
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.sandbox.registry import PluginRegistry
from qmdd.sandbox.runtime import PluginCallFailed

log = logging.getLogger("qmdd.plugins")

CALL_THREADS = 2
PLUGIN_THREADS = max(1, CALL_THREADS - 1)
"""One plugin's calls at once: never all the threads, so a slow plugin (each call up to its time limit)
queues behind itself and leaves a thread to the others. Sixteen searches through a plugin spinning
~1 s a call held a well-behaved plugin's search for 4 s."""


class PluginsActor(Actor):
    name = "plugins"

    def __init__(self, registry: PluginRegistry, generation: Generation | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._generation = generation or Generation()
        self._calls = trio.CapacityLimiter(CALL_THREADS)
        self._per_plugin: dict[str, trio.CapacityLimiter] = {}
        self._manage = trio.CapacityLimiter(1)

    def handlers(self) -> dict[type, Handler]:
        return {InstallPlugin: concurrent(self._install), RemovePlugin: concurrent(self._remove),
                SetPluginEnabled: concurrent(self._set_enabled), ListPlugins: concurrent(self._list),
                RunPlugin: concurrent(self._run)}

    def extra_statistics(self) -> dict[str, Any]:
        plugins = self._registry.installed()
        return {"installed": len(plugins), "enabled": sum(p.enabled for p in plugins),
                "calls": sum(p.stats.calls for p in plugins), "failures": sum(p.stats.failures for p in plugins),
                "threads_busy": self._calls.borrowed_tokens,
                "by_plugin": {p.name: {"calls": p.stats.calls, "failures": p.stats.failures, "fuel": p.stats.fuel,
                                       "seconds": round(p.stats.seconds, 6)} for p in plugins},
                "disabled": {p.name: p.disabled_reason for p in plugins if not p.enabled},
                "broken": dict(self._registry.broken)}

    async def _install(self, message: InstallPlugin) -> dict[str, Any]:
        await faults.pause("plugins.install")
        installed = await trio.to_thread.run_sync(
            lambda: self._registry.install(message.module, where=message.where, default_name=message.default_name,
                                           name=message.name, manifest=message.manifest,
                                           replace_existing=message.replace), limiter=self._manage)
        self._generation.advance()
        return installed.to_wire()

    async def _remove(self, message: RemovePlugin) -> dict[str, Any]:
        removed = await trio.to_thread.run_sync(self._registry.remove, message.name, limiter=self._manage)
        self._per_plugin.pop(message.name, None)
        self._generation.advance()
        return {"name": message.name, "hooks": list(removed.compiled.hooks) if removed else []}

    async def _set_enabled(self, message: SetPluginEnabled) -> dict[str, Any]:
        changed = await trio.to_thread.run_sync(self._registry.set_enabled, message.name, message.enabled,
                                                limiter=self._manage)
        self._generation.advance()
        return changed.to_wire()

    async def _list(self, _: ListPlugins) -> list[dict[str, Any]]:
        # In a thread: the registry's lock is held while an install writes its files.
        installed = await trio.to_thread.run_sync(self._registry.installed)
        return [p.to_wire() for p in installed]

    async def _run(self, message: RunPlugin) -> list[Any]:
        own = self._per_plugin.setdefault(message.name, trio.CapacityLimiter(PLUGIN_THREADS))
        try:
            async with own:
                return await trio.to_thread.run_sync(self._registry.call, message.name, message.hook,
                                                     message.query, message.candidates, limiter=self._calls)
        except PluginCallFailed as exc:
            if not self._registry.get(message.name).enabled:
                # The failure that disabled it changes what searches answer from now on.
                self._generation.advance()
            raise QmddError(ErrorCode.PLUGIN_FAILED, f"plugin {message.name!r} failed: {exc}", hints=(
                f"`qmdctl plugin info {message.name}` shows its failures; `qmdctl plugin disable "
                f"{message.name}` stops it.",)) from None
