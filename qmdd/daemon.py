"""The only place that wires actors together and hands out their mailboxes.

Start order: instance lock → socket bound, or inherited from systemd (clients queue in the backlog) →
SQLite migrated → actors started under the supervisor (BM25 reconciles with SQLite; the watcher starts
its watches and rescans every collection for changes made while the daemon was down) → accept loop →
READY (and sd_notify READY=1). Shutdown on SIGTERM/SIGINT or the `shutdown` method: stop accepting,
let in-flight requests finish within the grace period, stop the watcher first and then the other actors
(BM25 and vectors write their snapshots), close the store, remove the socket unless systemd owns it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from functools import partial

import outcome
import trio

from qmdd import __version__, ownfiles
from qmdd.actors.base import CatchUp, Generation, Mailbox, typed_outcome
from qmdd.actors.bm25 import Bm25Actor
from qmdd.actors.embed_jobs import EmbedJobsActor
from qmdd.actors.embedder import EmbedderActor
from qmdd.actors.indexer import IndexerActor, PhraseTerms
from qmdd.actors.messages import ScanCollections
from qmdd.actors.plugins import PluginsActor
from qmdd.actors.supervisor import Supervisor
from qmdd.actors.vectors import VectorsActor
from qmdd.actors.watcher import WatcherActor
from qmdd.config import Config
from qmdd.methods.cache import cached
from qmdd.methods.metrics import timed
from qmdd.methods.services import Mailboxes, make_services
from qmdd.methods.table import MethodTable, method_table
from qmdd.models.natspool import PoolSettings
from qmdd.models.placement import embedding_runtime
from qmdd.models.registry import ModelRegistry, load_model
from qmdd.paths import Paths, ensure_private_dir, listen_address
from qmdd.sandbox.registry import PluginRegistry
from qmdd.search.fields import index_chunks
from qmdd.search.phrases import stored_terms, stored_version
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.store import documents as docs
from qmdd.store import walguard
from qmdd.store.db import connect, database_id, open_database
from qmdd.tokens import TokenFile, ensure_token
from qmdd.transports import listener, systemd
from qmdd.transports.http import HttpDoor, check_tls, is_loopback, open_http_socket, url_of
from qmdd.transports.mcp_host import McpHost
from qmdd.transports.ratelimit import RateLimiter
from qmdd.transports.rpc import RpcServer

log = logging.getLogger("qmdd.daemon")


def open_index(paths: Paths) -> tuple[str, str | None]:
    """Open and migrate SQLite: (its database id, why changes were lost with the WAL, or None). After
    such a loss the collections it forgot are registered again, and the snapshots, which may hold
    what SQLite lost, are dropped to be rebuilt from it."""
    shm_left = walguard.shm_without_wal(paths.database)  # before SQLite makes a new WAL
    conn = open_database(paths.database)
    try:
        db_id = database_id(conn)
        wal_lost = walguard.confirm_loss(conn, paths.database, shm_left)
        if wal_lost:
            paths.bm25_snapshot.unlink(missing_ok=True)
            paths.vector_snapshot.unlink(missing_ok=True)
            walguard.restore_collections(conn, paths.database, wal_lost)
        walguard.save_collections(conn, paths.database, changed=False)
    finally:
        conn.close()
    legacy = paths.legacy_vector_snapshot  # hundreds of MB no version reads any more: rebuilt as vector_snapshot
    for stale in (legacy, legacy.with_name(legacy.name + ".json")):
        stale.unlink(missing_ok=True)
    return db_id, wal_lost


async def _rescan_everything(indexer: Mailbox) -> None:
    """After a lost WAL: the files are still on disk, and a scan re-indexes whatever SQLite lost."""
    scanned = await typed_outcome(indexer.call, ScanCollections())
    if isinstance(scanned, outcome.Error):
        log.warning("rescan after the lost WAL failed: %s (run `qmdctl cleanup` to retry)", scanned.error)
    else:
        log.info("rescan after the lost WAL done")


async def _watch_signals(shutdown: trio.Event, cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                cancel()
                return
            log.info("%s received: shutting down", signal.Signals(signum).name)
            shutdown.set()


async def _settle(mcp: McpHost) -> None:
    """Import the MCP SDK (~1 s) in the background, so an agent's first bridge starts answering at once;
    then freeze what start-up made (`freeze_start_up`)."""
    loaded = await outcome.acapture(mcp.preload)
    if isinstance(loaded, outcome.Error):
        if not isinstance(loaded.error, Exception):
            loaded.unwrap()  # cancellation
        log.warning("MCP support unavailable: %r", loaded.error)
    freeze_start_up()


def freeze_start_up() -> None:
    """Collect start-up's garbage once, then take what remains out of every later collection.

    Start-up leaves ~140k objects that live as long as the daemon (modules, the MCP SDK, the loaded
    indexes). Each full collection walked them all: 58-76 ms with the event loop held, about once in
    8,000 tldr searches, the slowest answer of a run; frozen, the slowest of 8,000 took 9 ms. This one
    collection (~0.1 s, with the GIL held: a thread would hold the event loop as long) happens once,
    right after start-up, instead of at a moment a search cannot choose."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects after a collection of %.0f ms", gc.get_freeze_count(),
             (time.perf_counter() - started) * 1e3)


async def run_daemon(config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    paths = config.paths
    ensure_private_dir(paths.data_dir)
    with listener.instance_lock(paths), listener.daemon_socket(paths) as sock:
        try:
            await _serve(config, sock, task_status)
        finally:
            listener.remove_pid_file(paths)
    log.info("qmdd stopped")


async def _start_actors(supervisor: Supervisor, actors: Mailboxes, config: Config, db_id: str,
                        registry: ModelRegistry, generation: Generation, catch_up: CatchUp) -> None:
    """Each actor under the supervisor, in dependency order; each gets the mailboxes it sends to."""
    paths = config.paths
    runtime = await trio.to_thread.run_sync(embedding_runtime, config, registry)
    await supervisor.start_actor(actors.bm25, lambda: Bm25Actor(
        paths.database, paths.bm25_snapshot, db_id, stem=config.stem, k1=config.k1, b=config.b, generation=generation))
    await supervisor.start_actor(actors.vectors, lambda: VectorsActor(
        paths.database, paths.vector_snapshot, db_id, runtime.fingerprint(registry), 0, generation=generation))
    loader = partial(load_model, registry, device=runtime.device, compute_type=runtime.compute_type,
                     threads=runtime.threads, workers=runtime.workers)
    await supervisor.start_actor(actors.embedder, lambda: EmbedderActor(
        registry, actors.embedder, loader, device=runtime.device, compute_type=runtime.compute_type,
        threads=runtime.threads, workers=runtime.workers, batch_tokens=config.embed_batch_tokens,
        chunking=runtime.chunking, idle_unload_s=config.model_idle_unload_s,
        preload=paths.vector_snapshot.exists(), remote=runtime.remote, pool=PoolSettings.from_config(config)))
    plugins = PluginRegistry(paths.plugins)
    await trio.to_thread.run_sync(plugins.load)
    await supervisor.start_actor(actors.plugins, lambda: PluginsActor(plugins, generation))
    tokenizer = Tokenizer(TokenizerConfig(stem=config.stem))
    phrase_terms = PhraseTerms(partial(stored_terms, tokenizer), stored_version(tokenizer))
    await supervisor.start_actor(actors.indexer, lambda: IndexerActor(
        paths.database, actors.bm25, partial(index_chunks, tokenizer), max_file_bytes=config.max_file_bytes,
        batch_files=config.index_batch_files, vectors=actors.vectors, plugins=plugins, phrase_terms=phrase_terms))
    await supervisor.start_actor(actors.embed_jobs, lambda: EmbedJobsActor(
        paths.database, actors.embedder, actors.indexer, actors.vectors,
        background=config.auto_embed and config.watch))
    await supervisor.start_actor(actors.watcher, lambda: WatcherActor(
        paths.database, actors.indexer, enabled=config.watch, debounce_ms=config.watch_debounce_ms,
        poll_s=config.watch_poll_s, embed_jobs=actors.embed_jobs,
        own_dirs=(paths.data_dir, paths.runtime_dir, paths.cache_dir), catch_up=catch_up))


# Stopped in this order: the watcher makes no more changes, no embed job starts a page, a scan still running
# sends its last batches to BM25 (which must still be there to take them, and then to write its snapshot).
STOP_ORDER = ("watcher", "embed_jobs", "indexer", "plugins", "embedder", "vectors", "bm25")


async def _serve_http(config: Config, table: MethodTable, mcp: McpHost, sock: socket.socket,
                      shutdown: trio.Event, nursery: trio.Nursery) -> HttpDoor:
    """The HTTP door on its bound socket, its token made if there is none yet, its URL in the data dir."""
    paths = config.paths
    await trio.to_thread.run_sync(ensure_token, paths)
    tls = check_tls(config.http_cert, config.http_key)
    door = HttpDoor(table, TokenFile(paths), loopback=is_loopback(listen_address(config.http_listen)[0]),
                    limiter=RateLimiter(config.http_rate_per_minute, config.http_burst),
                    mcp_app=partial(mcp.http_app, stateless=config.http_mcp_stateless),
                    tls=tls)
    url = url_of(sock, tls=tls is not None)
    await nursery.start(door.serve, sock, shutdown, config.shutdown_grace_s)
    await trio.to_thread.run_sync(ownfiles.replace_file, str(paths.http_address), url + "\n")
    log.info("HTTP door on %s", url)
    if not (door.loopback or tls):
        log.warning("the HTTP door serves plain HTTP beyond this machine: its bearer token crosses the network "
                    "in the clear; set [http] cert and key for HTTPS")
    return door


async def _serve(config: Config, sock: socket.socket, task_status: trio.TaskStatus[None]) -> None:
    paths = config.paths
    # Bound first: a port in use is a clear error before anything starts.
    http_sock = open_http_socket(config.http_listen) if config.http_listen else None
    try:
        await _serve_doors(config, sock, http_sock, task_status)
    finally:
        if http_sock is not None:
            http_sock.close()
            paths.http_address.unlink(missing_ok=True)


async def _serve_doors(config: Config, sock: socket.socket, http_sock: socket.socket | None,
                       task_status: trio.TaskStatus[None]) -> None:
    paths = config.paths
    db_id, wal_lost = await trio.to_thread.run_sync(open_index, paths)
    reader = connect(paths.database)
    await trio.to_thread.run_sync(walguard.record_start, paths.database)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope.cancel)
            supervisor = Supervisor(nursery)
            actors = Mailboxes(**{name: Mailbox(name) for name in STOP_ORDER})
            registry = ModelRegistry(paths)
            generation = Generation()
            catch_up = CatchUp(generation)
            await _start_actors(supervisor, actors, config, db_id, registry, generation, catch_up)
            services = make_services(config, reader, actors, supervisor, registry, shutdown, generation, catch_up)
            table = cached(method_table(services), services.cache, services.index_generation)
            metrics = services.metrics
            metrics.read_statistics("cache", lambda: {"results": services.cache.statistics()})
            metrics.read_statistics("actor", supervisor.statistics)
            metrics.read_statistics("door", lambda: services.door_statistics())
            mcp = McpHost(timed(table, metrics, "mcp"))
            rpc = RpcServer({**timed(table, metrics, "socket"), "mcp.session": mcp.session}, f"qmdd/{__version__}",
                            config.frame_stall_s, sessions=("mcp.session",))
            server = listener.trio_listener(sock)
            async with trio.open_nursery() as connections:
                http = None if http_sock is None else await _serve_http(config, timed(table, metrics, "http"), mcp,
                                                                         http_sock, shutdown, connections)
                services.door_statistics = lambda: {**rpc.statistics(), "mcp": mcp.statistics(),
                                                    **({"http": http.statistics()} if http else {})}
                async with trio.open_nursery() as accepting:
                    await accepting.start(partial(trio.serve_listeners, rpc.handle_connection, [server],
                                                  handler_nursery=connections))
                    listener.write_pid_file(paths)
                    log.info("qmdd %s ready on %s (pid %d, up to %d connections)", __version__, paths.socket,
                             os.getpid(), rpc.max_connections)
                    task_status.started()
                    health = partial(service_status, supervisor, reader)
                    systemd.notify("READY=1", f"STATUS={health()}")
                    nursery.start_soon(systemd.keep_manager_informed, health)
                    nursery.start_soon(_settle, mcp)
                    if wal_lost:
                        connections.start_soon(_rescan_everything, actors.indexer)
                    await shutdown.wait()
                    systemd.notify("STOPPING=1", "STATUS=stopping")
                    accepting.cancel_scope.cancel()
                await server.aclose()
                log.info("stopping: no new connections; %d request(s) and %d MCP call(s) in flight",
                         rpc.stats.in_flight, mcp.calls_in_flight)
                with trio.move_on_after(config.shutdown_grace_s):
                    await rpc.idle.wait()
                    await mcp.wait_idle()
                connections.cancel_scope.cancel()
            with trio.move_on_after(config.shutdown_grace_s):
                for name in STOP_ORDER:
                    child = supervisor.children[name]
                    child.mailbox.close()
                    await child.ended.wait()
                await supervisor.wait_ended()
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
    await trio.to_thread.run_sync(walguard.record_clean_stop, paths.database)


def service_status(supervisor: Supervisor, reader: sqlite3.Connection) -> str:
    """The one-line STATUS= that `systemctl --user status qmdd` shows."""
    failed = [name for name, child in supervisor.children.items() if child.status == "failed"]
    if failed:
        return f"degraded: actor {', '.join(failed)} failed"
    try:
        count = len(docs.list_collections(reader))
    except sqlite3.Error as exc:
        return f"serving (collections unreadable: {exc})"
    return f"serving {count} collection{'' if count == 1 else 's'}"
