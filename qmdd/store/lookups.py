"""Documents by what names them: a docid, a path, a directory, a path suffix, a glob.

Each is one or a few statements that reach the documents through an index: the (collection, path)
key or the hash index, as ranges where a name is a prefix.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from qmdd.store.db import connect, database_file
from qmdd.store.documents import AT_OR_BELOW, DOCS_SQL, DocRow, at_or_below, list_collections


def _find_docs(conn: sqlite3.Connection, where: str, args: Sequence[Any], limit: int = -1) -> list[DocRow]:
    """Documents in collection then path order, at most `limit` of them (-1: all)."""
    rows = conn.execute(f"{DOCS_SQL} WHERE {where} ORDER BY c.name, d.path LIMIT ?", [*args, limit])
    return [DocRow(*r) for r in rows]


def docs_with_docid_prefix(conn: sqlite3.Connection, prefix: str, limit: int) -> list[DocRow]:
    """Documents whose content hash starts with `prefix` (a docid's hex), as a range of the hash index."""
    return _find_docs(conn, "d.hash >= ? AND d.hash < ?", _prefix_range(prefix), limit)


def doc_at_path(conn: sqlite3.Connection, collection_id: int, path: str) -> DocRow | None:
    found = _find_docs(conn, "d.collection_id = ? AND d.path = ?", [collection_id, path], limit=1)
    return found[0] if found else None


def docs_under(conn: sqlite3.Connection, collection_id: int, prefix: str) -> list[DocRow]:
    """A collection's documents at `prefix` or below it, in path order; all of them for ''."""
    if not prefix:
        return _find_docs(conn, "d.collection_id = ?", [collection_id])
    return _find_docs(conn, f"d.collection_id = ? AND {AT_OR_BELOW}", [collection_id, *at_or_below(prefix)])


def docs_with_path_prefix(conn: sqlite3.Connection, collection_id: int, prefix: str, after: str = "",
                          limit: int = -1) -> list[DocRow]:
    """A collection's documents whose path starts with `prefix` as text (`2026_06` takes `2026_06_01.md`
    and `2026_06/a.md`, as qmd's `ls` does), in path order: one range of the (collection, path) index.
    A page of them: the first `limit` (-1: all) whose path sorts after `after`."""
    return _find_docs(conn, "d.collection_id = ? AND d.path >= ? AND d.path < ? AND d.path > ?",
                      [collection_id, *_prefix_range(prefix), after], limit)


def docs_with_path_suffix(conn: sqlite3.Connection, suffix: str, collection_id: int | None,
                          limit: int) -> list[DocRow]:
    """Documents whose path is `suffix` or ends with '/' + suffix, in one collection or any. Compared
    as text, never as a LIKE pattern: time linear in the suffix, whatever characters it holds."""
    where = "(d.path = ? OR substr(d.path, -?) = ?)"
    args: list[Any] = [suffix, len(suffix) + 1, "/" + suffix]
    if collection_id is not None:
        where += " AND d.collection_id = ?"
        args.append(collection_id)
    return _find_docs(conn, where, args, limit)


def docs_matching(conn: sqlite3.Connection, literal_prefix: str, selects: Callable[[str, str], bool]
                  ) -> list[DocRow]:
    """Documents that `selects(collection name, path)` accepts, in collection then path order, out of
    those whose path, collection/path or qmd:// URI starts with `literal_prefix` (what every name a
    glob matches starts with). Those are ranges of the (collection, path) index; `selects` runs in
    SQLite over them only, so no other document is read at all.

    `selects` is registered on a connection of its own, to the database of `conn`, closed on return:
    a Python function called from SQL deadlocks CPython's sqlite3 when another thread uses the same
    connection meanwhile (the daemon's reader is shared), and closing is how to unregister it for
    good (SQLite refuses to replace a function while a statement runs; Python cannot drop one)."""
    found: list[DocRow] = []
    with contextlib.closing(connect(database_file(conn), readonly=True)) as own:
        own.create_function("qmdd_selects", 2, selects, deterministic=True)
        for collection in list_collections(own):
            for low, high in _path_ranges(collection.name, literal_prefix):
                found.extend(DocRow(*r) for r in own.execute(
                    f"{DOCS_SQL} WHERE d.collection_id = ? AND d.path >= ? AND d.path < ?"
                    " AND qmdd_selects(c.name, d.path) ORDER BY d.path", (collection.id, low, high)))
    return found


def _path_ranges(collection: str, prefix: str) -> list[tuple[str, str | bytes]]:
    """The ranges of paths whose path, collection/path or qmd:// URI in `collection` starts with
    `prefix`: disjoint, in order."""
    if "qmd://".startswith(prefix):
        return [_prefix_range("")]
    starts = {prefix}
    for named in {prefix, prefix.removeprefix("qmd://")}:  # as a collection/path, and as a URI
        if named.startswith(collection + "/"):
            starts.add(named[len(collection) + 1:])
        elif (collection + "/").startswith(named):
            starts.add("")
    # Sorted, a start that begins with another comes right after it, inside its range.
    kept: list[str] = []
    for start in sorted(starts):
        if not kept or not start.startswith(kept[-1]):
            kept.append(start)
    return [_prefix_range(start) for start in kept]


def _prefix_range(prefix: str) -> tuple[str, str | bytes]:
    """[low, high): exactly the strings that start with `prefix`, for an index range. SQLite compares
    text as UTF-8 bytes, in code point order; any BLOB sorts after all text, so X'' bounds nothing."""
    stem = prefix.rstrip(chr(0x10FFFF))
    if not stem:
        return prefix, b""
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates have no UTF-8: the next text is U+E000
        following = 0xE000
    return prefix, stem[:-1] + chr(following)
