"""Markdown-aware chunking for embedding and BM25: sections by heading, sized to the embedding model.

A document is cut into sections at ATX and setext headings (never inside a code fence, never inside
YAML/TOML front matter, which belongs to the first section). Small neighbouring sections are merged
up to `target_tokens`; a section over `max_tokens` is split at blank lines outside fences into
pieces packed up to `target_tokens`, each repeating a few trailing lines of the previous piece.
A block still over `max_tokens` (a huge paragraph or fence) is split between lines, keeping
fences that fit whole; a single line over `max_tokens` (a paragraph written as one line, as most
Chinese text and many notes are) is cut into pieces of whole sentences packed up to `target_tokens`
(a sentence longer still: at spaces, or every `target_tokens` characters where it has none).

Chunks are whole-line ranges of the original text (leading/trailing blank lines trimmed), so line
numbers always point back into the file and `text` is an exact slice; a long line's pieces are
slices of it, each with that line's number.

Measured (bench/eval_quality.py; drcd: 2,000 Chinese paragraphs of one line each, 169-834 model
tokens): multilingual-e5-small `vsearch` nDCG@10 0.828 -> 0.899 and `query` 0.960 -> 0.968, where a
paragraph was one chunk (and the model read its first 512 tokens); the seven English collections,
whose abstracts are one line each, all-MiniLM-L6-v2: every method within -0.005 .. +0.010.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate, compress, pairwise, repeat
from operator import add, not_, sub

# Rough BERT-WordPiece token count, computed with C-speed bytes operations. BERT's basic tokenizer
# makes every ASCII punctuation mark a token of its own and every CJK character too; common words are
# one WordPiece, longer or rarer ones several. So: one per punctuation mark, one per alphanumeric run
# plus one per further 8 characters of it, and one per non-ASCII character (CJK exactly; other
# scripts and accented letters conservatively). Calibrated by hand against BERT's rules (no vocabulary
# is available offline): exact on shell-style lines such as `git commit {{[-m|--message]}}`, about
# 10% high on English prose, where long common words are single WordPieces. Overestimating only makes
# chunks a little smaller; underestimating would get them truncated by the model. Long digit strings
# and hex hashes are underestimated (WordPiece shreds them), one reason for the headroom that
# target_tokens leaves below max_tokens.
_PUNCT_BYTES = string.punctuation.encode()
_HIGH_BYTES = bytes(range(128, 256))
# Translation table: ASCII letters and digits become b"a", newlines stay, every other byte is b" ".
_SHAPE = bytes(
    ord("a") if chr(i).isascii() and chr(i).isalnum() else ord("\n") if i == ord("\n") else ord(" ")
    for i in range(256)
)
_LONG_RUN = b"a" * 8
# Lines that may matter for structure: ATX headings, fences, setext underlines, thematic breaks.
# Everything else is skipped at C speed by finditer; the literal leading newline (the text is
# scanned with one prepended) lets the regex engine jump from line start to line start.
_CANDIDATE_RE = re.compile(
    r"\n[ \t]*(?:#|(?:(?:[-+*]|\d{1,9}[.)])[ \t]+)?(?:```|~~~)|[-=*_][-=*_ \t]*\r?(?=\n|\Z))"
)
# Fences are recognised at any indentation and right after a list marker ("- ```"), unlike strict
# CommonMark's 0-3 spaces: fences nested in list items are common in docs, and missing an opener
# would turn its closing line into a phantom opener that hides every heading after it.
_FENCE_OPEN_RE = re.compile(r"[ \t]*(?:(?:[-+*]|\d{1,9}[.)])[ \t]+)?(`{3,}|~{3,})(.*)")
_FENCE_CLOSE_RE = re.compile(r"[ \t]*(`{3,}|~{3,})[ \t]*")
_ATX_RE = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_ATX_CLOSE_RE = re.compile(r"(?:^|[ \t]+)#+$")
_SETEXT_RE = re.compile(r" {0,3}(?:=+|-+)[ \t]*")
_BREAK_RE = re.compile(r" {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})")
# A paragraph cannot start with these, so an underline below them is not a setext heading.
_NOT_PARAGRAPH_RE = re.compile(r"[ \t]*(?:[-+*](?:[ \t]|$)|\d{1,9}[.)](?:[ \t]|$)|>|\||<)| {4}|\t")
_INTERRUPT_RE = re.compile(r" {0,3}(?:[-+*][ \t]|\d{1,9}[.)][ \t]|>)")

_MARKUP_RE = re.compile(r"[\[<`*_{\\]")
_LINK_RE = re.compile(r"!?\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])")
_TAG_RE = re.compile(r"</?[A-Za-z][^>]*>")
_CODE_RE = re.compile(r"(`+)(.+?)\1")
_EMPHASIS_RE = re.compile(r"(\*{1,3}|(?<!\w)_{1,3})(\S(?:.*?\S)?)\1(?!\w)")
_ATTRS_RE = re.compile(r"\s*\{[#.][^}]*\}\s*$")
_ESCAPE_RE = re.compile(r"\\([!-/:-@\[-`{-~])")
_YAML_TITLE_RE = re.compile(r"title[ \t]*[:=][ \t]*(.*)")


CHUNK_RULES = "2"
"""The rules' version: bump it whenever `chunk_markdown` cuts the same text, with the same config,
otherwise. A collection cut by other rules is cut again by its next scan (2: a line over max_tokens
is cut into sentences)."""


@dataclass(frozen=True)
class ChunkerConfig:
    target_tokens: int = 200  # aim for this many (estimated) model tokens per chunk
    max_tokens: int = 256  # hard cap, the embedding model's max length
    overlap_tokens: int = 32  # overlap carried into the next chunk when a long section is split

    def __post_init__(self) -> None:
        if not 0 < self.target_tokens <= self.max_tokens or not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(f"inconsistent chunker sizes: {self}")


@dataclass(frozen=True)
class Chunk:
    seq: int  # 0-based order in the document
    start_line: int  # 1-based, inclusive, in the original file
    end_line: int  # 1-based, inclusive
    heading_path: tuple[str, ...]  # headings enclosing the chunk's start, outermost first
    text: str  # exactly the original lines start_line..end_line joined with "\n"


def estimate_tokens(text: str) -> int:
    """Cheap, upper-leaning estimate of the BERT WordPiece count; additive over lines."""
    data = text.encode()
    non_ascii = 0 if text.isascii() else len(text) - len(data.translate(None, _HIGH_BYTES))
    punct = len(data) - len(data.translate(None, _PUNCT_BYTES))
    shape = data.translate(_SHAPE)
    runs = shape.count(b" a") + shape.count(b"\na") + shape.startswith(b"a")
    return non_ascii + punct + runs + shape.count(_LONG_RUN)


def _line_estimates(lines: list[str]) -> list[int]:
    """`estimate_tokens` of each line, computed with a few whole-text bytes operations."""
    text = "\n".join(lines)
    data = text.encode()

    def per_line(blob: bytes) -> map[int]:
        return map(len, blob.split(b"\n"))

    counts = map(sub, per_line(data), per_line(data.translate(None, _PUNCT_BYTES)))
    if not text.isascii():
        non_ascii = map(sub, map(len, lines), per_line(data.translate(None, _HIGH_BYTES)))
        counts = map(add, counts, non_ascii)
    # A leading space on every line makes b" a" count each alphanumeric run, including a first one.
    shapes = (b" " + data.translate(_SHAPE)).replace(b"\n", b"\n ").split(b"\n")
    runs = map(bytes.count, shapes, repeat(b" a"))
    long_runs = map(bytes.count, shapes, repeat(_LONG_RUN))
    return list(map(add, counts, map(add, runs, long_runs)))


def _clean_heading(text: str) -> str:
    if not _MARKUP_RE.search(text):
        return " ".join(text.split())
    text = _ATTRS_RE.sub("", text)
    text = _LINK_RE.sub(r"\1", text)
    # A tag in a code span is its text (`` `<cmath>` `` names a header): tags go only around code spans.
    pieces, at = [], 0
    for code in _CODE_RE.finditer(text):
        pieces += [_TAG_RE.sub("", text[at:code.start()]), code[2]]
        at = code.end()
    text = "".join(pieces) + _TAG_RE.sub("", text[at:])
    text = _EMPHASIS_RE.sub(r"\2", text)
    text = _ESCAPE_RE.sub(r"\1", text)
    return " ".join(text.split())


def _front_matter_end(lines: list[str]) -> int:
    """Number of lines of YAML (---) or TOML (+++) front matter at the top; 0 if there is none."""
    opener = lines[0].lstrip("\ufeff").rstrip() if lines else ""
    if opener not in ("---", "+++"):
        return 0
    closers = ("---", "...") if opener == "---" else ("+++",)
    for i in range(1, len(lines)):
        if lines[i].rstrip() in closers:
            return i + 1
    return 0


@dataclass
class _Structure:
    body_start: int  # first line after front matter
    headings: list[tuple[int, int, str]]  # (first line, level, title); setext starts at its paragraph
    fences: list[tuple[int, int]]  # (opening line, closing line), inclusive; unclosed runs to the end


def _paragraph_start(lines: list[str], underline: int, floor: int, structural: set[int]) -> int | None:
    """First line of the paragraph an underline would turn into a setext heading, if there is one."""
    j = underline - 1
    while j >= floor and lines[j].strip() and j not in structural:
        j -= 1
    start = j + 1
    if start == underline or _NOT_PARAGRAPH_RE.match(lines[start]):
        return None  # no paragraph: a list item, quote, table, HTML or indented code block
    if any(_INTERRUPT_RE.match(lines[k]) for k in range(start + 1, underline)):
        return None  # a list item or quote interrupted the paragraph and owns the underline
    return start


def _scan(text: str, lines: list[str]) -> _Structure:
    body = _front_matter_end(lines)
    headings: list[tuple[int, int, str]] = []
    fences: list[tuple[int, int]] = []
    structural: set[int] = set()
    fence: tuple[int, str, int] | None = None  # (opening line, fence char, fence length)
    pos = sum(len(line) + 1 for line in lines[:body])
    line_no = body
    # In "\n" + text, a match starts at the newline before its line, i.e. at the line's offset in text.
    for m in _CANDIDATE_RE.finditer("\n" + text, pos):
        line_no += text.count("\n", pos, m.start())
        pos = m.start()
        line = lines[line_no].rstrip()
        if fence is not None:
            fm = _FENCE_CLOSE_RE.fullmatch(line)
            if fm and fm[1][0] == fence[1] and len(fm[1]) >= fence[2]:
                fences.append((fence[0], line_no))
                structural.add(line_no)
                fence = None
            continue
        fm = _FENCE_OPEN_RE.fullmatch(line)
        if fm and not (fm[1][0] == "`" and "`" in fm[2]):
            fence = (line_no, fm[1][0], len(fm[1]))
            structural.add(line_no)
            continue
        hm = _ATX_RE.fullmatch(line)
        if hm:
            title = _ATX_CLOSE_RE.sub("", (hm[2] or "").strip())
            headings.append((line_no, len(hm[1]), _clean_heading(title)))
            structural.add(line_no)
            continue
        if _SETEXT_RE.fullmatch(line):
            start = _paragraph_start(lines, line_no, body, structural)
            if start is not None:
                title = _clean_heading(" ".join(lines[start:line_no]))
                headings.append((start, 1 if "=" in line else 2, title))
                structural.add(line_no)
                continue
        if _BREAK_RE.fullmatch(line):
            structural.add(line_no)
    if fence is not None:
        fences.append((fence[0], len(lines) - 1))
    return _Structure(body, headings, fences)


def extract_title(text: str, fallback: str) -> str:
    """Front matter `title:`, else the first heading (markup stripped), else `fallback`."""
    lines = text.split("\n")
    body = _front_matter_end(lines)
    for line in lines[1 : max(body - 1, 1)]:
        m = _YAML_TITLE_RE.fullmatch(line.rstrip())
        if m:
            value = m[1].strip()
            if value[:1] in ("'", '"') and value.endswith(value[0]) and len(value) > 1:
                value = value[1:-1]
            elif " #" in value:
                value = value.split(" #", 1)[0]  # YAML comment after an unquoted scalar
            value = value.strip()
            if value and value not in ("|", ">", "|-", ">-"):
                return value
    for _, _, title in _scan(text, lines).headings:
        if title:
            return title
    return fallback


def chunk_markdown(text: str, config: ChunkerConfig = ChunkerConfig()) -> list[Chunk]:
    if not text.strip():
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline terminates the last line; it does not start a new one
    structure = _scan(text, lines)
    assembler = _Assembler(lines, structure, config)
    ranges = assembler.ranges(estimate_tokens(text))
    chunks: list[Chunk] = []
    for start, end, path in ranges:
        while start < end and not lines[start].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        if end == start + 1 and assembler.est(start, end) > config.max_tokens:
            # A line over the model's length would be cut off by it: its sentences, a few at a time.
            first = len(chunks)
            chunks.extend(Chunk(first + i, end, end, path, piece)
                          for i, piece in enumerate(line_pieces(lines[start], config.target_tokens)))
        elif start < end:
            chunks.append(Chunk(len(chunks), start + 1, end, path, "\n".join(lines[start:end])))
    return chunks


# A sentence ends at the ideographic full stop, the full-width ! ? ; or an ASCII ! ? (with any closing
# quotes or brackets after), or at . ; : followed by a space.
_SENTENCE_END_RE = re.compile(r"[\u3002\uff01\uff1f\uff1b!?]+[\u300d\u300f\u201d\u2019\")\]]*\s*"
                              r"|[.;:]+[\u201d\u2019\")\]]*\s+")
_SPACE_RE = re.compile(r"\s+")


def line_pieces(line: str, budget: int) -> list[str]:
    """A long line as consecutive slices of whole sentences, each up to `budget` estimated tokens; a
    sentence over it is cut at spaces, and where it has none every `budget` characters (one token a
    character at most: CJK). Leading and trailing spaces of a piece are left out."""
    def characters(word: str) -> list[str]:
        return [word[i:i + budget] for i in range(0, len(word), budget)]

    def words(sentence: str) -> list[str]:
        return _pack(sentence, _SPACE_RE, budget, characters)

    return [p for p in (piece.strip() for piece in _pack(line, _SENTENCE_END_RE, budget, words)) if p]


def _pack(text: str, boundary: re.Pattern[str], budget: int, cut: Callable[[str], list[str]]) -> list[str]:
    """`text`'s parts between boundaries, packed into slices of up to `budget` tokens; a part over it
    alone is cut by `cut`."""
    ends = [m.end() for m in boundary.finditer(text) if m.end() > m.start()]
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    pieces: list[str] = []
    start = end = used = 0
    for part_end in ends:
        cost = estimate_tokens(text[end:part_end])
        if used and used + cost > budget:
            pieces.append(text[start:end])
            start, used = end, 0
        if cost > budget:
            pieces.extend(cut(text[end:part_end]))
            start = part_end
        else:
            used += cost
        end = part_end
    if start < end:
        pieces.append(text[start:end])
    return pieces


class _Assembler:
    """Turns sections into (start, end, heading_path) line ranges, end exclusive, 0-based."""

    def __init__(self, lines: list[str], structure: _Structure, config: ChunkerConfig) -> None:
        self.lines = lines
        self.structure = structure
        self.cfg = config
        self._fence_of: list[int] | None = None
        self._cum: list[int] | None = None

    def est(self, start: int, end: int) -> int:
        if self._cum is None:
            # Prefix sums of per-line estimates: any line range's estimate in O(1).
            self._cum = list(accumulate(_line_estimates(self.lines), initial=0))
        return self._cum[end] - self._cum[start]

    def _sections(self) -> list[tuple[int, int, tuple[str, ...]]]:
        sections: list[tuple[int, int, tuple[str, ...]]] = []
        stack: list[tuple[int, str]] = []
        start = 0  # the preamble: front matter and anything before the first heading
        path: tuple[str, ...] = ()
        for line, level, title in self.structure.headings:
            if line > start:
                sections.append((start, line, path))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            start, path = line, tuple(t for _, t in stack if t)
        sections.append((start, len(self.lines), path))
        return sections

    def ranges(self, total_est: int) -> list[tuple[int, int, tuple[str, ...]]]:
        cfg = self.cfg
        sections = self._sections()
        if total_est <= cfg.target_tokens:
            # Everything merges into one chunk (the common case for short notes): skip line estimates.
            for start, end, path in sections:
                if any(map(str.strip, self.lines[start:end])):
                    return [(start, len(self.lines), path)]
        out: list[tuple[int, int, tuple[str, ...]]] = []
        pending: tuple[int, int, tuple[str, ...]] | None = None  # merged small sections
        pending_est = 0
        for start, end, path in sections:
            est = self.est(start, end)
            if est == 0:
                continue  # a blank preamble must not lend its empty heading path to what follows
            if pending is not None and pending_est + est <= cfg.target_tokens:
                pending, pending_est = (pending[0], end, pending[2]), pending_est + est
                continue
            if pending is not None:
                out.append(pending)
                pending = None
            if est > cfg.max_tokens:
                out.extend((s, e, path) for s, e in self._split(start, end))
            else:
                pending, pending_est = (start, end, path), est
        if pending is not None:
            out.append(pending)
        return out

    def _fences(self) -> list[int]:
        """Per line: index of the fence containing it (opening and closing lines included), or -1."""
        if self._fence_of is None:
            fence_of = [-1] * len(self.lines)
            for i, (open_line, close_line) in enumerate(self.structure.fences):
                fence_of[open_line : close_line + 1] = [i] * (close_line + 1 - open_line)
            self._fence_of = fence_of
        return self._fence_of

    def _split(self, a: int, b: int) -> list[tuple[int, int]]:
        """Pieces of an oversized section [a, b), with overlap, as (start, end) line ranges."""
        cfg, lines, fence_of = self.cfg, self.lines, self._fences()
        fences = self.structure.fences
        est = self.est
        # Blocks: runs of lines separated by blank lines outside fences (blanks join the block above).
        blocks: list[tuple[int, int]] = []
        block_start = a
        for i in compress(range(a, b - 1), map(not_, map(str.strip, lines[a : b - 1]))):
            if fence_of[i] < 0 and lines[i + 1].strip():
                blocks.append((block_start, i + 1))
                block_start = i + 1
        blocks.append((block_start, b))

        units: list[tuple[int, int]] = []
        for s, e in blocks:
            if est(s, e) <= cfg.max_tokens:
                units.append((s, e))
                continue
            # Last resort: single lines, but a fence that fits stays whole.
            i = s
            while i < e:
                f = fence_of[i]
                if f >= 0 and fences[f][0] == i and est(i, min(fences[f][1] + 1, e)) <= cfg.max_tokens:
                    units.append((i, min(fences[f][1] + 1, e)))
                else:
                    units.append((i, i + 1))
                i = units[-1][1]

        pieces: list[tuple[int, int]] = []
        cur_s, cur_e, cur_est = a, a, 0
        for s, e in units:
            u = est(s, e)
            if cur_est == 0 or cur_est + u <= cfg.target_tokens:
                cur_e, cur_est = e, cur_est + u
            else:
                pieces.append((cur_s, cur_e))
                cur_s, cur_e, cur_est = s, e, u
        pieces.append((cur_s, cur_e))

        out = [pieces[0]]
        for (ps, _), (s, e) in pairwise(pieces):
            out.append((self._overlap_start(ps, s, est(s, e)), e))
        return out

    def _overlap_start(self, prev_start: int, start: int, piece_est: int) -> int:
        """Earliest line before `start` such that the repeated lines fit the overlap budget."""
        fence_of, fences = self._fence_of or [], self.structure.fences
        budget = min(self.cfg.overlap_tokens, self.cfg.max_tokens - piece_est)
        # A piece that starts inside a fence (an oversized one) may repeat lines of that fence.
        inner = fence_of[start] if fence_of[start] >= 0 and fences[fence_of[start]][0] < start else -1
        best = start
        for i in range(start - 1, prev_start, -1):
            if self.est(i, start) > budget:
                break
            f = fence_of[i]
            # Never begin inside a fence: the chunk would show its closing line as an opening one.
            if f < 0 or fences[f][0] == i or f == inner:
                best = i
        return best



def embedding_text(title: str, heading_path: tuple[str, ...], text: str) -> str:
    """What the embedding model sees for a chunk: its document title and heading path give a
    mid-document chunk the topic its own lines may never name. A chunk's stored hash is the hash of
    this string, so an embedding is reused exactly when the model would see the same input."""
    context = [title] if title and (not heading_path or heading_path[0] != title) else []
    context.extend(heading_path)
    return " > ".join(context) + "\n" + text if context else text
