"""A scan's summary adds up: files = indexed + unchanged + skipped, indexed = new + updated, whatever
the scan met (files too large, binary, not regular, vanished mid-scan, unreadable directories), for a
full scan and for the watcher's path-by-path update alike."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from qmdd.chunking import CHUNK_RULES, ChunkerConfig
from qmdd.indexing import ScanSummary, scan_collection, update_paths
from qmdd.store import db
from qmdd.store import documents as docs
from qmdd.walk import PathFilter, WalkConfig

MAX_BYTES = 1024


def adds_up(summary: ScanSummary) -> None:
    assert summary.files == summary.indexed + summary.unchanged + summary.skipped, summary
    assert summary.indexed == summary.new + summary.updated, summary
    # The problems that are files are the skipped ones; the others say they are not (a report lists them apart).
    assert summary.skipped == sum(p.file for p in summary.problems), summary


def scan(conn: sqlite3.Connection, collection: docs.CollectionRow) -> ScanSummary:
    summary = scan_collection(conn, collection, WalkConfig(max_file_bytes=MAX_BYTES), batch_files=3,
                              chunker=ChunkerConfig(), on_batch=lambda added, removed: None,
                              on_progress=lambda event: None)
    adds_up(summary)
    return summary


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """7 good files; 4 selected but skipped (too large, binary, a FIFO, a name not UTF-8); 2 problems
    that are no file (a symlink loop, a folder whose name is not UTF-8); a .txt (not selected)."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        (root / f"note{i}.md").write_text(f"# Note {i}\n\nbody {i}\n")
    (root / "sub" / "a.md").write_text("# A\n")
    (root / "sub" / "b.md").write_text("# B\n")
    (root / "big.md").write_text("x" * (MAX_BYTES + 1))
    (root / "binary.md").write_bytes(b"\x00\x01binary")
    os.mkfifo(root / "pipe.md")
    Path(os.fsdecode(bytes(root) + b"/bad\xff.md")).write_text("# Bad name\n")
    Path(os.fsdecode(bytes(root) + b"/dir\xff")).mkdir()
    (root / "sub" / "loop").symlink_to(root)
    (root / "other.txt").write_text("not selected\n")
    return root


def test_every_scan_adds_up(tree: Path, tmp_path: Path) -> None:
    conn = db.open_database(tmp_path / "index.sqlite")
    collection = docs.add_collection(conn, "tree", str(tree), ["**/*.md"], [], chunk_rules=CHUNK_RULES)
    first = scan(conn, collection)
    # The case that read "9 files, 7 indexed, 3 skipped": files skipped by the walk were left out of files.
    assert (first.files, first.new, first.updated, first.unchanged, first.skipped) == (11, 7, 0, 0, 4)
    codes = sorted(p.code for p in first.problems)
    assert codes == ["bad_name", "bad_name", "binary", "not_regular", "symlink_loop", "too_large"]

    (tree / "note0.md").write_text("# Note 0\n\nchanged\n")
    (tree / "note1.md").write_text("# Note 1\n\nbody 1\n")  # same content, new mtime: unchanged
    os.utime(tree / "note1.md", ns=(1, 1))
    (tree / "note2.md").unlink()
    (tree / "new.md").write_text("# New\n")
    second = scan(conn, collection)
    assert (second.files, second.new, second.updated, second.unchanged, second.skipped, second.removed) == (
        11, 1, 1, 5, 4, 1)

    # The watcher's way: a stat per changed path, the same arithmetic.
    (tree / "note3.md").write_text("# Note 3\n\nchanged again\n")
    (tree / "big2.md").write_text("y" * (MAX_BYTES + 1))
    path_filter = PathFilter(tree, WalkConfig(max_file_bytes=MAX_BYTES))
    row = docs.collection_by_id(conn, collection.id) or collection
    update = update_paths(conn, row, path_filter, ["note3.md", "big2.md", "note4.md", "gone.md"],
                          max_file_bytes=MAX_BYTES, batch_files=3, chunker=ChunkerConfig(),
                          on_batch=lambda added, removed: None)
    assert update is not None
    adds_up(update)
    assert (update.files, update.updated, update.unchanged, update.skipped) == (3, 1, 1, 1)
