"""Noticing a lost write-ahead log, and what to rebuild from.

Committed transactions live in `index.sqlite-wal` until a checkpoint copies them into the database
file. Delete that file while the daemon runs (a cleaner, a careless `rm`), then stop the daemon
without a checkpoint (a kill, a crash, a power cut), and SQLite opens the database as of its last
checkpoint, silently: whole collections can vanish. Two sidecars make that visible and repairable:

- `index.sqlite-collections.json`: the collections and contexts, with a generation that the indexer
  bumps in SQLite after each change to them, then writes here. SQLite behind its sidecar's
  generation has lost committed changes, whatever happened to the WAL.
- `index.sqlite-run.json`: whether the last run stopped cleanly. After one that did not, a `-shm`
  left without its WAL means the WAL was removed by something else than SQLite (which, when the
  last connection closes, checkpoints and removes both): document changes may be lost too.

After a loss, the collections SQLite forgot are registered again, every collection is rescanned
(the files are still on disk) and `status` lists the notice until `cleanup`.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from qmdd.ownfiles import replace_file
from qmdd.store import documents as docs
from qmdd.store.contexts import list_contexts, set_context
from qmdd.store.db import transaction

log = logging.getLogger("qmdd.walguard")

NOTICE_KEY = "wal_lost"
"""The code of the notice of a lost WAL, kept in `meta` until `cleanup` has rescanned."""
_GENERATION_KEY = "collections_generation"


def _run_file(database: Path) -> Path:
    return _sibling(database, "-run.json")


def _collections_file(database: Path) -> Path:
    return _sibling(database, "-collections.json")


def _sibling(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _write_json(path: Path, value: Any) -> None:
    """Replace `path` atomically and durably: a crash leaves the old version or the new one. On a full
    or failing disk the sidecar is removed instead (stale, it could raise a false alarm): the daemon
    keeps running, only a lost WAL would then go unnoticed."""
    try:
        replace_file(os.fspath(path), json.dumps(value), durable=True)
    except OSError as exc:
        log.warning("cannot write %s (%s): a lost write-ahead log would go unnoticed until it is written",
                    path.name, exc.strerror or exc)
        path.unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, encoding="utf-8") as source:
        try:
            value = json.load(source)
        except ValueError:
            return {}  # torn by a disk that filled up: no evidence either way
    return value if isinstance(value, dict) else {}


def shm_without_wal(database: Path) -> bool:
    """Before the database is opened (which makes a new WAL): the last run did not stop cleanly, and
    its WAL was removed by something else than SQLite."""
    run = _read_json(_run_file(database))
    return (run.get("stopped") is False and not _sibling(database, "-wal").exists()
            and _sibling(database, "-shm").exists())


def confirm_loss(conn: sqlite3.Connection, database: Path, shm_left: bool) -> str | None:
    """Once the database is open: why committed changes were lost, or None."""
    saved = _read_json(_collections_file(database)).get("generation", 0)
    now = _generation(conn)
    if isinstance(saved, int) and now < saved:
        return (f"the index is older than its last change to collections (generation {now} < {saved}): its "
                f"write-ahead log {_sibling(database, '-wal').name} was lost, or the database file was replaced")
    if shm_left:
        return (f"the write-ahead log {_sibling(database, '-wal').name} was deleted while qmdd ran, and qmdd then "
                "stopped without a checkpoint: changes committed since the last checkpoint are lost")
    return None


def record_start(database: Path) -> None:
    _write_json(_run_file(database), {"pid": os.getpid(), "stopped": False})


def record_clean_stop(database: Path) -> None:
    """After the last connection closed: SQLite checkpointed everything and removed the WAL."""
    _write_json(_run_file(database), {"pid": os.getpid(), "stopped": True})


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_GENERATION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def save_collections(conn: sqlite3.Connection, database: Path, *, changed: bool = True) -> None:
    """The collections and contexts as committed now, after a change to them (`changed`), or at start."""
    if changed:
        with transaction(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key)"
                         " DO UPDATE SET value = CAST(value AS INTEGER) + 1", (_GENERATION_KEY,))
    _write_json(_collections_file(database), {
        "generation": _generation(conn),
        "collections": [{"name": c.name, "root": c.root, "masks": list(c.masks), "excludes": list(c.excludes)}
                        for c in docs.list_collections(conn)],
        "contexts": [{"collection": name, "prefix": prefix, "text": text}
                     for name, _, prefix, text in list_contexts(conn)]})


def restore_collections(conn: sqlite3.Connection, database: Path, notice: str) -> list[str]:
    """After a loss: register again the collections and contexts the sidecar lists and SQLite lost,
    and keep the notice for `status` until `cleanup`. Returns the names registered again."""
    saved = _read_json(_collections_file(database))
    known = {c.name for c in docs.list_collections(conn)}
    restored = []
    for entry in saved.get("collections", []):
        if entry["name"] not in known:
            docs.add_collection(conn, entry["name"], entry["root"], entry["masks"], entry["excludes"])
            restored.append(entry["name"])
    ids = {c.name: c.id for c in docs.list_collections(conn)}
    present = {(name, prefix) for name, _, prefix, _ in list_contexts(conn)}
    for entry in saved.get("contexts", []):
        name = entry["collection"]
        if (name, entry["prefix"]) not in present and (name is None or name in ids):
            set_context(conn, ids.get(name) if name else None, entry["prefix"], entry["text"])
    generation = saved.get("generation")
    if isinstance(generation, int) and generation > _generation(conn):
        with transaction(conn):  # caught up: the next start must not report the same loss again
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_GENERATION_KEY, str(generation)))
    message = notice + (f"; collections registered again from {_collections_file(database).name}: "
                        f"{', '.join(restored)}" if restored else "") + "; every collection is being rescanned"
    docs.set_index_notice(conn, NOTICE_KEY, message)
    log.warning("%s", message)
    return restored


def has_notice(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key = ?", (f"notice:{NOTICE_KEY}",)).fetchone() is not None
