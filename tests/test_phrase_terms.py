"""Chunks' phrase terms stored by the indexer: made after chunks are indexed, filled in for chunks indexed
before (or by another tokenizer), and matched exactly as the chunk's text would be."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from qmdd.search.phrases import PhraseMatcher, stored_terms
from qmdd.search.pipeline import phrase_scores
from qmdd.search.reads import Reads
from qmdd.search.tokenize import Tokenizer
from qmdd.store.chunkterms import VERSION_KEY
from qmdd.store.db import connect
from tests.conftest import Env

TOKENIZER = Tokenizer()  # the daemon's default (stemmed)


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "tar.md").write_text("# tar\n\n> Archiving utility.\n\n- [c]reate an archive from files:\n\n"
                                 "`tar cf target.tar file1 file2`\n\n- E[x]tract an archive:\n\n`tar xf source.tar`\n")
    (root / "zip.md").write_text("# zip\n\n> Package and compress files.\n\n- Add files to an archive:\n\n"
                                 "`zip -r a.zip`\n")
    (root / "notes.md").write_text("# Notes\n\nThe cat sat on the mat. It rained all day.\n\n## Chinese\n\n"
                                   "求两数之和。\n")
    return root


def stored(database: Path) -> list[tuple[int, str, bytes | None]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT id, text, phrase FROM chunks ORDER BY id").fetchall()
    finally:
        conn.close()


def wait_filled(env: Env, count: int) -> None:
    deadline = time.monotonic() + 30
    while (filled := env.json("status")["actors"]["indexer"]["phrase_terms_filled"]) < count:
        assert time.monotonic() < deadline, filled
        time.sleep(0.1)


def test_indexed_chunks_get_their_terms_and_old_ones_too(env: Env, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "docs")
    env.json("collection", "add", str(tree), "--name", "docs")
    rows = stored(env.paths.database)
    wait_filled(env, len(rows))  # in the background, after indexing
    rows = stored(env.paths.database)
    assert len(rows) >= 3 and all(terms == stored_terms(TOKENIZER, text) for _, text, terms in rows)
    (tree / "more.md").write_text("# More\n\nWrite the contents of the clipboard to a file.\n")
    env.run("update")  # a later change: its chunk gets terms too
    wait_filled(env, len(rows) + 1)
    rows = stored(env.paths.database)
    assert all(terms == stored_terms(TOKENIZER, text) for _, text, terms in rows)

    # A database from before (no terms), or one whose terms another tokenizer made: all made again.
    env.stop_daemon()
    conn = sqlite3.connect(env.paths.database)
    conn.execute("UPDATE chunks SET phrase = NULL WHERE id % 2 = 0")
    conn.execute("UPDATE chunks SET phrase = x'01020304' WHERE id % 2 = 1")
    conn.execute("UPDATE meta SET value = 'phrase0/tok0:other' WHERE key = ?", (VERSION_KEY,))
    conn.commit()
    conn.close()
    wait_filled(env, len(rows))  # a new daemon counts from 0
    assert stored(env.paths.database) == rows
    hits = env.json("search", "create a tar archive", "--explain")
    assert hits[0]["file"] == "qmd://docs/tar.md" and hits[0]["explain"]["phrase_match"] > 0.4


def test_stored_and_unstored_terms_score_alike(env: Env, tmp_path: Path) -> None:
    env.json("collection", "add", str(make_tree(tmp_path / "docs")), "--name", "docs")
    env.stop_daemon()
    unstored = tmp_path / "unstored.sqlite"
    shutil.copy(env.paths.database, unstored)
    conn = sqlite3.connect(unstored)
    conn.execute("UPDATE chunks SET phrase = NULL")
    conn.commit()
    conn.close()
    ids = [chunk for chunk, _, _ in stored(env.paths.database)] + [10**6]  # and one that does not exist
    for query in ("create a tar archive", "the cat sat on the mat", "两数之和", "add files to an archive"):
        matcher = PhraseMatcher(query, TOKENIZER)
        scores = []
        for database in (env.paths.database, unstored):
            conn = connect(database, readonly=True)
            try:
                for named in ([None] * len(ids), [("tar",)] * len(ids)):
                    scores.append(phrase_scores(Reads(conn), TOKENIZER, matcher, ids, named))
            finally:
                conn.close()
        assert scores[:2] == scores[2:] and scores[0][-1] == 0.0 and max(scores[0]) > 0.3, (query, scores)
