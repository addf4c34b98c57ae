from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmdd.search import tokenize as tk
from qmdd.search.tokenize import Tokenizer, TokenizerConfig

STEM = Tokenizer()
RAW = Tokenizer(TokenizerConfig(stem=False))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gnome-screenshot", ["gnome-screenshot", "gnome", "screenshot"]),
        ("foo.bar", ["foo.bar", "foo", "bar"]),
        ("snake_case_name", ["snake_case_name", "snake", "case", "name"]),
        ("getUserName", ["getusername", "get", "user", "name"]),
        ("HTTPServer", ["httpserver", "http", "server"]),
        ("x86_64", ["x86_64", "x86", "x", "86", "64"]),
        ("std::vector", ["std::vector", "std", "vector"]),
        ("src/foo.py", ["src/foo.py", "foo.py", "src", "foo", "py"]),
        ("v1.2.3", ["v1.2.3", "v1", "v", "1", "2", "3"]),
        ("c++ C# notepad++", ["c++", "c", "c#", "c", "notepad++", "notepad"]),
        ("node.js", ["node.js", "node", "js"]),
        ("https://x.org/a", ["https", "x.org/a", "x.org", "x", "org", "a"]),
        ("--gpg-sign", ["gpg-sign", "gpg", "sign"]),
        ("{{path/to/file}}", ["path/to/file", "path", "to", "file"]),
    ],
)
def test_code_ish_tokens_whole_and_parts(text: str, expected: list[str]) -> None:
    assert RAW.index_terms(text) == expected


def test_sentence_period_and_ellipsis_do_not_join() -> None:
    assert RAW.index_terms("The end. Next one...and more") == ["the", "end", "next", "one", "and", "more"]


def test_plain_words_and_parts_are_stemmed_but_compounds_are_not() -> None:
    assert STEM.index_terms("running files") == ["run", "file"]
    assert STEM.index_terms("running-files") == ["running-files", "run", "file"]
    # A camelCase word is stemmed whole, so lowercased queries find it.
    assert STEM.index_terms("PowerShell") == [*STEM.query_terms("powershell"), "power", "shell"]


def test_casefold_and_nfkc() -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "Python HTTP").replace("\uff00", " ")
    assert RAW.index_terms(fullwidth) == ["python", "http"]
    assert RAW.index_terms("Straße") == RAW.index_terms("STRASSE") == ["strasse"]
    assert RAW.index_terms("ﬁle") == ["file"]  # ligature folds
    assert RAW.index_terms("ｶﾀｶﾅ") == RAW.index_terms("カタカナ")


def test_apostrophes_join_words() -> None:
    assert RAW.index_terms("user's don't") == ["user", "dont"]
    assert RAW.index_terms("user\u2019s") == ["user"]
    assert RAW.index_terms("'quoted'") == ["quoted"]


def test_combining_marks_stay_inside_words() -> None:
    assert RAW.index_terms("हिन्दी भाषा") == ["हिन्दी", "भाषा"]


def test_non_latin_words_are_not_stemmed() -> None:
    assert STEM.index_terms("книги") == ["книги"]
    assert STEM.index_terms("cafés") == ["café"]


def test_emoji_neither_index_nor_join_words() -> None:
    assert RAW.index_terms("🚀Launch x😀y") == ["launch", "x", "y"]


def test_long_terms_are_dropped() -> None:
    assert RAW.index_terms("a" * 64) == ["a" * 64]
    assert RAW.index_terms("b" * 65) == []
    url = "https://docs.example.org/" + "/".join(["section"] * 8) + "/page.html"
    terms = RAW.index_terms(url)
    assert all(len(t) <= tk.MAX_TERM_LEN for t in terms)
    assert {"docs.example.org", "page.html", "section", "page", "html"} <= set(terms)


def test_base64_blob_with_connectors_is_dropped_entirely() -> None:
    blob = "iVBORw0KGgoAAAANSUhE+UgAAAAEAAAABCAYAAAA/fFcSJAAAADUlEQVR42mNk+YPhfDwAChwGA60e6kgAAAABJRU5E"
    assert RAW.index_terms(f"data {blob} end") == ["data", "end"]


def test_cjk_index_unigrams_and_bigrams() -> None:
    assert RAW.index_terms("中文") == ["中", "文", "中文"]
    assert RAW.index_terms("中") == ["中"]
    assert RAW.index_terms("日本語、です") == ["日", "本", "語", "日本", "本語", "で", "す", "です"]
    assert RAW.index_terms("한국어") == ["한", "국", "어", "한국", "국어"]


def test_cjk_splits_at_script_boundaries() -> None:
    assert RAW.index_terms("用Python写代码") == ["用", "python", "写", "代", "码", "写代", "代码"]
    assert RAW.query_terms("用Python写代码") == ["用", "python", "写代", "代码", "写", "代", "码"]


def test_cjk_query_uses_bigrams_and_unigrams() -> None:
    assert RAW.query_terms("搜索引擎") == ["搜索", "索引", "引擎", "搜", "索", "引", "擎"]
    assert RAW.query_terms("中") == ["中"]
    assert RAW.query_terms("𠀀𠀁") == ["𠀀𠀁", "𠀀", "𠀁"]  # extension B, found by the exact rescanner


def test_query_drops_stopwords_dedupes_and_keeps_order() -> None:
    assert STEM.query_terms("How to list the files in a directory") == ["list", "file", "directori"]
    assert RAW.query_terms("foo bar foo Foo") == ["foo", "bar"]
    assert RAW.weighted_query_terms("foo bar foo Foo the") == {"foo": 3, "bar": 1}


def test_query_keeps_stopwords_when_nothing_else_is_left() -> None:
    assert RAW.query_terms("to be or not to be") == ["to", "be", "or", "not"]
    assert RAW.query_terms("") == []


def test_query_stopwords_judged_on_surface_form() -> None:
    # "does" stems to "doe" and "owned" to "own"; only the surface stopword may be dropped.
    assert STEM.query_terms("does John Doe") == ["john", "doe"]
    assert STEM.query_terms("owned by") == ["own"]


def test_query_stopwords_can_be_disabled() -> None:
    tok = Tokenizer(TokenizerConfig(stem=False, query_stopwords=False))
    assert tok.query_terms("the cat") == ["the", "cat"]


def test_directional_words_are_not_stopwords() -> None:
    assert RAW.query_terms("docker compose down") == ["docker", "compose", "down"]


def test_count_terms_matches_index_terms_and_is_fresh() -> None:
    text = "git commit -m 'msg' && git-commit --amend; Git commits 中文中"
    tok = Tokenizer()
    counts = tok.count_terms(text)
    assert counts == Counter(tok.index_terms(text))
    counts["git"] = 999
    assert tok.count_terms(text)["git"] == 3


def test_cache_eviction_keeps_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "_CACHE_MAX", 3)
    tok = Tokenizer()
    text = "alpha beta-gamma Delta epsilon zeta eta theta iota kappa"
    first = tok.index_terms(text)
    assert tok.index_terms(text) == first == Tokenizer().index_terms(text)
    assert len(tok._cache) <= 3


def test_fingerprint() -> None:
    assert Tokenizer().fingerprint == Tokenizer().fingerprint
    assert str(tk.TOKENIZER_VERSION) in Tokenizer().fingerprint
    assert Tokenizer().fingerprint != RAW.fingerprint
    # Query-only settings do not change what is indexed.
    assert Tokenizer(TokenizerConfig(query_stopwords=False)).fingerprint == Tokenizer().fingerprint


_ascii_text = st.text(alphabet=st.sampled_from("abcXYZ019 -_./:+#'\n,;!()"), max_size=60)
_mixed_text = st.text(
    alphabet=st.sampled_from("abXY09 -_./:+#'\u2019\u00e9\u0301ßİ中文日本語、카タｶ\uff21\u0915\u093f😀𠀀"), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(_ascii_text)
def test_ascii_scanner_matches_unicode_scanner(text: str) -> None:
    assert tk._ASCII_SCAN_RE.findall(text) == tk._SCAN_RE.findall(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_ascii_text, _mixed_text))
def test_query_terms_are_index_terms(text: str) -> None:
    # Symmetry: whatever a query yields for a text, the same text indexed contains.
    for tok in (STEM, RAW):
        index = tok.index_terms(text)
        assert set(tok.query_terms(text)) <= set(index)
        assert all(0 < len(t) <= tk.MAX_TERM_LEN for t in index)
        assert tok.count_terms(text) == Counter(index)
