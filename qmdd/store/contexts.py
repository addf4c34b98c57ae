"""The contexts: text attached to a path prefix (or to everything), returned with every hit below it."""

from __future__ import annotations

import sqlite3

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store.db import transaction


def no_context(collection: str | None, prefix: str) -> QmddError:
    target = "/" if collection is None else f"qmd://{collection}/{prefix}"
    return QmddError(ErrorCode.NOT_FOUND, f"no context set for {target}",
                     hints=("Run `qmdctl context list` to see the contexts set.",))


def set_context(conn: sqlite3.Connection, collection_id: int | None, prefix: str, text: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM contexts WHERE collection_id IS ? AND prefix = ?", (collection_id, prefix))
        conn.execute("INSERT INTO contexts (collection_id, prefix, text) VALUES (?, ?, ?)",
                     (collection_id, prefix, text))


def remove_context(conn: sqlite3.Connection, collection_id: int | None, prefix: str) -> bool:
    with transaction(conn):
        cur = conn.execute("DELETE FROM contexts WHERE collection_id IS ? AND prefix = ?", (collection_id, prefix))
    return cur.rowcount > 0


def list_contexts(conn: sqlite3.Connection) -> list[tuple[str | None, int | None, str, str]]:
    """(collection name or None for global, collection id, prefix, text), global first."""
    rows = conn.execute("SELECT c.name, x.collection_id, x.prefix, x.text FROM contexts x"
                        " LEFT JOIN collections c ON c.id = x.collection_id ORDER BY c.name, x.prefix")
    return [(r[0], r[1], r[2], r[3]) for r in rows]
