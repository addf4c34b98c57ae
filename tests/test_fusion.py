from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.search.fusion import (
    MAX_SUBQUERIES,
    Fused,
    RankedList,
    SubQuery,
    blend_rerank,
    fuse,
    normalise_scores,
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


def by_key(fused: list[Fused[str]]) -> dict[str, Fused[str]]:
    return {item.key: item for item in fused}


def test_fuse_two_lists_hand_computed() -> None:
    fused = fuse([RankedList("lex:0", 1.0, ["a", "b", "c"]), RankedList("vec:0", 1.0, ["b", "d"])])
    assert [item.key for item in fused] == ["b", "a", "d", "c"]
    assert [item.rank for item in fused] == [1, 2, 3, 4]
    items = by_key(fused)
    assert items["b"].score == pytest.approx(1 / 62 + 1 / 61 + 0.05)  # rank 1 in vec: first-place bonus
    assert items["a"].score == pytest.approx(1 / 61 + 0.05)
    assert items["d"].score == pytest.approx(1 / 62 + 0.02)  # rank 2: top-3 bonus
    assert items["c"].score == pytest.approx(1 / 63 + 0.02)
    assert items["b"].contributions == pytest.approx({"lex:0": 1 / 62, "vec:0": 1 / 61})
    assert items["c"].contributions == pytest.approx({"lex:0": 1 / 63})
    assert [items[key].best_rank for key in "abcd"] == [1, 1, 3, 2]


def test_fuse_bonus_only_for_top_three() -> None:
    items = by_key(fuse([RankedList("lex:0", 1.0, ["a", "b", "c", "d", "e"])], k=10))
    assert items["a"].score == pytest.approx(1 / 11 + 0.05)
    assert items["b"].score == pytest.approx(1 / 12 + 0.02)
    assert items["c"].score == pytest.approx(1 / 13 + 0.02)
    assert items["d"].score == pytest.approx(1 / 14)
    assert items["e"].score == pytest.approx(1 / 15)


def test_fuse_custom_bonuses() -> None:
    items = by_key(fuse([RankedList("lex:0", 1.0, ["a", "b"])], k=0, bonus_first=0.5, bonus_top3=0.25))
    assert items["a"].score == pytest.approx(1.5)
    assert items["b"].score == pytest.approx(0.75)


def test_fuse_weights() -> None:
    fused = fuse([RankedList("lex:0", 2.0, ["x", "y"]), RankedList("vec:0", 1.0, ["y", "x"])])
    assert [item.key for item in fused] == ["x", "y"]
    assert fused[0].score == pytest.approx(2 / 61 + 1 / 62 + 0.05)
    assert fused[1].score == pytest.approx(2 / 62 + 1 / 61 + 0.05)
    assert fused[0].contributions == pytest.approx({"lex:0": 2 / 61, "vec:0": 1 / 62})


def test_fuse_zero_weight_list_is_switched_off() -> None:
    fused = fuse([RankedList("lex:0", 1.0, ["a", "b"]), RankedList("vec:0", 0.0, ["b", "z"])])
    assert [item.key for item in fused] == ["a", "b"]
    assert fused[1].score == pytest.approx(1 / 62 + 0.02)
    assert fused[1].best_rank == 2


def test_fuse_duplicates_inside_a_list_count_once() -> None:
    items = by_key(fuse([RankedList("lex:0", 1.0, ["a", "a", "b", "a"])]))
    assert items["a"].score == pytest.approx(1 / 61 + 0.05)
    assert items["b"].score == pytest.approx(1 / 62 + 0.02)  # the repeat does not push b down
    assert items["b"].best_rank == 2


def test_fuse_ties_break_on_first_appearance() -> None:
    fused = fuse([RankedList("vec:0", 1.0, ["a"]), RankedList("vec:1", 1.0, ["b"]), RankedList("lex:0", 1.0, ["c"])])
    assert [item.key for item in fused] == ["a", "b", "c"]
    assert fused[0].score == fused[1].score == fused[2].score


def test_fuse_ties_break_on_best_rank_before_appearance() -> None:
    # k=0, no bonus: y scores 3/3 = 1.0 at rank 3, x scores 1/1 = 1.0 at rank 1; y appears first.
    lists = [RankedList("lex:0", 3.0, ["p", "q", "y"]), RankedList("vec:0", 1.0, ["x"])]
    fused = fuse(lists, k=0, bonus_first=0.0, bonus_top3=0.0)
    assert [item.key for item in fused] == ["p", "q", "x", "y"]
    assert fused[2].score == fused[3].score == 1.0
    assert fuse(lists, k=0, bonus_first=0.0, bonus_top3=0.0) == fused


def test_fuse_empty_inputs() -> None:
    assert fuse([]) == []
    assert fuse([RankedList("lex:0", 1.0, []), RankedList("vec:0", 1.0, ())]) == []
    assert normalise_scores([]) == []


@pytest.mark.parametrize(("weight", "k"), [(-1.0, 60), (math.nan, 60), (math.inf, 60), (1.0, -1)])
def test_fuse_rejects_bad_parameters(weight: float, k: int) -> None:
    with pytest.raises(ValueError):
        fuse([RankedList("lex:0", weight, ["a"])], k=k)


def test_normalise_hand_computed() -> None:
    fused = fuse([RankedList("lex:0", 1.0, ["a", "b"]), RankedList("vec:0", 2.0, ["a", "c", "b"])])
    ceiling = 1 / 61 + 2 / 61 + 0.05
    assert normalise_scores(fused) == pytest.approx([
        1.0,
        (1 / 62 + 2 / 63 + 0.02) / ceiling,
        (2 / 62 + 0.02) / ceiling,
    ])


keys = st.lists(st.integers(min_value=0, max_value=30), max_size=20)
ranked_lists = st.lists(
    st.tuples(st.floats(min_value=0.01, max_value=5.0), keys), min_size=1, max_size=6,
)


@given(ranked_lists, st.integers(min_value=0, max_value=200))
def test_winner_of_every_list_comes_first_with_normalised_score_one(
        raw: list[tuple[float, list[int]]], k: int) -> None:
    lists = [RankedList(f"l:{i}", weight, ["winner", *keys]) for i, (weight, keys) in enumerate(raw)]
    fused = fuse(lists, k=k)
    assert fused[0].key == "winner"
    assert fused[0].best_rank == 1
    assert len(fused) == 1 or fused[0].score > fused[1].score  # strictly: no tie-break needed
    normalised = normalise_scores(fused)
    assert normalised[0] == 1.0
    assert all(0.0 <= score <= 1.0 for score in normalised)


@given(ranked_lists, st.integers(min_value=0, max_value=200))
def test_fused_order_is_consistent(raw: list[tuple[float, list[int]]], k: int) -> None:
    fused = fuse([RankedList(f"l:{i}", weight, keys) for i, (weight, keys) in enumerate(raw)], k=k)
    assert [item.rank for item in fused] == list(range(1, len(fused) + 1))
    assert len({item.key for item in fused}) == len(fused) == len({key for _, keys in raw for key in keys})
    assert all(earlier.score >= later.score for earlier, later in itertools.pairwise(fused))
    assert all(0.0 <= score <= 1.0 for score in normalise_scores(fused))


# --- blend_rerank --------------------------------------------------------------------------------

TWELVE = fuse([RankedList("lex:0", 1.0, list("abcdefghijkl"))])


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


def test_scores_weight_each_entry_by_its_share_of_the_list_best() -> None:
    k = 60
    lex = RankedList("lex:0", 1.0, ["a", "b"], [2.0, 0.5])
    vec = RankedList("vec:1", 1.0, ["b", "a"], [0.8, 0.8])
    fused = {f.key: f for f in fuse([lex, vec], k=k, bonus_first=0.0, bonus_top3=0.0)}
    assert fused["a"].contributions["lex:0"] == pytest.approx(1.0 / (k + 1))
    assert fused["b"].contributions["lex:0"] == pytest.approx(0.25 / (k + 2))  # far behind the winner
    assert fused["a"].contributions["vec:1"] == pytest.approx(1.0 / (k + 2))  # a tie keeps full weight
    assert [f.key for f in fuse([lex, vec], k=k, bonus_first=0.0, bonus_top3=0.0)] == ["a", "b"]
    # Without scores the same ranks tie, and the earlier key wins.
    plain = fuse([lex._replace(scores=None), vec._replace(scores=None)], k=k, bonus_first=0.0, bonus_top3=0.0)
    assert plain[0].score == pytest.approx(plain[1].score)


def test_scored_lists_still_normalise_to_one_for_a_unanimous_winner() -> None:
    lists = [RankedList("lex:0", 1.0, ["x", "y"], [7.0, 1.0]), RankedList("vec:1", 1.0, ["x", "z"], [0.9, 0.1])]
    fused = fuse(lists)
    assert fused[0].key == "x" and normalise_scores(fused)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fuse([RankedList("lex:0", 1.0, ["x", "y"], [1.0])])


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
