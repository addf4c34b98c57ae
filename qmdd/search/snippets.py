"""Snippets with line numbers, in qmd's diff-hunk style. Pure functions."""

from __future__ import annotations

from collections.abc import Callable, Collection

MAX_SNIPPET_CHARS = 500


class Snippet:
    __slots__ = ("line", "text")

    def __init__(self, line: int, text: str) -> None:
        # 1-based line in the file of the best-matching line (the chunk's first line if none matched).
        self.line = line
        # `@@ -start,count @@ (B before, A after)` header, then the snippet lines.
        self.text = text


def best_line(lines: list[str], terms: Collection[str], terms_of: Callable[[str], Collection[str]]) -> int:
    """Index of the line holding the most distinct query terms (first wins on ties), -1 if none."""
    wanted = set(terms)
    best, best_hits = -1, 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        hits = len(wanted.intersection(terms_of(line)))
        if hits > best_hits:
            best, best_hits = i, hits
    return best


def make_snippet(chunk_text: str, chunk_start_line: int, doc_lines: int, terms: Collection[str],
                 terms_of: Callable[[str], Collection[str]], context_lines: int = 4) -> Snippet:
    """Up to `context_lines` lines around the best line of a chunk: one before, the rest after."""
    lines = chunk_text.split("\n")
    hit = best_line(lines, terms, terms_of)
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
