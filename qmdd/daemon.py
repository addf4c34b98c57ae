"""The only place that wires actors together and hands out their mailboxes.

Start order: instance lock → socket bound, or inherited from systemd (clients queue in the backlog) →
SQLite migrated → actors started under the supervisor (BM25 reconciles with SQLite; the watcher starts
its watches and rescans every collection for changes made while the daemon was down) → accept loop →
READY (and sd_notify READY=1). Shutdown on SIGTERM/SIGINT or the `shutdown` method: stop accepting,
let in-flight requests finish within the grace period, stop the watcher first and then the other actors
(BM25 and vectors write their snapshots), close the store, remove the socket unless systemd owns it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import uuid
from collections.abc import Callable
from functools import partial

import outcome
import trio

from qmdd import __version__
from qmdd.actors.base import Mailbox, typed_outcome
from qmdd.actors.bm25 import Bm25Actor
from qmdd.actors.embedder import EmbedderActor
from qmdd.actors.indexer import IndexerActor
from qmdd.actors.messages import ScanCollections
from qmdd.actors.supervisor import Supervisor
from qmdd.actors.vectors import VectorsActor
from qmdd.actors.watcher import WatcherActor
from qmdd.api import Api, make_services
from qmdd.config import Config
from qmdd.models.placement import embedding_runtime
from qmdd.models.registry import ModelRegistry, load_model
from qmdd.paths import Paths, ensure_private_dir
from qmdd.search.fields import index_chunks
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.store import walguard
from qmdd.store.db import connect, open_database, transaction
from qmdd.transports import listener, systemd
from qmdd.transports.rpc import RpcServer

log = logging.getLogger("qmdd.daemon")


def database_id(conn: sqlite3.Connection) -> str:
    """A random id born with the database: a BM25 snapshot from another database never loads."""
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)", (uuid.uuid4().hex,))
    row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    return str(row[0])


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


async def _preload_mcp(api: Api) -> None:
    """Import the MCP SDK (~1 s) in the background, so an agent's first bridge starts answering at once."""
    loaded = await outcome.acapture(api.mcp.preload)
    if isinstance(loaded, outcome.Error):
        if not isinstance(loaded.error, Exception):
            loaded.unwrap()  # cancellation
        log.warning("MCP support unavailable: %r", loaded.error)


async def run_daemon(config: Config, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    paths = config.paths
    ensure_private_dir(paths.data_dir)
    with listener.instance_lock(paths), listener.daemon_socket(paths) as sock:
        try:
            await _serve(config, sock, task_status)
        finally:
            listener.remove_pid_file(paths)
    log.info("qmdd stopped")


async def _serve(config: Config, sock: socket.socket, task_status: trio.TaskStatus[None]) -> None:
    paths = config.paths
    db_id, wal_lost = await trio.to_thread.run_sync(open_index, paths)
    reader = connect(paths.database)
    await trio.to_thread.run_sync(walguard.record_start, paths.database)
    shutdown = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope.cancel)
            supervisor = Supervisor(nursery)
            mailboxes = {name: Mailbox(name) for name in ("bm25", "vectors", "embedder", "indexer", "watcher")}
            bm25, vectors, embedder, indexer, watcher = mailboxes.values()
            registry = ModelRegistry(paths)
            runtime = await trio.to_thread.run_sync(embedding_runtime, config, registry)
            await supervisor.start_actor(bm25, lambda: Bm25Actor(
                paths.database, paths.bm25_snapshot, db_id, stem=config.stem, k1=config.k1, b=config.b))
            await supervisor.start_actor(vectors, lambda: VectorsActor(
                paths.database, paths.vector_snapshot, db_id, runtime.fingerprint(registry), 0))
            loader = partial(load_model, registry, device=runtime.device, compute_type=runtime.compute_type,
                             threads=runtime.threads, workers=runtime.workers)
            await supervisor.start_actor(embedder, lambda: EmbedderActor(
                registry, embedder, loader, device=runtime.device, compute_type=runtime.compute_type,
                threads=runtime.threads, workers=runtime.workers, batch_tokens=config.embed_batch_tokens,
                chunking=runtime.chunking, idle_unload_s=config.model_idle_unload_s,
                preload=paths.vector_snapshot.exists()))
            prepare = partial(index_chunks, Tokenizer(TokenizerConfig(stem=config.stem)))
            await supervisor.start_actor(indexer, lambda: IndexerActor(
                paths.database, bm25, prepare, max_file_bytes=config.max_file_bytes,
                batch_files=config.index_batch_files, vectors=vectors))
            # Collections with newly indexed chunks, from the watcher to the background embedder.
            indexed_send, indexed_receive = trio.open_memory_channel[int](1)
            await supervisor.start_actor(watcher, lambda: WatcherActor(
                paths.database, indexer, enabled=config.watch, debounce_ms=config.watch_debounce_ms,
                poll_s=config.watch_poll_s, indexed=indexed_send,
                own_dirs=(paths.data_dir, paths.runtime_dir, paths.cache_dir)))
            rpc = RpcServer({}, {"server": f"qmdd/{__version__}", "pid": os.getpid()}, config.frame_stall_s)
            services = make_services(config, reader, mailboxes, supervisor, rpc.statistics, shutdown, registry)
            api = Api(services)
            rpc.methods = api.methods()
            server = listener.trio_listener(sock)
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    await accepting.start(partial(trio.serve_listeners, rpc.handle_connection, [server],
                                                  handler_nursery=connections))
                    listener.write_pid_file(paths)
                    log.info("qmdd %s ready on %s (pid %d, up to %d connections)", __version__, paths.socket,
                             os.getpid(), rpc.max_connections)
                    task_status.started()
                    health = partial(systemd.service_status, supervisor, reader)
                    systemd.notify("READY=1", f"STATUS={health()}")
                    nursery.start_soon(systemd.keep_manager_informed, health)
                    nursery.start_soon(_preload_mcp, api)
                    if wal_lost:
                        connections.start_soon(_rescan_everything, indexer)
                    if config.auto_embed:
                        # Beside the connections: like a client's request, it is stopped before the actors.
                        connections.start_soon(api.semantic.keep_embedded, indexed_receive)
                    await shutdown.wait()
                    systemd.notify("STOPPING=1", "STATUS=stopping")
                    accepting.cancel_scope.cancel()
                await server.aclose()
                log.info("stopping: no new connections; %d request(s) in flight", rpc.stats.in_flight)
                with trio.move_on_after(config.shutdown_grace_s):
                    await rpc.idle.wait()
                connections.cancel_scope.cancel()
            # The indexer first: a scan still running sends its last batches to BM25, which must
            # still be there to take them (and then to write its snapshot).
            with trio.move_on_after(config.shutdown_grace_s):
                for mailbox in (watcher, indexer, embedder, vectors, bm25):
                    mailbox.send_channel.close()
                    await supervisor.children[mailbox.name].ended.wait()
                await supervisor.wait_ended()
            nursery.cancel_scope.cancel()
    finally:
        reader.close()
    await trio.to_thread.run_sync(walguard.record_clean_stop, paths.database)
