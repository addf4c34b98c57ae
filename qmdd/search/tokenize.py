"""BM25 tokenizer: Unicode-aware words, code-ish compounds, CJK bigrams, optional Snowball stemming.

Documents and queries go through the same span analysis, so every choice made here is symmetric;
`Tokenizer.fingerprint` changes whenever document-side output would change, which tells the BM25
store to rebuild rather than silently mix old and new terms.

Pipeline:
1. NFKC-normalize (skipped for ASCII text, which NFKC leaves unchanged).
2. One compiled regex finds candidate spans on the *case-preserved* text: CJK runs, or words joined
   by single connectors. Case is kept until span analysis because camelCase splitting needs it.
3. Each distinct span is analysed once and memoized (span -> terms); text is Zipfian, so the hot
   path is a C-level `map` over the span list with almost no Python work per token.

Span analysis:
- Words are casefolded and, if Latin-script, stemmed. A word-internal apostrophe (``'`` or U+2019)
  joins and is then removed, possessive ``'s`` first: ``user's`` -> ``user``, ``don't`` -> ``dont``.
- Connectors between alphanumerics are ``- _ . / : + #`` and ``::``. The whole compound is kept
  (casefolded, not stemmed); ``/``- and ``:``-separated segments that are themselves compounds are
  kept too (``src/foo.py`` -> ``foo.py``); then every atom is analysed as a word. A sentence-ending
  period is never a connector, because a connector needs an alphanumeric on both sides.
- ``++`` and ``#`` directly after a word are a suffix kept in the whole term: ``c++`` -> ``c++``,
  ``c``; ``c#`` -> ``c#``, ``c``. A leading ``#`` or ``.`` is not part of a token (``#tag`` -> ``tag``).
- URLs: ``://`` is not a connector, so ``https://x.org/a`` gives ``https`` and the compound
  ``x.org/a`` with ``x.org``, ``x``, ``org``, ``a``.
- camelCase, PascalCase and letter/digit boundaries split a word into parts emitted after the word:
  ``HTTPServer`` -> ``httpserver``, ``http``, ``server``. Such connector-free words are stemmed like
  any word because users type them lowercased (``powershell``) and must get the same stem.
- Terms longer than 64 characters are dropped. A compound over 64 characters whose atoms look like
  random data (base64, generated ids) is dropped with all its parts; otherwise (long URLs, paths)
  only the whole is dropped.
- A bracketed run of one to three letters glued to the word after it is part of that word: tldr's
  mnemonics ``[c]reate``, ``e[x]tract``, ``--[v]erbose`` are ``create``, ``extract``, ``verbose``
  (else every such page would lack its own verbs). ``arr[i]``, ``[x] done`` and links are untouched.
- CJK runs (Han, kana, Hangul, with their extension and compatibility blocks) are not words:
  documents index every character and every overlapping bigram; queries use the bigrams of a run
  of two or more characters, or the single character of a one-character run.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from operator import add, itemgetter

import Stemmer

# Bump whenever document-side tokenization changes in any way; it is part of the fingerprint.
TOKENIZER_VERSION = 2
MAX_TERM_LEN = 64
# Bounded memos (each at most ~20 MB), cleared wholesale when full: cheaper than LRU bookkeeping on
# the hot path, and a vocabulary that outgrows them only costs re-analysis.
_CACHE_MAX = 100_000
# Long spans (URLs, CJK sentences) rarely repeat; caching them would only churn memory.
_CACHE_SPAN_MAX = 128

# Stopwords are dropped from queries only. NLTK's classic English list without contraction fragments
# (apostrophes are removed, so "don't" is "dont"), minus directional words that carry meaning in
# commands ("docker compose down", "turn off wifi"): up, down, off, out, over, under.
STOPWORDS: frozenset[str] = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by",
    "can", "could", "did", "didnt", "do", "does", "doesnt", "doing", "dont", "during", "each", "few",
    "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
    "him", "himself", "his", "how", "i", "if", "in", "into", "is", "isnt", "it", "its", "itself",
    "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "of", "on", "once", "only",
    "or", "other", "our", "ours", "ourselves", "own", "same", "she", "should", "so", "some", "such",
    "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they",
    "this", "those", "through", "to", "too", "until", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
    "yourself", "yourselves",
))  # fmt: skip

_CJK_BLOCKS = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals supplement, Kangxi radicals
    (0x3005, 0x3007),  # iteration mark, closing mark, ideographic zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3038, 0x303C),
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # Extension A
    (0x4E00, 0x9FFF),  # Unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # Compatibility ideographs
    (0xFF66, 0xFFDC),  # Halfwidth katakana and Hangul (NFKC folds them; kept for safety)
    (0x1AFF0, 0x1B16F),  # Kana supplement and extensions
    (0x20000, 0x323AF),  # Extensions B..H, compatibility supplement
)
_ASTRAL_END = 0x323B0  # nothing above this is a letter, digit or (except plane 14) a mark


def _ranges_class(codepoints: Iterable[int]) -> str:
    """Regex character-class body for sorted code points, as compact ranges."""
    out: list[str] = []
    start = prev = -2
    for cp in chain(codepoints, (-2,)):
        if cp != prev + 1:
            if start >= 0:
                out.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
            start = cp
        prev = cp
    return "".join(out)


def _is_word_char(ch: str) -> bool:
    # Python's \w misses combining marks (Devanagari vowel signs, Hebrew points...), which would cut
    # words apart, so marks are added explicitly.
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"


_CJK_CODEPOINTS = [
    cp for lo, hi in _CJK_BLOCKS for cp in range(lo, hi + 1)
    # Letters, numbers and marks only: CJK punctuation (、。・「」) must separate runs.
    if unicodedata.category(chr(cp))[0] in "LNM"
]  # fmt: skip
_CJK_SET = frozenset(_CJK_CODEPOINTS)
_CJK_CLASS = f"[{_ranges_class(_CJK_CODEPOINTS)}]"


def _span_pattern(word: str, joiners: str) -> str:
    return rf"{word}++(?:(?:[-_./:+#{joiners}]|::){word}++)*+(?:\+\+|#)?+"


# The scanning regex must be fast: sre tests a big class in O(1) only for BMP code points and walks
# any astral ranges linearly for every character, so the scanner's word class is exact on the BMP
# and accepts every astral code point. Spans with astral characters are re-scanned by the exact,
# slower regex below (rare: emoji, historic scripts, CJK extension B+).
_BMP_WORD = [cp for cp in range(0x10000) if cp not in _CJK_SET and cp != 0x5F and _is_word_char(chr(cp))]
_FAST_WORD_CLASS = f"[{_ranges_class(_BMP_WORD)}\\U00010000-\\U0010ffff]"
_BMP_CJK_CLASS = f"[{_ranges_class(cp for cp in _CJK_CODEPOINTS if cp < 0x10000)}]"
_SCAN_RE = re.compile(_BMP_CJK_CLASS + "+|" + _span_pattern(_FAST_WORD_CLASS, "'\u2019"))
# On ASCII text this finds exactly the spans _SCAN_RE finds (tested), several times faster.
_ASCII_SCAN_RE = re.compile(_span_pattern("[A-Za-z0-9]", "'"))
# Phrase matching reads a text as casefolded words (each CJK character a word of its own) and the
# marks that end a sentence (a newline, a stop before a space, a CJK full stop).
# A run of ends (": \n\n", a blank line) is one mark: fewer, longer sentences to visit.
_ENDS = r"[.!?;:]*\n[\s.!?;:]*|[.!?;:](?=\s)"
_PHRASE_TOKEN_RE = re.compile(_ENDS + r"|[\u3002\uff01\uff1f\uff1b]+|" + _CJK_CLASS + r"|\w+")
_ASCII_PHRASE_TOKEN_RE = re.compile(_ENDS + r"|\w+")
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")
_CJK_RE = re.compile(_CJK_CLASS)
_BMP_CJK_RE = re.compile(_BMP_CJK_CLASS)
_CONNECTOR_RE = re.compile(r"::|[-_./:+#]")
_SEGMENT_RE = re.compile(r"::|[/:]")
_ASCII_CAMEL_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_NON_LATIN_RE = re.compile(r"[^\x00-\u024f\u1e00-\u1eff]")
_first = itemgetter(0)


@functools.cache
def _exact_scan_re() -> re.Pattern[str]:
    astral = (
        cp
        for cp in chain(range(0x10000, _ASTRAL_END), range(0xE0100, 0xE01F0))
        if cp not in _CJK_SET and _is_word_char(chr(cp))
    )
    word = f"[{_ranges_class(chain(_BMP_WORD, astral))}]"
    return re.compile(_CJK_CLASS + "+|" + _span_pattern(word, "'\u2019"))


# Only a word character after the bracket joins: `arr[i]` and `[x] done` stay apart. Code such as
# `a[i]j` is joined too, a rare loss beside every tldr page's verbs.
_MNEMONIC_RE = re.compile(r"\[(\w{1,3})\](?=\w)")


def _spans(text: str) -> list[str]:
    if "[" in text:
        text = _MNEMONIC_RE.sub(r"\1", text)
    if text.isascii():
        return _ASCII_SCAN_RE.findall(text)
    return _SCAN_RE.findall(unicodedata.normalize("NFKC", text))


def _fold(text: str) -> str:
    if text.isascii():
        return text.lower()
    # Casefolding can produce sequences NFKC would rewrite (NFKC_Casefold closure), so re-normalize.
    return unicodedata.normalize("NFKC", text.casefold())


def _strip_apostrophes(word: str) -> str:
    if "'" not in word and "\u2019" not in word:
        return word
    word = word.replace("\u2019", "'")
    if word[-2:] in ("'s", "'S"):
        word = word[:-2]
    return word.replace("'", "")


def _kind(ch: str) -> int:
    if ch.isnumeric():
        return 0
    return 1 if ch.isupper() else 2


def _case_parts(word: str) -> list[str]:
    """camelCase and letter/digit parts; the non-ASCII branch mirrors `_ASCII_CAMEL_RE`."""
    if word.isascii():
        return _ASCII_CAMEL_RE.findall(word)
    kinds = [_kind(ch) for ch in word]
    parts: list[str] = []
    start = 0
    for i in range(1, len(word)):
        a, b = kinds[i - 1], kinds[i]
        if (
            (a != b and (a == 0 or b == 0))
            or (a == 2 and b == 1)
            or (a == 1 and b == 1 and i + 1 < len(word) and kinds[i + 1] == 2)
        ):
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return parts


def _looks_random(atoms: list[str]) -> bool:
    # Words and numbers are lower, UPPER, Title or digits; base64 and generated ids mostly are not.
    clean = sum(1 for a in atoms if a.islower() or a.isupper() or a.istitle() or a.isdigit())
    return clean * 2 < len(atoms)


def _cjk_pairs(run: str, *, query: bool) -> list[tuple[str, bool]]:
    bigrams = [(run[i : i + 2], False) for i in range(len(run) - 1)]
    if query:
        # Bigrams carry the precision; the unigrams add recall for words split differently.
        # Measured on drcd-retrieval: nDCG@10 0.953 with bigrams alone, 0.960 with both.
        return bigrams + [(ch, False) for ch in run] if bigrams else [(run, False)]
    return [(ch, False) for ch in run] + bigrams


@dataclass(frozen=True)
class TokenizerConfig:
    stem: bool = True  # Snowball English stemming (PyStemmer) of plain Latin-script words
    query_stopwords: bool = True  # drop English stopwords from queries only, unless that leaves nothing


# A term with its stopword flag. The flag is judged on the unstemmed surface form: "does" is a
# stopword but its stem "doe" (as in John Doe) is not, and "owned" must survive although "own" is one.
_Pair = tuple[str, bool]


class _SpanCache(dict[str, tuple[str, ...]]):
    """span -> document terms; `__missing__` keeps `map(cache.__getitem__, spans)` in C on hits."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self._tokenizer = tokenizer

    def __missing__(self, span: str) -> tuple[str, ...]:
        terms = self._tokenizer._index_span(span)
        if len(span) <= _CACHE_SPAN_MAX:
            if len(self) >= _CACHE_MAX:
                self.clear()
            self[span] = terms
        return terms


class Tokenizer:
    """Thread-compatible: the memos are plain dicts, so concurrent use only risks duplicate work."""

    def __init__(self, config: TokenizerConfig = TokenizerConfig()) -> None:
        self.config = config
        self._stemmer = Stemmer.Stemmer("english") if config.stem else None
        if self._stemmer is not None:
            self._stemmer.maxCacheSize = 0  # our own memo is faster; PyStemmer's would double up
        self._stems: dict[str, str] = {}
        self._words: dict[str, tuple[_Pair, ...]] = {}
        self._cache = _SpanCache(self)

    @property
    def fingerprint(self) -> str:
        # query_stopwords is deliberately absent: it does not change what gets indexed.
        return f"tok{TOKENIZER_VERSION}:{'snowball-en' if self.config.stem else 'nostem'}"

    def index_terms(self, text: str) -> list[str]:
        """Every term occurrence in document order, with repetition."""
        return list(chain.from_iterable(map(self._cache.__getitem__, _spans(text))))

    def phrase_tokens(self, text: str) -> list[str]:
        """The text's casefolded, unstemmed words (`stem` gives their terms) and, between its
        sentences, a token of the marks that end them (a full stop before a space, a newline, a CJK
        full stop; a run of them is one): phrase matching's input, in one C-level scan."""
        if "[" in text:
            text = _MNEMONIC_RE.sub(r"\1", text)
        if text.isascii():
            return _ASCII_PHRASE_TOKEN_RE.findall(text.lower())
        return _PHRASE_TOKEN_RE.findall(text.casefold())

    def stem(self, word: str) -> str:
        """The index form of one casefolded word."""
        return self._stem(word)

    def count_terms(self, text: str) -> dict[str, int]:
        """Term frequencies of `index_terms(text)`, as a fresh dict the caller may mutate."""
        counts: dict[str, int] = {}
        # The C helper behind Counter, minus Counter's per-call Python overhead (chunks are small).
        _count_elements(counts, chain.from_iterable(map(self._cache.__getitem__, _spans(text))))
        return counts

    def query_terms(self, text: str) -> list[str]:
        """Unique query terms in order of first appearance; stopwords removed unless all are."""
        return list(self.weighted_query_terms(text))

    def weighted_query_terms(self, text: str) -> dict[str, int]:
        """Query terms (as `query_terms`) with how often each occurs in the query: BM25's query-term
        frequency, which long, descriptive queries need (measured: +0.03-0.08 nDCG@10 on cacm/cisi/lisa)."""
        pairs = [pair for span in _spans(text) for pair in self._span_pairs(span, query=True)]
        if self.config.query_stopwords:
            pairs = [pair for pair in pairs if not pair[1]] or pairs
        counts: dict[str, int] = {}
        _count_elements(counts, map(_first, pairs))
        return counts

    def only_stopwords(self, text: str) -> bool:
        """Whether the query has words and every one is a stopword (`query_terms` then keeps them)."""
        pairs = [pair for span in _spans(text) for pair in self._span_pairs(span, query=True)]
        return bool(pairs) and all(stop for _, stop in pairs)

    def _index_span(self, span: str) -> tuple[str, ...]:
        if span.isascii() and span.isalpha() and len(span) <= MAX_TERM_LEN:
            # The most common spans (lower, Title or UPPER words) skip the general machinery.
            if span.islower():
                return (self._stem(span),)
            if span.istitle() or span.isupper():
                return (self._stem(span.lower()),)
        if _BMP_CJK_RE.match(span):
            # Only the scanner's CJK-run branch yields spans starting with a BMP CJK character.
            return (*span, *map(add, span, span[1:]))
        return tuple(map(_first, self._span_pairs(span, query=False)))

    def _span_pairs(self, span: str, *, query: bool, exact: bool = False) -> list[_Pair]:
        if not span.isascii():
            if not exact and _ASTRAL_RE.search(span):
                return [
                    pair
                    for sub in _exact_scan_re().findall(span)
                    for pair in self._span_pairs(sub, query=query, exact=True)
                ]
            if _CJK_RE.match(span):
                return _cjk_pairs(span, query=query)
        if span.isalnum():
            return list(self._word(span))
        core = span.rstrip("+#")
        if _CONNECTOR_RE.search(core):
            return self._compound(span, core)
        out = list(self._word(core))
        if core != span:
            suffixed = _fold(_strip_apostrophes(core)) + span[len(core) :]
            if len(suffixed) <= MAX_TERM_LEN:
                out.insert(0, (suffixed, False))
        return out

    def _compound(self, span: str, core: str) -> list[_Pair]:
        out: list[_Pair] = []
        atoms = _CONNECTOR_RE.split(core)
        whole = span.lower() if span.isascii() else _fold(span.replace("\u2019", "'"))
        if len(whole) <= MAX_TERM_LEN:
            out.append((whole, False))
        elif _looks_random(atoms):
            return out
        if "/" in core or ":" in core:
            for seg in _SEGMENT_RE.split(core):
                if len(seg) <= MAX_TERM_LEN and _CONNECTOR_RE.search(seg):
                    out.append((_fold(seg.replace("\u2019", "'")), False))
        words = self._words
        for atom in atoms:
            pairs = words.get(atom)
            out.extend(self._word(atom) if pairs is None else pairs)
        return out

    def _word(self, raw: str) -> tuple[_Pair, ...]:
        """The stemmed word, then its stemmed camelCase/digit parts if it has more than one."""
        pairs = self._words.get(raw)
        if pairs is not None:
            return pairs
        word = _strip_apostrophes(raw)
        folded = _fold(word)
        if not word or len(folded) > MAX_TERM_LEN:
            pairs = ()
        else:
            pairs = ((self._stem(folded), folded in STOPWORDS),)
            if not (word.isalpha() and (word.islower() or word.isupper() or word.istitle())):
                parts = _case_parts(word)
                if len(parts) > 1:
                    folded_parts = [_fold(p) for p in parts]
                    pairs += tuple((self._stem(p), p in STOPWORDS) for p in folded_parts)
        if len(self._words) >= _CACHE_MAX:
            self._words.clear()
        self._words[raw] = pairs
        return pairs

    def _stem(self, word: str) -> str:
        stem = self._stems.get(word)
        if stem is None:
            stem = word
            if self._stemmer is not None and not _NON_LATIN_RE.search(word):
                stem = self._stemmer.stemWord(word)
            if len(self._stems) >= _CACHE_MAX:
                self._stems.clear()
            self._stems[word] = stem
        return stem
