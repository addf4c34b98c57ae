"""Phrase evidence: a sentence of the page that says what the query says, in the query's order.

BM25 scores words one by one, so "create an archive and write it to a file" finds every page that uses
those words; the page that holds that very sentence is only one of them. Recalling a line of a page is
how people look for a page they have read (known-item search), and the line, found whole and in order,
is what tells the page apart. The top keyword hits (`search`) and the top fused documents (`query`)
are re-scored with it: a chunk's best sentence gives `evidence` = coverage^3 * precision^2, where
coverage is the share of the query's words the sentence holds in the query's order (their longest
common subsequence) and precision the share of the sentence those words make. A page's name is the
subject of each of its lines, so the query's words that name the page count as said by every sentence
of it ("create a tar archive" is said by tar's "create an archive"). Long natural-language queries (a
paragraph asking for papers) cover little of any one sentence, so they keep their order; one-word
queries have no order to find, and are left to BM25 and the name keys.

Measured (bench/known_items.py, bench/eval_quality.py; Hit@1, nDCG@10 for the eval collections;
search / query, before -> after): tldr task descriptions 0.695 / 0.705 -> 0.880 / 0.905, Spanish tldr
tasks 0.875 / 0.845 -> 0.975 / 0.980, names, LeetCode and cpp-docs titles unchanged (1.000 or 0.995);
the eight eval collections within -0.008 .. +0.008 (mean query nDCG@10 0.593 -> 0.592). Precision to
the first power instead: tldr tasks 0.010 and Spanish 0.005 lower; stopwords left out: tldr tasks
0.035 lower.

Cost: matching 20 chunks took ~0.45 ms a search, two thirds of it tokenizing them. The indexer now
stores each chunk's terms beside it (`stored_terms`: 32-bit ids, 4 bytes a word, ~65% of the text's
size), and a search reads those: ~0.15 ms. A chunk stored before, or by another tokenizer, is matched
from its text until the indexer has stored its terms again (`qmdd.store.chunkterms`).
"""

from __future__ import annotations

import bisect
import functools
import sys
import zlib
from array import array
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import TypeVar

from qmdd.search.tokenize import Tokenizer

PHRASE_WEIGHT = 0.5  # a sentence that is exactly the query closes half of the gap left to a score of 1
# Hits re-scored, best first. `query`'s fused documents: 10 lifts 0.015 fewer tldr tasks, 15 lifts 0.005
# fewer (Hit@1 0.900 vs 0.905), 30 none more. `search`'s keyword hits: 15 gives what 20 does on every
# dev set (tldr names, tasks, Spanish tasks, LeetCode, cpp-docs; the eight eval sets to six decimals),
# 12 lifts 0.010 fewer tldr tasks and 10 0.015; each hit fewer saves ~10 us of the search.
PHRASE_DEPTH = 20
SEARCH_PHRASE_DEPTH = 15
# A chunk holds at most 256 model tokens (1-2 KB of prose), but that is an estimate, and one very long
# line can be one chunk: only its start is read, so a planted multi-megabyte line costs what any chunk
# costs (~0.2 ms for 4 KB of query words, the worst case; a 450-byte tldr chunk takes ~30 us).
TEXT_LIMIT = 4_096
QUERY_CHARS = 1_024  # longer queries are paragraphs (an abstract asking for papers): no phrase is looked for
QUERY_WORDS = 64
# Bump whenever what `stored_terms` gives for a text changes: with the tokenizer's fingerprint it names
# the stored terms (`stored_version`), and the indexer recomputes them when it differs.
TERMS_FORMAT = 1
END = 0  # what every sentence end reads as (no term's id)
_TERMS_MAX = 100_000  # memoised words (~15 MB at most), forgotten all at once past it
_END_MARKS = frozenset(".!?;:\n\u3002\uff01\uff1f\uff1b")  # what `Tokenizer.phrase_tokens` ends sentences with
_ARTICLES = frozenset(("a", "an", "the"))
T = TypeVar("T", bound=Hashable)


def term_id(term: str) -> int:
    """A term as 32 bits, the CRC-32 of its UTF-8 (never END). Two of a million distinct terms share an
    id about once in 4,000 pairs; a chunk's word is mistaken for one of a query's few terms about once
    in 100 million, and then only raises a phrase score."""
    return zlib.crc32(term.encode()) or 1


ARTICLE = term_id("a")  # what every article reads as


def common_subsequence(query: Sequence[str], terms: Sequence[str]) -> int:
    """Length of the longest common subsequence of the query's terms and a sentence's terms."""
    positions = _positions(query)
    return _longest_increasing(positions.get(term, ()) for term in terms)


def _positions(query: Sequence[T]) -> dict[T, list[int]]:
    """Each query term's positions, latest first (as `_longest_increasing` reads them)."""
    positions: dict[T, list[int]] = {}
    for i in range(len(query) - 1, -1, -1):
        positions.setdefault(query[i], []).append(i)
    return positions


def _longest_increasing(matches: Iterable[Sequence[int]]) -> int:
    """Hunt-Szymanski: each sentence term, as the query positions it matches (latest first), extends
    the longest strictly increasing run of positions: O(matches * log(query length)), so a long
    sentence that shares few terms with the query costs little more than reading it."""
    tails: list[int] = []
    for positions in matches:
        for i in positions:
            k = bisect.bisect_left(tails, i)
            if k == len(tails):
                tails.append(i)
            else:
                tails[k] = i
    return len(tails)


def sentence_evidence(query: Sequence[str], terms: Sequence[str]) -> float:
    """coverage^3 * precision^2 of one sentence (0 when either is empty)."""
    if not query or not terms:
        return 0.0
    return _evidence(common_subsequence(query, terms), len(query), len(terms))


def _evidence(common: int, query_length: int, sentence_length: int) -> float:
    return (common / query_length) ** 3 * (common / sentence_length) ** 2


class _Terms(dict[str, int]):
    """phrase token -> its term's id, memoised across queries and chunks (`_terms_of`), so
    `map(terms.__getitem__, tokens)` stays in C for the words seen before, as most words are: a word's
    index term (the articles one term), a sentence end END. Stemming afresh per query cost more than
    the rest."""

    def __init__(self, stem: Callable[[str], str]) -> None:
        super().__init__()
        self._stem = stem

    def __missing__(self, token: str) -> int:
        if len(self) >= _TERMS_MAX:
            self.clear()
        if token[0] in _END_MARKS:  # no word starts so: a run of sentence ends
            found = END
        elif token in _ARTICLES:
            found = ARTICLE
        else:
            found = term_id(self._stem(token))
        self[token] = found
        return found


@functools.lru_cache(maxsize=8)  # a daemon has one tokenizer; tests make a few
def _terms_of(tokenizer: Tokenizer) -> _Terms:
    return _Terms(tokenizer.stem)


def text_terms(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of a text's phrase terms (its first TEXT_LIMIT characters), END between sentences."""
    return list(map(_terms_of(tokenizer).__getitem__, tokenizer.phrase_tokens(text[:TEXT_LIMIT])))


def stored_terms(tokenizer: Tokenizer, text: str) -> bytes:
    """`text_terms` as the indexer stores them beside a chunk (little-endian uint32): a search then
    reads them instead of tokenizing the chunk again (two thirds of matching it)."""
    ids = array("I", text_terms(tokenizer, text))
    if sys.byteorder == "big":
        ids.byteswap()
    return ids.tobytes()


def _stored(term: int) -> bytes:
    """A term's id as `stored_terms` stores it."""
    return term.to_bytes(4, "little")


_STORED_END = _stored(END)


def _offsets(stored: bytes, term: bytes) -> list[int]:
    """Where stored terms hold a term (as `_stored` gives it): term offsets, in order. bytes.find scans
    in C; four bytes that straddle two terms are not one."""
    found = []
    at = stored.find(term)
    while at >= 0:
        if at & 3:
            at = stored.find(term, at + 1)
        else:
            found.append(at >> 2)
            at = stored.find(term, at + 4)
    return found


def stored_version(tokenizer: Tokenizer) -> str:
    """What stored terms were made with: the indexer recomputes them when this changes."""
    return f"phrase{TERMS_FORMAT}/{tokenizer.fingerprint}"


class PhraseMatcher:
    """A query, matched against texts sentence by sentence. `tokenizer` is the index's: sentences and
    the query are split, casefolded and stemmed alike, stopwords kept (their order is the phrase), but
    the articles are one word: people recall a line's words, not whether it said "a" or "the"."""

    def __init__(self, query: str, tokenizer: Tokenizer) -> None:
        self.text = query
        self._tokenizer = tokenizer
        # Only a short query is read: a paragraph covers little of any one sentence, and a query of
        # megabytes (a planted one) must cost no more than a short one.
        self._query = [term for term in text_terms(tokenizer, query[:QUERY_CHARS]) if term != END]
        # One word has no order to find, and BM25 and the name keys already weigh where it occurs.
        self.has_order = 2 <= len(self._query) <= QUERY_WORDS and len(query) <= QUERY_CHARS
        self._stored = {term: _stored(term) for term in self._query}
        self._positions = _positions(self._query)

    def evidence(self, text: str, named: Collection[str] = ()) -> float:
        """The best sentence's evidence in `text` (0..1). `named`: the query's terms that the name of
        the text's document holds. A page's name is the subject of each of its lines ("create an
        archive" on tar's page says "create a tar archive"), so those terms count as said by every
        sentence, wherever the query has them, and are skipped in the sentence."""
        return self.evidence_in(stored_terms(self._tokenizer, text), named)

    def evidence_in(self, stored: bytes, named: Collection[str] = ()) -> float:
        """`evidence` of a text given as its `stored_terms`, read where they lie: the query's terms and
        the sentence ends are found by bytes.find, and only the sentences holding a query term are
        matched (unless a name says some of the query, when every sentence counts). Splitting out
        every sentence in Python took 40% longer (215 vs 152 us for a tldr search's 20 chunks)."""
        if named:
            ids = {term_id(term) for term in named}
            query = [term for term in self._query if term not in ids]
            positions = _positions(query)
        else:
            ids, query, positions = set(), self._query, self._positions
        said = len(self._query) - len(query)
        hits: list[tuple[int, list[int]]] = []  # (term offset, the query positions of its term), in order
        for term, places in positions.items():
            for offset in _offsets(stored, self._stored[term]):
                hits.append((offset, places))
        if not (hits or said):
            return 0.0
        hits.sort()  # by offset: a term offset holds one term, so no two are equal
        if said:
            ends = _offsets(stored, _STORED_END)
            ends.append(len(stored) >> 2)
            return self._with_named(stored, ids, said, hits, ends)
        size, terms = len(self._query), len(stored) >> 2
        best, h = 0.0, 0
        while h < len(hits):  # sentence by sentence among those holding a hit, its ends found from the hit
            first = hits[h][0]
            at = stored.find(_STORED_END, (first + 1) << 2)
            while at & 3 and at >= 0:  # four zero bytes across two terms are no sentence end
                at = stored.find(_STORED_END, at + 1)
            end = at >> 2 if at >= 0 else terms
            matched = []
            while h < len(hits) and hits[h][0] < end:
                matched.append(hits[h][1])
                h += 1
            # Each hit adds at most one term to the common subsequence, and precision is at most 1: a
            # sentence that could not beat the best found even so is not matched.
            most = min(len(matched), size)
            if (most / size) ** 3 <= best:
                continue
            at = stored.rfind(_STORED_END, 0, first << 2)
            while at & 3 and at >= 0:
                at = stored.rfind(_STORED_END, 0, at + 3)
            length = end - (at >> 2 if at >= 0 else -1) - 1
            if _evidence(most, size, length) > best:
                best = max(best, _evidence(_longest_increasing(matched), size, length))
        return best

    def _with_named(self, stored: bytes, ids: set[int], said: int, hits: list[tuple[int, list[int]]],
                    ends: list[int]) -> float:
        """`evidence_in` when the name says `said` of the query's terms: every sentence, less its own
        named terms, says those."""
        named_at = sorted(offset for term in ids for offset in _offsets(stored, _stored(term)))
        best, start, h, n = 0.0, 0, 0, 0
        for end in ends:
            if end > start:
                matched, skipped = [], n
                while h < len(hits) and hits[h][0] < end:
                    matched.append(hits[h][1])
                    h += 1
                while n < len(named_at) and named_at[n] < end:
                    n += 1
                common = said + _longest_increasing(matched)
                best = max(best, _evidence(common, len(self._query), end - start - (n - skipped) + said))
            start = end + 1
        return best


def with_phrase(score: float, evidence: float) -> float:
    """A 0..1 score raised by phrase evidence: the gap left to 1 shrinks by PHRASE_WEIGHT * evidence."""
    return 1.0 - (1.0 - score) * (1.0 - PHRASE_WEIGHT * evidence)
