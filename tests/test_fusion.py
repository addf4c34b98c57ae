from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.fusion import (
    MAX_SUBQUERIES,
    RankedList,
    SubQuery,
    blend_rerank,
    calibrate_cosine,
    fuse,
    parse_query,
    script_coverage,
)

# --- parse_query -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  gnome screenshot  ", [SubQuery("lex", "gnome screenshot"), SubQuery("vec", "gnome screenshot")]),
        ("first line\n\n  second line ", [SubQuery("lex", "first line second line"),
                                         SubQuery("vec", "first line second line")]),
        ("error: file not found", [SubQuery("lex", "error: file not found"),
                                   SubQuery("vec", "error: file not found")]),
        ("lexical: not a prefix", [SubQuery("lex", "lexical: not a prefix"),
                                   SubQuery("vec", "lexical: not a prefix")]),
        ("lex: gpg sign\nvec: how do I sign commits", [SubQuery("lex", "gpg sign"),
                                                      SubQuery("vec", "how do I sign commits")]),
        ("hyde: Use git commit -S to sign.", [SubQuery("vec", "Use git commit -S to sign.")]),
        ("LEX : foo\n  Vec:bar  \nHyDe :  baz", [SubQuery("lex", "foo"), SubQuery("vec", "bar"),
                                                 SubQuery("vec", "baz")]),
        ("\n  lex: a\n\n vec: b: with colon\n", [SubQuery("lex", "a"), SubQuery("vec", "b: with colon")]),
        ("\n".join(f"lex: t{i}" for i in range(MAX_SUBQUERIES)),
         [SubQuery("lex", f"t{i}") for i in range(MAX_SUBQUERIES)]),
    ],
)
def test_parse_query(text: str, expected: list[SubQuery]) -> None:
    assert parse_query(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("  \n\t\n ", "empty"),
        ("lex: a\nplain words", "line 2"),
        ("plain words\n\nvec: a", "line 1"),
        ("lex: a\nfoo: bar", "line 2: unknown prefix 'foo'"),
        ("lex: a\n\n\nvec:   ", "line 4: nothing follows vec:"),
        ("hyde:", "line 1: nothing follows hyde:"),
        ("\n".join(f"vec: t{i}" for i in range(MAX_SUBQUERIES + 1)), "at most 10"),
    ],
)
def test_parse_query_errors(text: str, fragment: str) -> None:
    with pytest.raises(QmddError) as caught:
        parse_query(text)
    assert caught.value.code is ErrorCode.QUERY_PARSE_ERROR
    assert fragment in caught.value.message


query_lines = st.one_of(
    st.text(max_size=30),
    st.builds(str.__add__, st.sampled_from(["lex:", " VEC : ", "hyde:", "foo: ", "http://"]), st.text(max_size=20)),
)


@given(st.lists(query_lines, max_size=14).map("\n".join))
def test_parse_query_gives_valid_subqueries_or_a_parse_error(text: str) -> None:
    try:
        subqueries = parse_query(text)
    except QmddError as error:
        assert error.code is ErrorCode.QUERY_PARSE_ERROR
        return
    assert 1 <= len(subqueries) <= MAX_SUBQUERIES
    assert all(sub.kind in ("lex", "vec") and sub.text and sub.text == sub.text.strip() for sub in subqueries)


# --- fuse ----------------------------------------------------------------------------------------


def test_fuse_hand_computed() -> None:
    fused = fuse([RankedList("lex:0", 0.7, ["a", "b", "c"], [0.9, 0.5, 0.1]),
                  RankedList("vec:0", 0.3, ["b", "d"], [0.8, 0.2])])
    by = {f.key: f for f in fused}
    assert by["a"].score == pytest.approx(0.7 * 0.9)
    assert by["b"].score == pytest.approx(0.7 * 0.5 + 0.3 * 0.8)
    assert by["b"].contributions == pytest.approx({"lex:0": 0.35, "vec:0": 0.24})
    assert by["d"].score == pytest.approx(0.3 * 0.2)
    assert [f.key for f in fused] == ["a", "b", "c", "d"]
    assert [(f.rank, f.best_rank) for f in fused] == [(1, 1), (2, 1), (3, 3), (4, 2)]


def test_fuse_weights_are_shares_and_zero_switches_a_list_off() -> None:
    doubled = fuse([RankedList("lex:0", 2.0, ["x"], [0.5]), RankedList("vec:0", 2.0, ["x"], [0.5])])
    assert doubled[0].score == pytest.approx(0.5)  # a weighted mean: scores stay 0..1
    off = fuse([RankedList("lex:0", 1.0, ["a"], [0.4]), RankedList("vec:0", 0.0, ["z"], [1.0])])
    assert [(f.key, f.score) for f in off] == [("a", pytest.approx(0.4))]


def test_fuse_counts_a_key_once_per_list_and_clamps_scores() -> None:
    fused = fuse([RankedList("lex:0", 1.0, ["a", "a", "b"], [0.5, 0.9, 2.0]),
                  RankedList("vec:0", 1.0, ["c"], [math.nan])])
    by = {f.key: f for f in fused}
    assert by["a"].score == pytest.approx(0.25) and by["b"].best_rank == 2
    assert by["b"].score == pytest.approx(0.5) and by["c"].score == 0.0


def test_fuse_ties_break_on_best_rank_then_first_appearance() -> None:
    fused = fuse([RankedList("vec:0", 1.0, ["a", "b"], [0.5, 0.5]), RankedList("lex:0", 1.0, ["c"], [0.5])])
    assert [f.key for f in fused] == ["a", "c", "b"]


def test_fuse_empty_inputs() -> None:
    assert fuse([]) == []
    assert fuse([RankedList("lex:0", 1.0, [], []), RankedList("vec:0", 1.0, (), ())]) == []


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_fuse_rejects_bad_weights(weight: float) -> None:
    with pytest.raises(ValueError):
        fuse([RankedList("lex:0", weight, ["a"], [0.5])])
    with pytest.raises(ValueError):
        fuse([RankedList("lex:0", 1.0, ["x", "y"], [1.0])])


def test_calibrate_cosine() -> None:
    assert calibrate_cosine(0.2, 0.3) == 0.0
    assert calibrate_cosine(0.65, 0.3) == pytest.approx(0.5)
    assert calibrate_cosine(1.0, 0.3) == 1.0


scored_lists = st.lists(st.tuples(st.floats(min_value=0.1, max_value=5.0),
                                  st.lists(st.tuples(st.integers(0, 20), st.floats(0.0, 1.0)), max_size=15)),
                        min_size=1, max_size=4)


@given(scored_lists)
def test_fused_order_is_consistent(raw: list[tuple[float, list[tuple[int, float]]]]) -> None:
    fused = fuse([RankedList(f"l:{i}", w, [k for k, _ in pairs], [s for _, s in pairs])
                  for i, (w, pairs) in enumerate(raw)])
    assert [item.rank for item in fused] == list(range(1, len(fused) + 1))
    assert len({item.key for item in fused}) == len(fused) == len({k for _, pairs in raw for k, _ in pairs})
    assert all(earlier.score >= later.score for earlier, later in itertools.pairwise(fused))
    assert all(0.0 <= item.score <= 1.0 + 1e-12 for item in fused)


# --- blend_rerank --------------------------------------------------------------------------------

TWELVE = fuse([RankedList("lex:0", 1.0, list("abcdefghijkl"), [1.0 - i / 20 for i in range(12)])])


def test_blend_exact_values() -> None:
    blended = {item.key: item for item in blend_rerank(TWELVE, {"a": 0.5, "d": 0.2, "l": 1.0})}
    assert blended["a"].score == pytest.approx(0.75 * 1 + 0.25 * 0.5)
    assert blended["d"].score == pytest.approx(0.60 / 4 + 0.40 * 0.2)
    assert blended["l"].score == pytest.approx(0.40 / 12 + 0.60 * 1.0)
    assert blended["b"].score == pytest.approx(0.75 / 2)
    assert [blended[key].rrf_weight for key in "acdjkl"] == [0.75, 0.75, 0.60, 0.60, 0.40, 0.40]
    assert (blended["l"].fused_rank, blended["l"].rerank_score) == (12, 1.0)
    assert blended["b"].rerank_score is None


def test_blend_strong_rerank_lifts_rank_twelve_above_rank_four() -> None:
    scores = dict.fromkeys("abcdefghijkl", 0.5) | {"l": 1.0}
    order = [item.key for item in blend_rerank(TWELVE, scores)]
    assert order.index("l") < order.index("d")


@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_blend_never_drops_rank_one_below_rank_two_on_equal_rerank(shared: float, others: float) -> None:
    scores = dict.fromkeys("cdefghijkl", others) | {"a": shared, "b": shared}
    order = [item.key for item in blend_rerank(TWELVE, scores)]
    assert order.index("a") < order.index("b")


def test_blend_items_without_rerank_scores() -> None:
    blended = blend_rerank(TWELVE, {"e": 0.3})
    assert [item.key for item in blended][:6] == ["a", "b", "c", "e", "d", "f"]
    assert blended[3].score == pytest.approx(0.60 / 5 + 0.40 * 0.3)
    assert blended[4].score == pytest.approx(0.60 / 4)  # unscored: its rank share only
    assert [item.key for item in blend_rerank(TWELVE, {})] == list("abcdefghijkl")


def test_blend_ties_break_on_fused_rank() -> None:
    # Unscored rank 3: 0.75/3 = 0.25; rank 4 reranked 0.25: 0.6/4 + 0.4*0.25 = 0.25, exactly in floats.
    blended = blend_rerank(list(reversed(TWELVE[2:4])), {"d": 0.25})
    assert blended[0].score == blended[1].score
    assert [item.fused_rank for item in blended] == [3, 4]


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_blend_rejects_scores_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError):
        blend_rerank(TWELVE, {"a": bad})


@pytest.mark.parametrize(("text", "latin_only", "expected"), [
    ("how do I compress a folder", True, 1.0),
    ("什麼是數據庫索引", True, 0.0),
    ("SQLite 的 WAL 模式", True, 9 / 12),
    ("café résumé", True, 1.0),
    ("什麼是數據庫索引", False, 1.0),
    ("12345 !!!", True, 1.0),
])
def test_script_coverage(text: str, latin_only: bool, expected: float) -> None:
    assert script_coverage(text, latin_only) == pytest.approx(expected)


def test_query_documents_take_qmds_intent_and_expand_lines() -> None:
    from qmdd.search.fusion import split_intent

    assert split_intent("intent: web pages\nlex: performance\nvec: load time") == (
        "lex: performance\nvec: load time", "web pages")
    assert split_intent("\n  Intent:  sports  \nlex: score") == ("lex: score", "sports")
    assert split_intent("expand: how does auth work") == ("how does auth work", None)
    assert split_intent("error: file not found") == ("error: file not found", None)  # plain stays plain
    # An intent line later than the first is no intent: the typed parser refuses it.
    text, intent = split_intent("lex: a\nintent: b")
    assert intent is None and text == "lex: a\nintent: b"
