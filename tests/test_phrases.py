"""Phrase evidence: the page holding the query's sentence, in order, outranks pages that only use its words."""

from __future__ import annotations

import random
import struct
from array import array
from collections.abc import Collection
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmdd.search.phrases import (
    END,
    PHRASE_WEIGHT,
    TEXT_LIMIT,
    PhraseMatcher,
    common_subsequence,
    sentence_evidence,
    stored_terms,
    stored_version,
    term_id,
    text_terms,
    with_phrase,
)
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from tests.conftest import Env

TOKENIZER = Tokenizer()


def reference_lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_common_subsequence_matches_the_textbook_table() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 9))]  # repeated terms included
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 30))]
        assert common_subsequence(a, b) == reference_lcs(a, b), (a, b)


def test_evidence_rewards_order_coverage_and_a_tight_sentence() -> None:
    query = ["creat", "an", "archiv", "from", "file"]
    assert sentence_evidence(query, query) == 1.0
    shuffled = sentence_evidence(query, ["file", "from", "archiv", "an", "creat"])
    padded = sentence_evidence(query, [*query, "and", "then", "some", "more", "word"])
    partial = sentence_evidence(query, ["creat", "an", "archiv"])
    assert shuffled < partial < 1.0 and padded == pytest.approx(0.25)  # half the sentence is the query
    assert sentence_evidence([], query) == sentence_evidence(query, []) == 0.0


def test_matcher_takes_the_best_sentence_of_a_text() -> None:
    matcher = PhraseMatcher("Write the contents of the clipboard to a file", TOKENIZER)
    text = ("# pbpaste\n\n> Send the clipboard to standard output. Files are untouched.\n\n"
            "- Write the contents of the clipboard to a file:\n\n`pbpaste > file`\n")
    assert matcher.evidence(text) == 1.0
    assert matcher.evidence("Clipboard contents, a file, the write. To of the.") < 0.2
    # Sentences end at full stops too, so one line of prose holds several sentences.
    prose = PhraseMatcher("the cat sat on the mat", TOKENIZER)
    assert prose.evidence("It rained all day long. The cat sat on the mat. Nobody came.") == 1.0
    # Chinese sentences end at their own full stop, with no space after it.
    zh = PhraseMatcher("两数之和", TOKENIZER)
    assert zh.evidence("给定一个整数数组。求两数之和。") > zh.evidence("给定一个整数数组\uff0c求和\uff0c两个数。")
    assert PhraseMatcher("", TOKENIZER).evidence(text) == 0.0


def test_only_the_start_of_a_huge_chunk_is_read() -> None:
    matcher = PhraseMatcher("needle in the hay", TOKENIZER)
    assert matcher.evidence("hay " * (TEXT_LIMIT // 4) + ". needle in the hay") < 0.001
    assert matcher.evidence("needle in the hay. " + "hay " * 100_000) == 1.0


def test_stored_terms_match_as_the_text_does() -> None:
    texts = ["- [c]reate an archive from files:\n\n`tar cf target.tar file1 file2`\n",
             "It rained all day long. The cat sat on the mat. Nobody came.", "给定一个整数数组。求两数之和。", "",
             "hay " * TEXT_LIMIT + ". needle in the hay"]
    for query in ("create a tar archive", "the cat sat on the mat", "两数之和", "needle in the hay"):
        matcher = PhraseMatcher(query, TOKENIZER)
        for text in texts:
            stored = stored_terms(TOKENIZER, text)
            assert len(stored) == 4 * len(text_terms(TOKENIZER, text)) <= 4 * TEXT_LIMIT
            assert array("I", stored).tolist() == text_terms(TOKENIZER, text)  # (on a little-endian machine)
            for named in ((), {"tar"}):
                assert matcher.evidence_in(stored, named) == matcher.evidence(text, named) == \
                    sentence_by_sentence(matcher, text_terms(TOKENIZER, text), named)
    # Sentence ends and articles read alike however written; a term's id is never a sentence end.
    assert text_terms(TOKENIZER, "The cat. A cat!\nan cat") == [term_id("a"), term_id("cat"), END] * 2 + \
        [term_id("a"), term_id("cat")]
    assert END not in {term_id(t) for t in ("", "a", "tar", "两数")}
    # Terms made by another tokenizer are another version: the indexer then makes them again.
    assert stored_version(TOKENIZER) != stored_version(Tokenizer(TokenizerConfig(stem=False)))


def sentence_by_sentence(matcher: PhraseMatcher, terms: list[int], named: Collection[str]) -> float:
    """The evidence as the definition says it: each sentence split out, its named terms left out and
    counted as said, coverage^3 * precision^2 of the best."""
    ids = {term_id(t) for t in named}
    query = [t for t in matcher._query if t not in ids]
    said = len(matcher._query) - len(query)
    best = 0.0
    sentence: list[int] = []
    for term in [*terms, END]:
        if term != END:
            sentence.append(term)
            continue
        if sentence:
            kept = [t for t in sentence if t not in ids] if said else sentence
            common = said + common_subsequence(query, kept)
            if common:
                best = max(best, (common / len(matcher._query)) ** 3 * (common / (len(kept) + said)) ** 2)
        sentence = []
    return best


VOCABULARY = ["create", "tar", "archive", "a", "file", "from", "the", "list", "extract"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([*VOCABULARY, ".", "x"]), max_size=40),
       st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=6),
       st.sets(st.sampled_from(["tar", "archive", "list", "zebra"]), max_size=2))
def test_reading_stored_terms_in_place_finds_what_splitting_every_sentence_finds(
        words: list[str], query: list[str], named: set[str]) -> None:
    matcher = PhraseMatcher(" ".join(query), TOKENIZER)
    terms = text_terms(TOKENIZER, " ".join(words))
    stored = stored_terms(TOKENIZER, " ".join(words))
    assert matcher.evidence_in(stored, named) == pytest.approx(sentence_by_sentence(matcher, terms, named))
    # Four bytes that straddle two stored terms are no term and no sentence end: a query term's bytes
    # and four zero bytes, both planted two bytes off the terms' bounds.
    planted = b"\1\1" + struct.pack("<I", matcher._query[0]) + bytes(4) + b"\1\1"
    for blob in (planted + stored, stored + planted):
        assert matcher.evidence_in(blob, named) == pytest.approx(
            sentence_by_sentence(matcher, array("I", blob).tolist(), named))


def test_phrase_raises_a_score_within_zero_to_one() -> None:
    assert with_phrase(0.4, 0.0) == 0.4
    assert with_phrase(0.4, 1.0) == pytest.approx(1.0 - 0.6 * (1.0 - PHRASE_WEIGHT))
    assert with_phrase(1.0, 1.0) == 1.0
    assert all(0.0 <= with_phrase(s / 10, e / 10) <= 1.0 for s in range(11) for e in range(11))


def test_end_to_end_the_page_with_the_sentence_ranks_first(env: Env, tmp_path: Path) -> None:
    tree = tmp_path / "cmds"
    tree.mkdir()
    (tree / "pbpaste.md").write_text("# pbpaste\n\n> Send the clipboard to standard output.\n\n"
                                     "- Write the contents of the clipboard to a file:\n\n`pbpaste > file`\n\n"
                                     "- Show the clipboard contents with line numbers:\n\n`pbpaste | nl`\n")
    # Shorter, and dense in the query's rarer words: BM25 alone ranks it first.
    (tree / "clipfile.md").write_text("# clipfile\n\n> Clipboard file contents: clipboard contents, file contents.\n\n"
                                      "- Write clipboard file:\n\n`clipfile`\n")
    for i in range(12):
        (tree / f"other{i}.md").write_text(f"# other{i}\n\n> Prints the date.\n\n- Show the date:\n\n`other{i}`\n")
    env.json("collection", "add", str(tree), "--name", "c")

    query = "Write the contents of the clipboard to a file"
    hits = env.json("search", query, "-n", "3", "--explain")
    assert [h["file"] for h in hits[:2]] == ["qmd://c/pbpaste.md", "qmd://c/clipfile.md"]
    first, second = hits[0]["explain"], hits[1]["explain"]
    assert first["bm25"] < second["bm25"]  # the words alone would put clipfile first
    assert first["phrase_match"] == 1.0 and second["phrase_match"] < 0.5  # three of four words
    assert 0.0 < hits[0]["score"] <= 1.0

    # query does the same after fusing (keyword only here: nothing is embedded).
    fused = env.json("query", query, "-n", "2", "--explain", "--no-rerank")
    assert fused[0]["file"] == "qmd://c/pbpaste.md" and fused[0]["explain"]["phrase_match"] == 1.0


def test_a_pages_name_is_the_subject_of_its_lines_and_articles_are_one_word() -> None:
    matcher = PhraseMatcher("create a tar archive", TOKENIZER)
    on_tars_page = "- [c]reate an archive from files:"
    # The name counts as said, the articles match: 4 of 4 query words, in a line of 5 words plus the name.
    assert matcher.evidence(on_tars_page, {"tar"}) == pytest.approx((4 / 6) ** 2)
    assert matcher.evidence(on_tars_page) == pytest.approx((3 / 4) ** 3 * (3 / 5) ** 2)  # elsewhere it lacks "tar"
    # Another page whose line holds every word, among as many others, scores below the named page.
    assert matcher.evidence("Create a squashfs filesystem from a tar archive.") == pytest.approx(0.25)
    # The name's own word in a line is the subject again, not a word that dilutes it.
    assert PhraseMatcher("tar", TOKENIZER).evidence("# tar\n\n> Archiving utility.", {"tar"}) == 1.0


def test_a_paragraph_or_a_planted_huge_query_looks_for_no_phrase() -> None:
    assert PhraseMatcher("create a tar archive", TOKENIZER).has_order
    assert not PhraseMatcher("tar", TOKENIZER).has_order  # one word has no order
    assert not PhraseMatcher(" ".join(["word"] * 200), TOKENIZER).has_order  # a paragraph
    huge = PhraseMatcher("axolotl " + "zz " * (4 << 18), TOKENIZER)  # 4 MiB: only its start is read
    assert not huge.has_order and huge.evidence("axolotl zz zz zz") > 0.0
