"""Snippets with line numbers, in qmd's diff-hunk style. Pure (no I/O, no trio)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

MAX_SNIPPET_CHARS = 500


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


class Snippets:
    """Snippets for one query: the probe regex is compiled once and reused for every result."""

    def __init__(self, terms: Collection[str], terms_of: Callable[[str], Collection[str]]) -> None:
        self._wanted = set(terms)
        self._terms_of = terms_of
        probes = sorted({_probe(t) for t in self._wanted}, key=len, reverse=True)
        self._probe_re = re.compile("|".join(map(re.escape, probes))) if probes else None

    def best_line(self, lines: list[str]) -> int:
        """Index of the line holding the most distinct query terms (first wins on ties), -1 if none.

        Tokenizing is what a snippet costs; one regex pass over the folded chunk finds the few lines
        that can hold a term, and only those are tokenized."""
        if self._probe_re is None:
            return -1
        folded = "\n".join(lines).casefold()  # casefold never adds or drops a newline
        candidates = sorted({folded.count("\n", 0, m.start()) for m in self._probe_re.finditer(folded)})
        best, best_hits = -1, 0
        for i in candidates:
            hits = len(self._wanted.intersection(self._terms_of(lines[i])))
            if hits > best_hits:
                best, best_hits = i, hits
        return best

    def make(self, chunk_text: str, chunk_start_line: int, doc_lines: int, context_lines: int = 4) -> Snippet:
        """Up to `context_lines` lines around the best line of a chunk: one before, the rest after."""
        lines = chunk_text.split("\n")
        hit = self.best_line(lines)
        start = max(hit - 1, 0) if hit >= 0 else 0
        while start < len(lines) - 1 and not lines[start].strip() and start < max(hit, 0):
            start += 1
        window = lines[start:start + context_lines]
        while window and not window[-1].strip():
            window.pop()
        body = "\n".join(window)
        if len(body) > MAX_SNIPPET_CHARS:
            body = body[: MAX_SNIPPET_CHARS - 3] + "..."
        first = chunk_start_line + start
        before = first - 1
        after = max(doc_lines - (first + len(window) - 1), 0)
        header = f"@@ -{first},{len(window)} @@ ({before} before, {after} after)"
        line = chunk_start_line + (hit if hit >= 0 else 0)
        return Snippet(line=line, text=f"{header}\n{body}")


def number_lines(text: str, first_line: int) -> str:
    """Prefix each line with its 1-based number, as `get --line-numbers` and `search --line-numbers` show."""
    return "\n".join(f"{first_line + i}: {line}" for i, line in enumerate(text.split("\n")))
