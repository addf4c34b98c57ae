"""Snippets: the best line wins, line numbers are the file's, the header says where it sits."""

from __future__ import annotations

from qmdd.search.snippets import Snippets
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
