import sqlite3
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmdd.chunking import (
    CHUNK_RULES,
    Chunk,
    ChunkerConfig,
    _line_estimates,
    chunk_markdown,
    estimate_tokens,
    extract_title,
)
from tests.conftest import Env

SMALL = ChunkerConfig(target_tokens=40, max_tokens=60, overlap_tokens=10)


def words(n: int, word: str = "word") -> str:
    return " ".join([word] * n)


def check_invariants(text: str, chunks: list[Chunk], config: ChunkerConfig) -> None:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    covered: set[int] = set()
    pieces: dict[int, list[str]] = {}  # a long line's pieces, in order
    for i, chunk in enumerate(chunks):
        assert chunk.seq == i
        assert 1 <= chunk.start_line <= chunk.end_line <= len(lines)
        whole = "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        if chunk.text != whole:  # a piece of one line over the cap: a slice of it, whitespace trimmed
            assert chunk.start_line == chunk.end_line and estimate_tokens(whole) > config.max_tokens
            assert chunk.text == chunk.text.strip() and chunk.text in whole
            pieces.setdefault(chunk.start_line, []).append(chunk.text)
        assert chunk.text.strip()
        assert lines[chunk.start_line - 1].strip() and lines[chunk.end_line - 1].strip()
        assert estimate_tokens(chunk.text) <= config.max_tokens
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    for line, parts in pieces.items():  # together, the whole line's text, in order
        assert "".join("".join(parts).split()) == "".join(lines[line - 1].split())
    for a, b in pairwise(chunks):
        same_line = a.start_line == a.end_line == b.start_line == b.end_line
        assert a.start_line <= b.start_line and (a.end_line < b.end_line or same_line)
    assert {i + 1 for i, line in enumerate(lines) if line.strip()} <= covered


# -- estimate_tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t", 0),
        ("hello world", 2),
        # BERT: git commit { { [ - m | - - message ] } } " { { message } } "
        ('git commit {{[-m|--message]}} "{{message}}"', 21),
        ("中文测试", 4),
        ("configuration", 2),  # long words count one extra piece per 8 characters
    ],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


@given(st.text(max_size=80))
def test_estimate_is_additive_over_lines(text: str) -> None:
    lines = text.split("\n")
    assert _line_estimates(lines) == [estimate_tokens(line) for line in lines]
    assert sum(_line_estimates(lines)) == estimate_tokens(text)


# -- extract_title ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('---\ntitle: "Hello: World"\n---\n# Heading\n', "Hello: World"),
        ("---\nlayout: post\ntitle: Plain title # a comment\n---\n", "Plain title"),
        ('+++\ntitle = "Toml"\n+++\n# Heading\n', "Toml"),
        ("---\n# yaml comment\ntags: [a]\n---\n\nbody\n", "fallback"),
        ("Intro\n\n## **Bold** [link](http://x.org) `code` <b>x</b>\n# Later\n", "Bold link code x"),
        ("# C# and C++ ##\n", "C# and C++"),
        ("```\n# not a heading\n```\nSetext *title*\n=====\n", "Setext title"),
        ("just text\n", "fallback"),
        ("", "fallback"),
    ],
)
def test_extract_title(text: str, expected: str) -> None:
    assert extract_title(text, "fallback") == expected


# -- sections and merging --------------------------------------------------------------------------


def test_empty_documents() -> None:
    assert chunk_markdown("") == []
    assert chunk_markdown(" \n\n\t\n") == []


def test_small_sections_merge_and_keep_first_heading_path() -> None:
    text = "# Install\n\nshort\n\n## From source\n\nmake\n\n# Usage\n\nrun it\n"
    chunks = chunk_markdown(text)
    assert [(c.start_line, c.end_line, c.heading_path) for c in chunks] == [(1, 11, ("Install",))]
    assert chunks[0].text == text.rstrip("\n")


def test_sections_split_at_headings_when_too_big_to_merge() -> None:
    text = f"# A\n{words(30)}\n## B\n{words(36)}\n# C\n{words(5)}\n### D\n{words(5)}\n"
    chunks = chunk_markdown(text, SMALL)
    assert [(c.start_line, c.end_line, c.heading_path) for c in chunks] == [
        (1, 2, ("A",)),
        (3, 4, ("A", "B")),
        (5, 8, ("C",)),
    ]
    check_invariants(text, chunks, SMALL)


def test_front_matter_belongs_to_first_chunk_and_hides_comments() -> None:
    text = "---\ntitle: T\n# not a heading\n---\nIntro.\n# Real\nbody\n"
    chunks = chunk_markdown(text, SMALL)
    assert chunks[0].start_line == 1 and chunks[0].heading_path == ()
    assert "# not a heading" in chunks[0].text
    big = f"---\ntitle: T\n---\n{words(45)}\n# Next\n{words(45)}\n"
    chunks = chunk_markdown(big, SMALL)
    assert chunks[0].start_line == 1 and chunks[0].end_line == 4
    assert chunks[1].heading_path == ("Next",)


def test_blank_preamble_does_not_hide_first_heading() -> None:
    chunks = chunk_markdown("\n\n# Title\ntext\n")
    assert [(c.start_line, c.heading_path) for c in chunks] == [(3, ("Title",))]


def test_heading_inside_fences_is_not_a_section() -> None:
    text = (
        f"# A\n{words(30)}\n```sh\n# comment\n~~~\n``` not a closer\n```\n"
        f"~~~~\n# also comment\n```\n~~~~\n"
        f"- ```sh\n# in a list item fence\n  ```\n"
        f"    ````\n# nested list fence\n    ````\n"
        f"# B\n{words(30)}\n"
    )
    chunks = chunk_markdown(text, SMALL)
    assert [c.heading_path for c in chunks][-1] == ("B",)
    assert {c.heading_path for c in chunks} == {("A",), ("B",)}
    assert chunks[-1].start_line == 18


def test_unclosed_fence_runs_to_end() -> None:
    text = f"# A\n```\n# x\n{words(40)}\n# y\n"
    assert {c.heading_path for c in chunk_markdown(text, SMALL)} == {("A",)}


def test_setext_headings() -> None:
    text = (
        f"Title\n=====\n{words(45)}\n\nSub\ntitle\n---\n{words(45)}\n\n"
        f"- item\n---\n\n{words(45)}\n\n---\n{words(45)}\n"
    )
    chunks = chunk_markdown(text, SMALL)
    paths = [c.heading_path for c in chunks]
    # "- item" + "---" is a list and a thematic break; "---" after a blank line is a break too.
    assert set(paths) == {("Title",), ("Title", "Sub title")}
    assert chunks[1].start_line == 5
    check_invariants(text, chunks, SMALL)


def test_atx_heading_details() -> None:
    text = f"#NoSpace\n{words(45)}\n    # indented code\n{words(45)}\n# Closed ##\n{words(45)}\n"
    chunks = chunk_markdown(text, SMALL)
    assert list(dict.fromkeys(c.heading_path for c in chunks)) == [(), ("Closed",)]


def test_heading_markup_is_stripped_but_a_code_span_is_literal() -> None:
    text = ("# `<cmath>`\n\nintro\n\n## <span id=\"x\">Three-*dimensional*</span> `hypot` [ref](u)\n\nbody\n"
            "\n### **`std::vector<T>`** and <b>bold</b>\n\nmore\n")
    paths = [c.heading_path for c in chunk_markdown(text, ChunkerConfig(target_tokens=4, max_tokens=8,
                                                                       overlap_tokens=0))]
    assert paths[-1] == ("<cmath>", "Three-dimensional hypot ref", "std::vector<T> and bold")


def test_crlf_lines_are_kept_exactly() -> None:
    text = "# A\r\nline\r\n# B\r\n" + "x " * 100 + "\r\n"
    chunks = chunk_markdown(text, SMALL)
    assert chunks[0].heading_path == ("A",)
    assert chunks[0].text == "# A\r\nline\r"
    check_invariants(text, chunks, SMALL)


# -- splitting oversized sections ------------------------------------------------------------------


def test_long_section_splits_at_paragraphs_with_overlap() -> None:
    # Paragraphs of three 5-token lines: two fit the 40-token target, a third does not.
    paragraphs = ["\n".join(f"p{i} l{j} {words(3)}" for j in range(3)) for i in range(7)]
    text = "# Long\n\n" + "\n\n".join(paragraphs) + "\n"
    chunks = chunk_markdown(text, SMALL)
    assert len(chunks) == 4
    assert all(c.heading_path == ("Long",) for c in chunks)
    assert chunks[0].text.startswith("# Long") and chunks[0].text.endswith("p1 l2 word word word")
    for prev, cur in pairwise(chunks):
        # A new piece starts at a paragraph, preceded by the previous piece's last two lines
        # (10 tokens, the overlap budget).
        assert cur.start_line == prev.end_line - 1
        assert cur.text.split("\n")[:2] == prev.text.split("\n")[-2:]
        assert cur.text.split("\n")[2] == ""
    check_invariants(text, chunks, SMALL)


def test_overlap_repeats_trailing_lines_within_budget() -> None:
    lines = [f"l{i} " + words(3) for i in range(40)]  # 5 tokens per line, no blank lines
    text = "\n".join(lines)
    config = ChunkerConfig(target_tokens=40, max_tokens=60, overlap_tokens=10)
    chunks = chunk_markdown(text, config)
    assert len(chunks) > 3
    for prev, cur in pairwise(chunks):
        assert cur.start_line == prev.end_line - 1  # two 5-token lines fit the 10-token overlap
    check_invariants(text, chunks, config)


def test_no_overlap_when_disabled() -> None:
    text = "\n".join(f"l{i} " + words(3) for i in range(40))
    config = ChunkerConfig(target_tokens=40, max_tokens=60, overlap_tokens=0)
    chunks = chunk_markdown(text, config)
    assert all(cur.start_line == prev.end_line + 1 for prev, cur in pairwise(chunks))


def test_fence_that_fits_is_never_cut_and_overlap_never_starts_inside_it() -> None:
    fence = "```\n" + "\n".join(f"echo {i}" for i in range(6)) + "\n```"  # ~20 tokens
    text = "# A\n" + "\n".join(f"l{i} " + words(3) for i in range(14)) + "\n" + fence + "\nafter\n"
    chunks = chunk_markdown(text, SMALL)
    fence_lines = set(range(16, 24))
    for c in chunks:
        inside = fence_lines & set(range(c.start_line, c.end_line + 1))
        assert inside in (set(), fence_lines)
    check_invariants(text, chunks, SMALL)


def test_oversized_fence_is_split_between_lines() -> None:
    body = "\n".join(f"echo {i} {words(4)}" for i in range(60))
    text = f"# Code\n\n```sh\n{body}\n```\n"
    chunks = chunk_markdown(text, SMALL)
    assert len(chunks) > 3
    assert all(estimate_tokens(c.text) <= SMALL.max_tokens for c in chunks)
    check_invariants(text, chunks, SMALL)


def test_a_line_over_the_cap_is_cut_into_sentences() -> None:
    sentences = [f"Sentence {i} says " + words(12) + "." for i in range(20)]
    long_line = " ".join(sentences)
    text = f"# H\nbefore\n\n{long_line}\n\nafter\n"
    chunks = chunk_markdown(text, SMALL)
    assert chunks[0].text == "# H\nbefore" and chunks[-1].text == "after"
    middle = chunks[1:-1]
    assert len(middle) > 1 and all(c.start_line == c.end_line == 4 for c in middle)
    assert all(c.text.endswith(".") for c in middle)  # whole sentences, packed up to the target
    assert all(estimate_tokens(c.text) <= SMALL.target_tokens for c in middle)
    check_invariants(text, chunks, SMALL)


def test_chinese_paragraph_lines_are_cut_at_sentence_ends() -> None:
    sentence = "\u68b5\u8a9e\u7684\u5b78\u8853\u7814\u7a76" * 4 + "\u3002"  # 29 characters, one full stop
    line = sentence * 20
    chunks = chunk_markdown(f"# T\n\n{line}\n")
    assert [c.text for c in chunks[1:]] == [sentence * 6] * 3 + [sentence * 2]  # 6 x 29 <= 200 < 7 x 29
    no_stops = "\u4e2d" * 700  # no sentence end, no space: cut every target_tokens characters
    assert [len(c.text) for c in chunk_markdown(no_stops)] == [200, 200, 200, 100]
    blob = "a" * 5000 + " b"  # a word over the budget, then one more: each said once, in order
    assert [len(c.text) for c in chunk_markdown(blob)] == [200] * 25 + [1]


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        ChunkerConfig(target_tokens=300, max_tokens=256)
    with pytest.raises(ValueError):
        ChunkerConfig(overlap_tokens=256)


# -- property test over generated documents --------------------------------------------------------


@dataclass
class Doc:
    lines: list[str] = field(default_factory=list)
    fences: list[tuple[int, int]] = field(default_factory=list)  # 1-based inclusive line ranges
    heading_at: dict[int, tuple[int, str]] = field(default_factory=dict)  # line -> (level, title)


_word = st.sampled_from(["alpha", "beta", "gamma", "x", "déjà", "中文", "a-b", "#tag", "`code`", "{{x}}"])
_line = st.lists(_word, min_size=1, max_size=12).map(" ".join)
_title_word = st.sampled_from(["Install", "usage", "C#", "x-y", "日本"])
_title = st.lists(_title_word, min_size=1, max_size=3).map(" ".join)
_block = st.one_of(
    st.tuples(st.just("heading"), st.integers(1, 6), _title),
    st.tuples(st.just("setext"), st.sampled_from("=-"), _title),
    st.tuples(st.just("para"), st.lists(_line, min_size=1, max_size=8)),
    st.tuples(st.just("fence"), st.sampled_from(["```", "~~~", "````"]), st.lists(
        st.one_of(_line, st.just("# comment"), st.just("")), max_size=25)),
    st.tuples(st.just("blank"), st.integers(1, 3)),
    st.tuples(st.just("huge"), st.integers(100, 300)),
)


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    doc = Doc()
    if draw(st.booleans()):
        doc.lines += ["---", "title: t", "# yaml comment", "---"]
    for block in draw(st.lists(_block, max_size=14)):
        kind = block[0]
        if kind == "heading":
            doc.heading_at[len(doc.lines) + 1] = (block[1], block[2])
            doc.lines += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "setext":
            doc.heading_at[len(doc.lines) + 1] = (1 if block[1] == "=" else 2, block[2])
            doc.lines += ["", block[2], block[1] * 3, ""]
            doc.heading_at[len(doc.lines) - 2] = doc.heading_at.pop(len(doc.lines) - 3)
        elif kind == "para":
            doc.lines += [*block[1], ""]
        elif kind == "fence":
            start = len(doc.lines) + 1
            doc.lines += [block[1] + "sh", *block[2], block[1]]
            doc.fences.append((start, len(doc.lines)))
        elif kind == "blank":
            doc.lines += [""] * block[1]
        else:
            doc.lines += [words(block[1], "z"), ""]
    return doc


def expected_path(doc: Doc, line: int) -> tuple[str, ...]:
    stack: list[tuple[int, str]] = []
    for at in sorted(doc.heading_at):
        if at > line:
            break
        level, title = doc.heading_at[at]
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
    return tuple(title for _, title in stack)


@settings(max_examples=250, deadline=None)
@given(documents(), st.sampled_from([SMALL, ChunkerConfig(), ChunkerConfig(30, 30, 5)]))
def test_chunk_invariants_on_generated_documents(doc: Doc, config: ChunkerConfig) -> None:
    text = "\n".join(doc.lines)
    chunks = chunk_markdown(text, config)
    check_invariants(text, chunks, config)
    for chunk in chunks:
        span = set(range(chunk.start_line, chunk.end_line + 1))
        assert chunk.heading_path == expected_path(doc, chunk.start_line)
        for start, end in doc.fences:
            fence = set(range(start, end + 1))
            if estimate_tokens("\n".join(doc.lines[start - 1 : end])) <= config.max_tokens:
                assert span & fence in (set(), fence), "a fence that fits was cut"


# -- an index cut by older rules -------------------------------------------------------------------


def test_an_index_cut_by_older_rules_is_cut_again_once(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "notes"
    root.mkdir()
    paragraph = " ".join(f"Sentence {i} of a paragraph written as one line, about the jerboa." for i in range(40))
    (root / "long.md").write_text(f"# Long\n\n{paragraph}\n")
    (root / "short.md").write_text("# Short\n\nOne line.\n")
    env.run("collection", "add", str(root), "--name", "notes")
    env.stop_daemon()
    with sqlite3.connect(env.paths.database) as conn:  # as an index made before CHUNK_RULES "2"
        conn.execute("UPDATE collections SET chunk_rules = ''")
        before = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    [summary] = env.json("update")
    assert summary["updated"] == 2  # every document cut again, though no file changed
    with sqlite3.connect(env.paths.database) as conn:
        assert conn.execute("SELECT chunk_rules FROM collections").fetchall() == [(CHUNK_RULES,)]
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == before > 3
    assert env.json("update")[0]["updated"] == 0  # once
