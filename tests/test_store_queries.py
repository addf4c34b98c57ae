"""The store's named queries: IN lists longer than a statement may bind, globs matched inside SQLite,
paths at or below a directory and docid prefixes as index ranges."""

from __future__ import annotations

import gc
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from qmdd.search.targets import Glob
from qmdd.store import db, lookups
from qmdd.store import documents as docs
from qmdd.store.documents import DocRow, ParsedFile


@dataclass(frozen=True)
class _Chunk:
    seq: int
    start_line: int
    end_line: int
    heading_path: tuple[str, ...]
    text: str


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = db.open_database(tmp_path / "index.sqlite")
    yield connection
    connection.close()


def _add(conn: sqlite3.Connection, name: str, paths: list[str]) -> int:
    collection = docs.add_collection(conn, name, f"/nowhere/{name}", ["**/*.md"], [])
    parsed = [ParsedFile(path, 1, 1, f"{abs(hash((name, path))):064x}", path, 1, (_Chunk(0, 1, 1, (), path),),
                         (f"{name}:{path}",)) for path in paths]
    docs.write_batch(conn, collection.id, parsed, [], [])
    return collection.id


def _everything(conn: sqlite3.Connection) -> list[DocRow]:
    return [d for c in docs.list_collections(conn) for d in lookups.docs_under(conn, c.id, "")]


# --- IN lists ------------------------------------------------------------------------------------

def test_in_lists_longer_than_one_statement_may_bind_are_split(conn: sqlite3.Connection) -> None:
    collection_id = _add(conn, "many", [f"d{i // 100}/f{i}.md" for i in range(2500)])
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # SQLite's limit before 3.32
    ids = sorted(d.id for d in _everything(conn))
    with pytest.raises(sqlite3.OperationalError):
        conn.execute(f"SELECT id FROM documents WHERE id IN ({db.placeholders(len(ids))})", ids)
    assert len(ids) == 2500
    assert sorted(docs.docs_by_ids(conn, [*ids, 10**9])) == ids  # an id that is gone is left out
    chunk_ids = docs.all_chunk_ids(conn)
    assert set(docs.chunk_owners(conn, chunk_ids).values()) == set(ids)
    assert sorted(c.chunk_id for c in docs.chunk_texts(conn, chunk_ids)) == sorted(chunk_ids)
    rows = db.select_in(conn, "SELECT id FROM documents WHERE collection_id = ? AND id IN ({in})", ids[::-1],
                        (collection_id,))
    assert sorted(r[0] for r in rows) == ids
    assert list(db.select_in(conn, "SELECT id FROM documents WHERE id IN ({in})", [])) == []


# --- globs ---------------------------------------------------------------------------------------

COLLECTIONS = {
    "notes": [f"{top}/{sub}{i % 7}/file{i}.{ext}" for i, (top, sub, ext) in enumerate(
        (top, sub, ext) for top in ("a", "b", "notes", "qmd") for sub in ("x", "y") for ext in ("md", "txt")
        for _ in range(120))],
    "notes-old": [f"{top}/f{i}.md" for top in ("a", "notes", "é", "日本") for i in range(150)],
    "qmd": [f"qmd/{i}.md" for i in range(300)] + ["qmd.md", "qmd-x/y.md", "a b/c.md"],
    "n": [f"n/{i}.md" for i in range(200)] + ["\U0010ffff/z.md", "\ud7ff/z.md", "\ue000/z.md"],
}
GLOBS = ["**", "*", "**/*.md", "*.md", "notes/**", "notes*/**", "notes-old/*/*.md", "qmd://notes/a/**",
         "qmd://n*/**", "qmd://n/**", "q*", "qmd:/*", "qmd://qmd/qmd/*.md", "qmd/*.md", "n/**", "n",
         "a/{x,y}1/*.md", "[ab]/**", "é/**", "日本/f1?.md", "notes/notes/x*/*.txt",
         "\U0010ffff/*", "\U0010ffff*", "\ud7ff*/**", "a b/*", "qmd://", "qmd://notes", "no/such/**"]


@pytest.fixture
def filled(conn: sqlite3.Connection) -> sqlite3.Connection:
    for name, paths in COLLECTIONS.items():
        _add(conn, name, paths)
    return conn


def test_a_glob_matched_in_sqlite_selects_what_matching_in_python_selects(filled: sqlite3.Connection) -> None:
    everything = _everything(filled)
    assert len(everything) > 3000
    for pattern in GLOBS:
        glob = Glob(pattern)
        expected = [d.id for d in everything if glob.selects(d.collection, d.path)]
        assert [d.id for d in lookups.docs_matching(filled, glob.literal_prefix, glob.selects)] == expected, pattern


def test_a_glob_reads_only_the_index_ranges_its_literal_prefix_allows(filled: sqlite3.Connection, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []

    def traced(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        own = db.connect(path, readonly=readonly)
        own.set_trace_callback(statements.append)
        return own

    monkeypatch.setattr(lookups, "connect", traced)
    glob = Glob("qmd://notes/a/x1/*.md")
    matched = lookups.docs_matching(filled, glob.literal_prefix, glob.selects)
    assert matched and all(d.path.startswith("a/x1/") for d in matched)
    reads = [s for s in statements if "FROM documents" in s]
    assert reads
    with closing(db.connect(tmp_path / "index.sqlite", readonly=True)) as planner:
        planner.create_function("qmdd_selects", 2, glob.selects)
        for sql in reads:
            plan = " | ".join(r[3] for r in planner.execute("EXPLAIN QUERY PLAN " + sql))
            assert "(collection_id=? AND path>? AND path<?)" in plan, plan


def test_no_predicate_outlives_its_call(filled: sqlite3.Connection) -> None:
    glob = Glob("notes/**")
    gone = weakref.ref(glob)
    assert lookups.docs_matching(filled, glob.literal_prefix, glob.selects)
    del glob
    gc.collect()
    assert gone() is None

    def fails(collection: str, path: str) -> bool:
        raise RuntimeError("a predicate that fails")

    with pytest.raises(sqlite3.OperationalError):
        lookups.docs_matching(filled, "", fails)
    with pytest.raises(sqlite3.OperationalError, match="no such function"):  # never on the caller's connection
        filled.execute("SELECT qmdd_selects('notes', 'a.md')").fetchone()


def test_concurrent_globs_on_shared_and_separate_connections_keep_their_own_predicates(
        filled: sqlite3.Connection, tmp_path: Path) -> None:
    everything = _everything(filled)
    patterns = ["**/*.md", "notes/**", "qmd://n/**", "*/a/**", "[ab]/**", "qmd/*.md"]
    expected = {p: [d.id for d in everything if Glob(p).selects(d.collection, d.path)] for p in patterns}
    own = [db.connect(tmp_path / "index.sqlite", readonly=True) for _ in range(2)]
    # The daemon shares its reader between threads: a Python function called from SQL on a shared
    # connection would deadlock here.
    connections = [filled, filled, filled, *own]
    start = threading.Barrier(len(connections))
    wrong: list[str] = []

    def run(number: int, conn: sqlite3.Connection) -> None:
        start.wait()
        for round_ in range(8):
            pattern = patterns[(number + round_) % len(patterns)]
            glob = Glob(pattern)
            if [d.id for d in lookups.docs_matching(conn, glob.literal_prefix, glob.selects)] != expected[pattern]:
                wrong.append(pattern)

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for conn in own:
        conn.close()
    assert not wrong


# --- paths at or below ---------------------------------------------------------------------------

def test_at_or_below_a_directory_leaves_out_its_siblings(conn: sqlite3.Connection) -> None:
    paths = ["docs", "docs.md", "docs-x/a.md", "docs/a.md", "docs/b/c.md", "docsy/a.md", "doc/a.md", "docs0/a.md"]
    collection_id = _add(conn, "c", paths)
    assert [d.path for d in lookups.docs_under(conn, collection_id, "docs")] == ["docs", "docs/a.md", "docs/b/c.md"]
    assert sorted(docs.paths_under(conn, collection_id, ["docs/b", "doc"])) == ["doc/a.md", "docs/b/c.md"]
    assert [d.path for d in lookups.docs_under(conn, collection_id, "")] == sorted(paths)
    assert lookups.doc_at_path(conn, collection_id, "docs.md") is not None
    assert lookups.doc_at_path(conn, collection_id, "nope.md") is None


def test_a_docid_prefix_is_a_range_of_the_hash_index(conn: sqlite3.Connection) -> None:
    _add(conn, "c", [f"f{i}.md" for i in range(300)])
    everything = _everything(conn)
    for doc in everything[:50]:
        for digits in (1, 2, 6):
            prefix = doc.hash[:digits]
            expected = sorted((d for d in everything if d.hash.startswith(prefix)), key=lambda d: d.path)
            assert lookups.docs_with_docid_prefix(conn, prefix, limit=1000) == expected
