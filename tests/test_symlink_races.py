"""Reading files safely against a hostile neighbour: a symlink swapped in mid-read (renameat2
RENAME_EXCHANGE in a loop), a collection root replaced by a symlink or another directory, and the
escapes that must keep failing (`..`, absolute paths, `~`, links out at rest). Real files, real
SQLite, a real daemon; the swap loops are bounded in time so each test stays short."""

from __future__ import annotations

import ctypes
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from qmdctl.client import Client
from qmdd.chunking import ChunkerConfig
from qmdd.indexing import scan_collection
from qmdd.methods.documents import read_text
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store import db, lookups
from qmdd.store import documents as docs
from qmdd.walk import WalkConfig, walk_collection
from tests.conftest import Env
from tests.test_watch import add_collection, wait_for, watch_state

SECRET = "zanzibar-secret-outside"
INSIDE = "inside text, harmless"
RACE_S = 1.5
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.md"
    secret.parent.mkdir()
    secret.write_text(f"# Secret\n\n{SECRET}\n")
    return secret


@pytest.fixture
def race_root(tmp_path: Path, outside: Path) -> Path:
    """coll/race/f.md, a plain file, and coll/race/.swap, a symlink out, ready to trade places."""
    root = tmp_path / "coll"
    (root / "race").mkdir(parents=True)
    (root / "race" / "f.md").write_text(f"# F\n\n{INSIDE}\n")
    (root / "race" / ".swap").symlink_to(outside)
    return root


@contextmanager
def swapping(root: Path) -> Iterator[Callable[[], int]]:
    """Trade race/f.md and the symlink out as fast as the kernel allows, until the block ends."""
    stop = threading.Event()
    swaps = [0]

    def loop() -> None:
        while not stop.is_set():
            _exchange(root / "race" / "f.md", root / "race" / ".swap")
            swaps[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield lambda: swaps[0]
    finally:
        stop.set()
        thread.join(5)
    if (root / "race" / "f.md").is_symlink():  # leave the file in its place for what follows
        _exchange(root / "race" / "f.md", root / "race" / ".swap")


def _indexed_root(conn: sqlite3.Connection, root: Path) -> docs.CollectionRow:
    collection = docs.add_collection(conn, "coll", str(root), ["**/*.md"], [])
    _scan(conn, collection)
    return docs.collection_by_id(conn, collection.id) or collection


def _scan(conn: sqlite3.Connection, collection: docs.CollectionRow) -> None:
    scan_collection(conn, collection, WalkConfig(), batch_files=50, chunker=ChunkerConfig(),
                    on_batch=lambda added, removed: None, on_progress=lambda event: None)


# --- item 3: a symlink swapped in mid-read --------------------------------------------------


def test_reads_during_a_symlink_swap_never_return_the_outside_file(race_root: Path, tmp_path: Path) -> None:
    """The daemon's own read (get, multi-get, search --full and MCP all go through read_text)."""
    conn = db.open_database(tmp_path / "index.sqlite")
    collection = _indexed_root(conn, race_root)
    doc = lookups.doc_at_path(conn, collection.id, "race/f.md")
    assert doc is not None
    served = leaked = refused = 0
    with swapping(race_root) as swaps:
        deadline = time.monotonic() + RACE_S
        while time.monotonic() < deadline:
            try:
                text = read_text(doc, 1 << 20)
            except QmddError as exc:
                # A typed refusal, never INTERNAL (realpath's EINVAL mid-swap was one).
                assert exc.code in (ErrorCode.PERMISSION_DENIED, ErrorCode.NOT_FOUND), exc.to_wire()
                refused += 1
                continue
            leaked += SECRET in text
            served += INSIDE in text
        assert swaps() > 100
    assert leaked == 0, f"{leaked} of {served + leaked + refused} reads returned the outside file"
    assert served and refused  # both sides of the swap were met


def test_indexing_during_a_symlink_swap_never_indexes_the_outside_file(race_root: Path, tmp_path: Path) -> None:
    conn = db.open_database(tmp_path / "index.sqlite")
    collection = _indexed_root(conn, race_root)
    scans = 0
    with swapping(race_root):
        deadline = time.monotonic() + RACE_S
        while time.monotonic() < deadline:
            _scan(conn, collection)
            scans += 1
            leaked = conn.execute("SELECT count(*) FROM chunks WHERE text LIKE ?", (f"%{SECRET}%",)).fetchone()[0]
            assert leaked == 0, f"the outside file was indexed by scan {scans}"
    assert scans > 5


def test_get_multi_get_and_search_full_over_the_socket_during_a_swap(env: Env, race_root: Path) -> None:
    env.run("collection", "add", str(race_root), "--name", "coll")
    answers: list[str] = []
    errors: list[dict[str, Any]] = []
    with env.client() as client, swapping(race_root):
        deadline = time.monotonic() + RACE_S
        while time.monotonic() < deadline:
            try:
                answers.append(client.call("get", {"target": "coll/race/f.md"})["body"])
            except QmddError as exc:
                errors.append(exc.to_wire())
            client.call("multi_get", {"patterns": ["coll/race/*.md"]}, lambda kind, entry: answers.append(str(entry)))
            found = client.call("search", {"query": "harmless", "full": True})["results"]
            answers.extend(r.get("body", "") for r in found)
            errors.extend(r["error"] for r in found if "error" in r)
    assert not any(SECRET in a for a in answers)
    assert {e["code"] for e in errors} <= {"PERMISSION_DENIED", "NOT_FOUND"}
    assert "Traceback" not in env.paths.log_file.read_text()


# --- item 7: a root replaced by a symlink or another directory ------------------------------


@pytest.fixture
def watching(env: Env) -> Env:
    env.vars["QMDD_WATCH"] = "1"
    return env


def _hits(client: Client, query: str) -> list[str]:
    return [r["file"] for r in client.call("search", {"query": query, "limit": 10})["results"]]


@pytest.mark.parametrize("replacement", ["symlink", "directory"])
def test_a_replaced_root_is_refused_not_followed(watching: Env, notes: Path, outside: Path, replacement: str) -> None:
    add_collection(watching, notes)
    with watching.client() as client:
        wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")
        (outside.parent / "alpha.md").write_text(f"# Alpha\n\n{SECRET} in place of alpha\n")
        parked = notes.with_name("parked")
        notes.rename(parked)
        if replacement == "symlink":
            notes.symlink_to(outside.parent)  # the secret's folder now stands at the root's path
        else:
            shutil.copytree(outside.parent, notes)
        # The notifier still follows the moved directory: its change reaches the indexer before the
        # watcher sees the root replaced, and must be refused as a typed error, not crash the indexer.
        (parked / "late.md").write_text("# Late\n\nWritten after the swap.\n")
        wait_for(lambda: watch_state(client)["state"] == "refused", "the replaced root to be refused")
        assert "took its place" in watch_state(client)["last_error"]
        with pytest.raises(QmddError) as got:
            client.call("get", {"target": "notes/alpha.md"})
        assert got.value.code == ErrorCode.PERMISSION_DENIED and "re-add" in " ".join(got.value.hints)
        with pytest.raises(QmddError) as updated:
            client.call("update", {"collections": ["notes"]})
        assert updated.value.code == ErrorCode.PERMISSION_DENIED
        assert not _hits(client, SECRET.replace("-", " "))
        assert client.call("status")["actors"]["indexer"]["restarts"] == 0
        # The real root back in its place: watched and served again.
        if replacement == "symlink":
            notes.unlink()
        else:
            shutil.rmtree(notes)
        parked.rename(notes)
        wait_for(lambda: watch_state(client)["state"] == "watching", "the returned root to be watched")
        assert "gnome-screenshot" in client.call("get", {"target": "notes/alpha.md"})["body"]


def test_a_root_from_before_pinning_is_pinned_by_its_first_scan(tmp_path: Path, notes: Path) -> None:
    conn = db.open_database(tmp_path / "index.sqlite")
    legacy = docs.add_collection(conn, "notes", str(notes), ["**/*.md"], [])  # no identity, as migrated rows
    assert legacy.root_key is None
    _scan(conn, legacy)
    st = os.stat(notes)
    pinned = docs.collection_by_id(conn, legacy.id)
    assert pinned is not None and pinned.root_key == (st.st_dev, st.st_ino)
    notes.rename(notes.with_name("away"))
    notes.mkdir()
    with pytest.raises(OSError, match="another directory took its place"):
        _scan(conn, pinned)


# --- what held up must keep holding ---------------------------------------------------------


def test_in_root_symlinks_are_still_served_and_escapes_still_refused(env: Env, notes: Path, outside: Path) -> None:
    (notes / "rel-link.md").symlink_to("beta.md")
    (notes / "abs-link.md").symlink_to(notes / "beta.md")
    (notes / "projects" / "up-and-in.md").symlink_to("../../notes/beta.md")
    (notes / ".stash").mkdir()
    (notes / ".stash" / "kept.md").write_text("# Kept\n\nStashed away, linked in.\n")
    (notes / "stash").symlink_to(".stash")  # a hidden folder, walked through a visible link
    (notes / "out.md").symlink_to(outside)
    env.run("collection", "add", str(notes), "--name", "notes")
    with env.client() as client:
        for link in ("rel-link.md", "abs-link.md", "projects/up-and-in.md"):
            assert "SQLite WAL" in client.call("get", {"target": f"notes/{link}"})["body"], link
        assert "linked in" in client.call("get", {"target": "notes/stash/kept.md"})["body"]
        for target in ("notes/out.md", str(outside), "notes/../outside/secret.md", "~/secret.md", "/etc/passwd",
                       "notes/projects/../../outside/secret.md"):
            with pytest.raises(QmddError) as got:
                client.call("get", {"target": target, "cwd": str(notes)})
            assert got.value.code in (ErrorCode.NOT_FOUND, ErrorCode.PERMISSION_DENIED), target
        assert not _hits(client, SECRET.replace("-", " "))
        problems = {(p["path"], p["code"]) for p in client.call("status")["problems"]}
    assert ("out.md", "outside_root") in problems


def test_a_fifo_ignore_file_does_not_hang_the_walk(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n")
    os.mkfifo(tmp_path / ".gitignore")
    result: list[Any] = []
    walker = threading.Thread(target=lambda: result.append(walk_collection(tmp_path)), daemon=True)
    walker.start()
    walker.join(10)
    assert result, "the walk blocked opening a FIFO planted as .gitignore"
    assert [f.relpath for f in result[0].files] == ["a.md"]
    assert [(p.relpath, p.code) for p in result[0].problems] == [(".gitignore", "unreadable")]
