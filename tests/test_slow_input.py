"""Input built to be slow: a multi-megabyte line, globs that backtrack, targets too long for SQLite.
Each answers in time linear in its input, off the event loop, or is refused as INVALID_INPUT."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmdctl.client import Client
from qmdd.actors.bm25 import INLINE_CHARS
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.pipeline import MAX_QUERY_CHARS
from qmdd.search.snippets import MAX_SNIPPET_CHARS, Snippets
from qmdd.search.targets import MAX_GLOB_CHARS, MAX_TARGET_CHARS, Glob
from qmdd.search.tokenize import Tokenizer
from tests.conftest import Env

# Deadlines for a hang, not measurements: the old code took from 10 s to hours on these inputs.
DEADLINE_S = 30
LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def lorem_line(chars: int) -> str:
    return (LOREM * (chars // len(LOREM) + 1))[:chars]


@pytest.fixture
def huge_line(tmp_path: Path) -> Path:
    """One 2 MB line with 'needle' in its middle; every 80 characters hold 'lorem'."""
    root = tmp_path / "huge"
    root.mkdir()
    half = lorem_line(1_000_000)
    (root / "line.md").write_text(f"{half} the needle is here {half}\n")
    (root / "small.md").write_text("# Small\n\nA short note on lorem.\n")
    return root


def test_snippet_of_a_huge_line_is_the_part_around_the_match() -> None:
    tok = Tokenizer()
    half = lorem_line(1_000_000)
    snippet = Snippets(tok.query_terms("lorem needle"), tok.index_terms).make(
        f"# Title\n{half} the needle is here {half}\nafter", chunk_start_line=10, doc_lines=12)
    header, body = snippet.text.split("\n", 1)
    assert snippet.line == 11 and header == "@@ -11,2 @@ (10 before, 0 after)"
    assert "the needle is here" in body and body.startswith("...")
    assert len(body) <= MAX_SNIPPET_CHARS


def test_search_of_a_huge_line_answers_and_other_clients_are_served_meanwhile(env: Env, huge_line: Path) -> None:
    env.run("collection", "add", str(huge_line), "--name", "huge")
    found = json.loads(env.run("search", "lorem needle", "--json", timeout=DEADLINE_S).stdout)
    hit = next(r for r in found if r["file"] == "qmd://huge/line.md")
    assert "needle" in hit["snippet"] and hit["line"] == 1

    # Searches back to back on one connection; `status` on another must answer while one is in
    # flight (the daemon counts it in rpc.in_flight beside the status itself), again and again. Each
    # query is new (a word no document has), or the result cache would answer it at once.
    stop = threading.Event()
    searches: list[int] = []

    def search_forever() -> None:
        with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as searcher:
            while not stop.is_set():
                searcher.call("search", {"query": f"lorem needle unseen{len(searches)}", "limit": 2})
                searches.append(1)

    thread = threading.Thread(target=search_forever)
    thread.start()
    try:
        overlapping = 0
        deadline = time.monotonic() + DEADLINE_S
        with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as watcher:
            while overlapping < 5 and time.monotonic() < deadline:
                overlapping += watcher.call("status")["rpc"]["in_flight"] >= 2
        assert overlapping == 5, f"status never overlapped a search in {len(searches)} searches"
    finally:
        stop.set()
        thread.join(DEADLINE_S)
    assert searches and not thread.is_alive()


def test_small_searches_run_on_the_event_loop_and_large_ones_in_a_worker_thread(env: Env, notes: Path) -> None:
    """A search of little work runs in the BM25 actor's turn (a thread hop cost a third of it); a long
    query, or one asking for many hits, is given to a worker thread. Both answer alike."""
    env.run("collection", "add", str(notes), "--name", "notes")

    def searched(query: str, limit: int) -> tuple[list[str], int, int]:
        with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as client:
            files = [r["file"] for r in client.call("search", {"query": query, "limit": limit})["results"]]
            bm25 = client.call("status")["actors"]["bm25"]
        return files, bm25["queries"], bm25["inline_queries"]

    _, queries, inline = searched("gnome screenshot packaging", 5)
    assert inline >= 1
    files, more, inline_more = searched("alpha project", 5)  # each query new: the result cache never answers
    assert files[0] == "qmd://notes/alpha.md" and (more, inline_more) == (queries + 1, inline + 1)
    files, most, inline_most = searched("alpha projects", 100)
    assert files[0] == "qmd://notes/alpha.md" and (most, inline_most) == (more + 1, inline_more)
    files, _, inline_last = searched("alpha project " + "x" * INLINE_CHARS, 5)
    assert files[0] == "qmd://notes/alpha.md" and inline_last == inline_more


def _reference(pattern: str) -> re.Pattern[str]:
    """The glob as a backtracking regex: right, and fast enough for the short strings of the test."""
    out = []
    for token in re.findall(r"\*\*/|\*\*|\*|\?|\[[^\]]+\]|\{[^}]*\}|.", pattern, re.S):
        if token == "**/":
            out.append("(?:.*/)?")
        elif token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        elif token.startswith("[") and len(token) > 1:
            out.append("[" + ("^" + token[2:-1] if token[1] == "!" else token[1:-1]) + "]")
        elif token.startswith("{") and len(token) > 1:
            out.append("(?:" + "|".join(map(re.escape, token[1:-1].split(","))) + ")")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z", re.S)


@settings(max_examples=400, deadline=None)
@given(pattern=st.lists(st.sampled_from(["a", "b", "/", "*", "**", "**/", "?", "[ab]", "[!a]", "{a,b/}", "{,a}",
                                         ".", "q", "c"]), max_size=8).map("".join),
       path=st.lists(st.sampled_from(["a", "b", "/", ".", "ab/", "c"]), min_size=1, max_size=10).map("".join))
def test_glob_matches_what_the_backtracking_regex_matches(pattern: str, path: str) -> None:
    reference = _reference(pattern)
    expected = any(reference.match(text) for text in (f"qmd://c/{path}", f"c/{path}", path))
    assert Glob(pattern).selects("c", path) == expected


def test_globs_that_backtrack_answer_quickly_or_are_refused(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "deep"
    deep = root / "a" / "a" / "a" / "a" / "a" / "a" / "a" / "a"
    deep.mkdir(parents=True)
    for i in range(10):
        (deep / f"{'a' * 60}{i}.md").write_text(f"# Note {i}\n")
    env.run("collection", "add", str(root), "--name", "deep")
    with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as client:
        for pattern in ("**/" * 45 + "zz", "deep/" + "**/a/" * 8 + "*a*a*a*a*a*a*a*a*a*a*b.md"):
            with pytest.raises(QmddError) as caught:
                client.call("multi_get", {"patterns": [pattern]})
            assert caught.value.code is ErrorCode.NOT_FOUND
        found = client.call("multi_get", {"patterns": ["deep/**/a/*1.md"]})
        assert found["documents"] == 1
        for pattern in ("**/" * 3000, "{a,b}" * 7 + "*.md"):
            with pytest.raises(QmddError) as caught:
                client.call("multi_get", {"patterns": [pattern]})
            assert caught.value.code is ErrorCode.INVALID_INPUT
    assert len("**/" * 3000) > MAX_GLOB_CHARS
    proc = env.run("multi-get", "**/" * 3000, check=False, timeout=DEADLINE_S)
    assert proc.returncode == ErrorCode.INVALID_INPUT.spec.exit_code, proc.stderr


def test_a_target_too_long_for_a_path_is_invalid_input(env: Env, huge_line: Path) -> None:
    env.run("collection", "add", str(huge_line), "--name", "huge")
    with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as client:
        for target in ("x" * 1_000_000, "huge/" + "%_" * 600_000, "qmd://huge/" + "a/" * 300_000):
            with pytest.raises(QmddError) as caught:
                client.call("get", {"target": target})
            assert caught.value.code is ErrorCode.INVALID_INPUT
        # At the bound, the path-suffix fallback compares text, never builds a LIKE pattern.
        for target in ("%_" * (MAX_TARGET_CHARS // 2), "a/" * (MAX_TARGET_CHARS // 2)):
            with pytest.raises(QmddError) as caught:
                client.call("get", {"target": target})
            assert caught.value.code is ErrorCode.NOT_FOUND
        assert client.call("get", {"target": "small.md"})["file"] == "qmd://huge/small.md"


def test_a_query_of_megabytes_is_refused_at_once_and_one_at_the_bound_answers(env: Env, huge_line: Path) -> None:
    env.run("collection", "add", str(huge_line), "--name", "huge")
    words = " ".join(f"w{i}" for i in range(400_000))  # ~3 MB of distinct words: seconds of BM25 lookups
    with Client(env.paths, environ=env.vars, reply_timeout=DEADLINE_S) as client:
        for method in ("search", "vsearch", "query"):
            started = time.monotonic()
            with pytest.raises(QmddError) as caught:
                client.call(method, {"query": words, "limit": 2})
            assert caught.value.code is ErrorCode.INVALID_INPUT and f"{MAX_QUERY_CHARS:,}" in caught.value.message
            assert time.monotonic() - started < DEADLINE_S
        bound = ("lorem needle " * MAX_QUERY_CHARS)[:MAX_QUERY_CHARS]
        assert client.call("search", {"query": bound, "limit": 2})["results"]
