"""Snippets with line numbers, in qmd's diff-hunk style. Pure (no I/O, no trio)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Iterator

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
    """Snippets for one query: the probe regex is compiled once and reused for every result."""

    def __init__(self, terms: Collection[str], terms_of: Callable[[str], Collection[str]],
                 background: Collection[str] = ()) -> None:
        self._wanted = set(terms)
        # Terms of the caller's intent: they count for a line at BACKGROUND_WEIGHT of a query term, so
        # they break ties and steer toward the meaning meant, without outweighing the query.
        self._background = set(background) - self._wanted
        self._terms_of = terms_of
        query_probes = sorted({_probe(t) for t in self._wanted})
        extra = sorted({_probe(t) for t in self._background} - set(query_probes))
        self._probes = (query_probes + extra)[:MAX_PROBES]  # the query's own terms first
        longest_first = sorted(self._probes, key=len, reverse=True)
        self._probe_re = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None

    def _matches(self, folded: str) -> Iterator[tuple[int, int]]:
        """(line, column) of the first probe match on each line holding one; on a long line, of the
        first match of each probe instead. One pass, each newline counted once: linear in the chunk."""
        assert self._probe_re is not None
        line, start = 0, 0
        end = _line_end(folded, 0)
        pos = 0
        while (m := self._probe_re.search(folded, pos)) is not None:
            at = m.start()
            if at > end:  # on a later line
                line += 1 + folded.count("\n", end + 1, at)
                start = folded.rfind("\n", end, at) + 1
                end = _line_end(folded, at)
            if end - start <= LONG_LINE_CHARS:
                yield line, at - start
            else:  # a window around each probe's first match, rather than tokenizing the whole line
                firsts = {folded.find(probe, at, end) for probe in self._probes} - {-1}
                for column in sorted(firsts):
                    yield line, column - start
            pos = end

    def best_hit(self, lines: list[str]) -> tuple[int, int]:
        """(line, column) of the line (or window of a long line) holding the most distinct query terms
        (intent terms counting less),
        the first on ties; (-1, 0) if none does.

        Tokenizing is what a snippet costs; one regex pass over the folded chunk finds the few lines
        that can hold a term, and only those are tokenized."""
        if self._probe_re is None:
            return -1, 0
        # casefold never adds or drops a newline; it can lengthen a line (ß → ss), which only moves
        # a long line's window a little.
        folded = "\n".join(lines).casefold()
        best, best_column, best_hits = -1, 0, 0.0
        for i, column in itertools.islice(self._matches(folded), MAX_CANDIDATES):
            text = lines[i] if len(lines[i]) <= LONG_LINE_CHARS else _excerpt(lines[i], column)
            found = set(self._terms_of(text))
            hits = len(self._wanted & found) + BACKGROUND_WEIGHT * len(self._background & found)
            if hits > best_hits:
                best, best_column, best_hits = i, column, hits
        return best, best_column

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


def _line_end(text: str, at: int) -> int:
    """Index of the newline ending the line that holds `at`, or the text's length."""
    end = text.find("\n", at)
    return len(text) if end < 0 else end

