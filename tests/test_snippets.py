"""Snippets: the best line wins, line numbers are the file's, the header says where it sits."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmdd.search import snippets as snippets_module
from qmdd.search.snippets import BACKGROUND_WEIGHT, LONG_LINE_CHARS, MAX_CANDIDATES, Snippets, _excerpt
from qmdd.search.tokenize import Tokenizer

TOK = Tokenizer()


def snippets(query: str) -> Snippets:
    return Snippets(TOK.query_terms(query), TOK.index_terms)


CHUNK = "## Install\n\nFirst line about nothing.\n\n- Extract the Archives quickly:\n\n`tar xf file.tar`\nlast"


def test_best_line_is_the_one_with_most_terms_even_through_stemming_and_case() -> None:
    lines = CHUNK.split("\n")
    assert snippets("extracting archive").best_hit(lines)[0] == 4
    assert snippets("tar").best_hit(lines)[0] == 6
    assert snippets("zebra").best_hit(lines)[0] == -1


def test_snippet_header_and_line_numbers_are_file_relative() -> None:
    snip = snippets("extract archive").make(CHUNK, chunk_start_line=10, doc_lines=40)
    header, *body = snip.text.split("\n")
    assert snip.line == 14
    # The line before the hit is blank, so the window starts at the hit: 4 lines, 14..17 of 40.
    assert header == "@@ -14,4 @@ (13 before, 23 after)"
    assert body == ["- Extract the Archives quickly:", "", "`tar xf file.tar`", "last"]


def test_no_match_falls_back_to_the_chunk_start() -> None:
    snip = snippets("zebra").make(CHUNK, chunk_start_line=1, doc_lines=8, context_lines=2)
    assert snip.line == 1 and snip.text.split("\n")[1] == "## Install"


def test_cjk_and_long_lines() -> None:
    text = "第一行\n我们使用全文搜索引擎来查找文档。\n" + "x" * 2000
    snip = snippets("搜索").make(text, chunk_start_line=1, doc_lines=3)
    assert snip.line == 2
    assert len(snip.text) < 700


def regex_matches(s: Snippets, folded: str) -> Iterator[tuple[int, int]]:
    """The candidates as a regex of the probes found them: (line, column) of the first match on each line
    holding one, of each probe's first match on a long line."""
    probe_re = re.compile("|".join(map(re.escape, sorted(s._probes, key=len, reverse=True))))
    line, start, pos = 0, 0, 0
    end = folded.find("\n") % (len(folded) + 1)
    while (m := probe_re.search(folded, pos)) is not None:
        at = m.start()
        if at > end:
            line += 1 + folded.count("\n", end + 1, at)
            start = folded.rfind("\n", end, at) + 1
            end = folded.find("\n", at) % (len(folded) + 1)
        if end - start <= LONG_LINE_CHARS:
            yield line, at - start
        else:
            for column in sorted({folded.find(probe, at, end) for probe in s._probes} - {-1}):
                yield line, column - start
        pos = end


def every_candidate_in_turn(s: Snippets, lines: list[str]) -> tuple[int, int]:
    """`best_hit` as it was before it skipped candidates: each one tokenized, in order."""
    best, best_column, best_hits = -1, 0, 0.0
    folded = "\n".join(lines).casefold()
    candidates = list(itertools.islice(regex_matches(s, folded), MAX_CANDIDATES))
    assert s._matches(folded)[:MAX_CANDIDATES] == candidates
    for i, column in candidates:
        text = lines[i] if len(lines[i]) <= LONG_LINE_CHARS else _excerpt(lines[i], column)
        found = set(TOK.index_terms(text))
        hits = len(s._wanted & found) + BACKGROUND_WEIGHT * len(s._background & found)
        if hits > best_hits:
            best, best_column, best_hits = i, column, hits
    return best, best_column


WORDS = ["tar", "guitar", "enlisted", "profile",  # these hold a probe ("tar", "list", "file") but not its term
         "archive", "archives", "extract", "extracting", "file", "files", "list", "listing", "the",
         "création", "STRASSE", "straße", "搜索", "x" * 30]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join), min_size=1, max_size=12),
       st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), st.lists(st.sampled_from(WORDS), max_size=3),
       st.integers(0, 3))
def test_skipping_candidates_finds_what_trying_each_finds(lines: list[str], query: list[str], intent: list[str],
                                                          long_line: int) -> None:
    if long_line:  # a line past LONG_LINE_CHARS: looked at in windows around its probes
        lines = [*lines[:long_line], " ".join(lines) + " pad" * 700 + " tar archive", *lines[long_line:]]
    s = Snippets(TOK.query_terms(" ".join(query)), TOK.index_terms, TOK.query_terms(" ".join(intent)))
    assert s.best_hit(lines) == every_candidate_in_turn(s, lines)


def test_more_terms_than_probes_are_still_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snippets_module, "MAX_PROBES", 1)
    s = Snippets(TOK.query_terms("tar archive"), TOK.index_terms)  # "arch" is searched for, "tar" not
    lines = ["an archive", "tar archive"]
    assert s.best_hit(lines) == every_candidate_in_turn(s, lines) == (1, 4)


@pytest.mark.parametrize("long_line", [True, False])  # a text with a long line, and one of short lines only
def test_the_first_candidates_are_found_however_many_lines_hold_a_probe(long_line: bool) -> None:
    rng = random.Random(5)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5))) for _ in range(400)]
    lines[200] = "tar archive extract list file"  # the best line, past the first MAX_CANDIDATES holding a probe
    if long_line:
        lines[30] = " ".join(WORDS) + " pad" * 700 + " tar"  # one window per probe
    s = Snippets(TOK.query_terms("tar archive extract list"), TOK.index_terms, TOK.query_terms("file"))
    folded = "\n".join(lines).casefold()
    assert s._matches(folded)[:MAX_CANDIDATES] == list(itertools.islice(regex_matches(s, folded), MAX_CANDIDATES))
    assert s.best_hit(lines) == every_candidate_in_turn(s, lines)
    assert s.best_hit(lines)[0] < 200
