"""Snippets with line numbers, in qmd's diff-hunk style. Pure (no I/O, no trio)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection

MAX_SNIPPET_CHARS = 500
# A line longer than this is looked at only in a window of MAX_SNIPPET_CHARS around each query term's
# first match: tokenizing a whole multi-megabyte line per hit would let one planted file stall searches.
LONG_LINE_CHARS = 2_000
# Lines (or windows of a long line) tokenized per hit: a chunk is a few hundred tokens, so only
# hostile input reaches the bound, and it then costs milliseconds, not seconds.
MAX_CANDIDATES = 64
MAX_PROBES = 32  # query terms searched for in the text; a longer query still scores every term
BACKGROUND_WEIGHT = 0.3  # an intent term's worth in a line, against a query term's 1 (qmd's weight)


class Snippet:
    __slots__ = ("line", "text")

    def __init__(self, line: int, text: str) -> None:
        # 1-based line in the file of the best-matching line (the chunk's first line if none matched).
        self.line = line
        # `@@ -start,count @@ (B before, A after)` header, then the snippet lines.
        self.text = text


def _probe(term: str) -> str:
    """A substring every line holding `term` contains (case-folded): the stem's first letters, which
    survive stemming ("directori" from "directory"; "fli" from "fly" keeps "fl")."""
    return term if len(term) <= 2 else term[: min(4, len(term) - 1)]


def _excerpt(line: str, column: int) -> str:
    """The line, or of a longer one the MAX_SNIPPET_CHARS around `column` with '...' where it is cut."""
    if len(line) <= MAX_SNIPPET_CHARS:
        return line
    width = MAX_SNIPPET_CHARS - 6
    start = max(min(column - width // 3, len(line) - width), 0)
    end = start + width
    return ("..." if start else "") + line[start:end] + ("..." if end < len(line) else "")


class Snippets:
    """Snippets for one query: its probes worked out once and looked for in every result."""

    def __init__(self, terms: Collection[str], terms_of: Callable[[str], Collection[str]],
                 background: Collection[str] = ()) -> None:
        self._wanted = set(terms)
        # Terms of the caller's intent: they count for a line at BACKGROUND_WEIGHT of a query term, so
        # they break ties and steer toward the meaning meant, without outweighing the query.
        self._background = set(background) - self._wanted
        self._terms_of = terms_of
        # Per probe, how many query and intent terms it stands for.
        in_query, in_intent = Counter(map(_probe, self._wanted)), Counter(map(_probe, self._background))
        self._probes = (sorted(in_query) + sorted(in_intent.keys() - in_query.keys()))[:MAX_PROBES]  # query's first
        self._probe_counts = {probe: (in_query[probe], in_intent[probe]) for probe in self._probes}
        # The terms past MAX_PROBES have none searched for, so any text may hold them.
        self._unprobed = (sum(n for probe, n in in_query.items() if probe not in self._probe_counts),
                          sum(n for probe, n in in_intent.items() if probe not in self._probe_counts))

    def _matches(self, folded: str) -> list[tuple[int, int]]:
        """(line, column) of the first probe match on each line holding one; on a long line, of the
        first match of each probe instead; in line order. Each probe is looked for with str.find, once
        per line that holds it: compiling a regex of the probes cost more (~40 us a search) than this."""
        firsts: dict[int, list[int]] = {}  # line start -> where each probe first occurs on that line
        for probe in self._probes:
            # The first MAX_CANDIDATES lines holding a probe: the first that many holding any probe are
            # among them (fewer lines before such a line hold any probe, so fewer hold this one).
            at, lines = folded.find(probe), 0
            while at >= 0 and lines < MAX_CANDIDATES:
                firsts.setdefault(folded.rfind("\n", 0, at) + 1, []).append(at)
                lines += 1
                end = folded.find("\n", at)
                at = -1 if end < 0 else folded.find(probe, end + 1)
        found, line, counted = [], 0, 0
        for start in sorted(firsts):
            line += folded.count("\n", counted, start)  # each newline counted once
            counted = start
            if _line_end(folded, start) - start <= LONG_LINE_CHARS:
                found.append((line, min(firsts[start]) - start))
            else:  # a window around each probe's first match, rather than tokenizing the whole line
                found.extend((line, column - start) for column in sorted(set(firsts[start])))
        return found

    def best_hit(self, lines: list[str]) -> tuple[int, int]:
        """(line, column) of the line (or window of a long line) holding the most distinct query terms
        (intent terms counting less),
        the first on ties; (-1, 0) if none does.

        Tokenizing is what a snippet costs; looking for the probes in the folded chunk finds the few
        lines that can hold a term, and only those are tokenized, those whose probes promise the most first:
        a text holds no more terms than it holds their probes, so the rest are skipped once the best
        one found holds as many as they could."""
        if not self._probes:
            return -1, 0
        # casefold never adds or drops a newline; it can lengthen a line (ß → ss), which only moves
        # a long line's window a little.
        folded = "\n".join(lines).casefold()
        candidates = self._short_line_candidates(lines, folded)
        if candidates is None:
            candidates = self._candidates(lines, folded)
        candidates.sort()
        best, best_column, best_hits, best_order = -1, 0, 0.0, MAX_CANDIDATES
        for negated_bound, order, i, column, text in candidates:
            if -negated_bound < best_hits or (-negated_bound == best_hits and order > best_order):
                break  # neither this nor any after it (as promising, or less) can beat the best or tie earlier
            found = set(self._terms_of(text))
            hits = _weigh(len(self._wanted & found), len(self._background & found))
            if hits > best_hits or (hits == best_hits and hits and order < best_order):
                best, best_column, best_hits, best_order = i, column, hits, order
        return best, best_column

    def _candidates(self, lines: list[str], folded: str) -> list[tuple[float, int, int, int, str]]:
        """(-bound, order, line, column, text) of each candidate `_matches` finds."""
        candidates = []
        for order, (i, column) in enumerate(self._matches(folded)[:MAX_CANDIDATES]):
            text = lines[i] if len(lines[i]) <= LONG_LINE_CHARS else _excerpt(lines[i], column)
            candidates.append((-self._at_most(text.casefold()), order, i, column, text))
        return candidates

    def _short_line_candidates(self, lines: list[str],
                               folded: str) -> list[tuple[float, int, int, int, str]] | None:
        """`_candidates` of a text whose lines are all short (a chunk of prose or code; None for
        another), found line by line: the probes looked for in each line give its column and its bound
        at once, where finding them across the text, then bounding each line found, took a fifth more
        (a tldr hit's snippet: 25 -> 21 us)."""
        folded_lines = folded.split("\n")  # as many as `lines`: casefolding keeps newlines
        if max(map(len, folded_lines)) > LONG_LINE_CHARS:
            return None
        probes = tuple(self._probe_counts.items())
        unprobed_query, unprobed_intent = self._unprobed
        candidates: list[tuple[float, int, int, int, str]] = []
        for i, line in enumerate(folded_lines):
            query, intent, column = unprobed_query, unprobed_intent, -1
            for probe, (in_query, in_intent) in probes:
                at = line.find(probe)
                if at >= 0:
                    query += in_query
                    intent += in_intent
                    if column < 0 or at < column:
                        column = at
            if column >= 0:
                candidates.append((-_weigh(query, intent), len(candidates), i, column, lines[i]))
                if len(candidates) == MAX_CANDIDATES:
                    break
        return candidates

    def _at_most(self, folded: str) -> float:
        """The most `best_hit` can count for a (case-folded) text: its terms whose probes it holds."""
        query, intent = self._unprobed
        for probe, (in_query, in_intent) in self._probe_counts.items():
            if probe in folded:
                query += in_query
                intent += in_intent
        return _weigh(query, intent)

    def make(self, chunk_text: str, chunk_start_line: int, doc_lines: int, context_lines: int = 4) -> Snippet:
        """Up to `context_lines` lines around the best line of a chunk: one before, the rest after; of a
        long line, the part around the match."""
        lines = chunk_text.split("\n")
        hit, column = self.best_hit(lines)
        start = max(hit - 1, 0) if hit >= 0 else 0
        if hit >= 0 and len(lines[hit]) > MAX_SNIPPET_CHARS:
            start = hit  # the line before would take the room the match needs
        while start < len(lines) - 1 and not lines[start].strip() and start < max(hit, 0):
            start += 1
        window = lines[start:start + context_lines]
        while window and not window[-1].strip():
            window.pop()
        body = "\n".join(_excerpt(line, column if start + i == hit else 0) for i, line in enumerate(window))
        if len(body) > MAX_SNIPPET_CHARS:
            body = body[: MAX_SNIPPET_CHARS - 3] + "..."
        first = chunk_start_line + start
        before = first - 1
        after = max(doc_lines - (first + len(window) - 1), 0)
        header = f"@@ -{first},{len(window)} @@ ({before} before, {after} after)"
        line = chunk_start_line + (hit if hit >= 0 else 0)
        return Snippet(line=line, text=f"{header}\n{body}")


def _weigh(query_terms: int, intent_terms: int) -> float:
    """What a line holding so many distinct query and intent terms counts for: the same arithmetic for a
    count and a bound, so a bound is never below the count it bounds."""
    return query_terms + BACKGROUND_WEIGHT * intent_terms


def _line_end(text: str, at: int) -> int:
    """Index of the newline ending the line that holds `at`, or the text's length."""
    end = text.find("\n", at)
    return len(text) if end < 0 else end

