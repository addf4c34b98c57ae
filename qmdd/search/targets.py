"""How a user names a document or folder: qmd://collection/path, collection/path, a filesystem path,
`#docid`, with an optional `:from[:count]` line suffix; and multi-get's globs. Pure functions over the
collection list."""

from __future__ import annotations

import itertools
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store.documents import CollectionRow, collection_not_found
from qmdd.walk import masks_select

# Longer than any path the OS can open (PATH_MAX): a longer target can only be a mistake or an
# attack, and must not reach SQLite as a pattern.
MAX_TARGET_CHARS = 4096
MAX_GLOB_CHARS = 1024
MAX_GLOB_ALTERNATIVES = 64  # spellings a glob's {a,b} groups expand to, all of them together
MAX_GLOB_STATES = 10_000  # state sets whose transitions a glob remembers

_LINE_SUFFIX = re.compile(r":(\d+)(?::(\d+))?$")
_DOCID = re.compile(r"^#?([0-9a-fA-F]{6,64})$")


@dataclass(frozen=True)
class Target:
    collection: CollectionRow | None
    """None: no collection matched (a bare name or a global target)."""
    path: str
    """Relative path inside the collection ('' for its root), or the raw text when collection is None."""
    exact: bool = False
    """Named as qmd://collection/path: that document or none, never one found by its path's suffix."""


def _check_size(target: str) -> None:
    if len(target) > MAX_TARGET_CHARS:
        raise QmddError(ErrorCode.INVALID_INPUT, f"the target is {len(target)} characters long; "
                        f"at most {MAX_TARGET_CHARS} are accepted")


def split_line_suffix(target: str) -> tuple[str, int | None, int | None]:
    """`notes/a.md:10:5` → ('notes/a.md', 10, 5). Anchored at the end, so `qmd://` is never split."""
    _check_size(target)
    m = _LINE_SUFFIX.search(target)
    if not m or m.start() == 0:
        return target, None, None
    count = int(m.group(2)) if m.group(2) else None
    return target[: m.start()], int(m.group(1)), count


def docid_prefix(target: str) -> str | None:
    """The hex of a `#docid` target, or None. A bare hex string counts only with its '#'."""
    m = _DOCID.match(target.strip().strip("'\""))
    if m and target.strip().startswith("#"):
        return m.group(1).lower()
    return None


def spellings(target: str) -> list[str]:
    """What a target may mean: itself, then, for a qmd:// URI holding %XX escapes, the URI percent-decoded
    (URIs handed out to MCP clients are encoded, `qmd://notes/my%20plan.md`, as qmd's are). The one
    place the CLI, the MCP resource and every other door decode a URI; the literal spelling is tried
    first, so a name that really holds `%20` (or one an MCP SDK has decoded already) still means itself."""
    text = target.strip()
    if not text.startswith(("qmd://", "//")) or "%" not in text:
        return [target]
    try:
        decoded = urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:  # escapes that are not UTF-8: only the literal spelling means anything
        return [target]
    return [target] if decoded == text else [target, decoded]


def _clean(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p and p != "."]
    if ".." in parts:
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"'..' is not allowed in {path!r}")
    return "/".join(parts)


def resolve_target(target: str, collections: Sequence[CollectionRow], cwd: str | None) -> Target:
    """Map a user-supplied target onto (collection, relative path) without touching the index."""
    _check_size(target)
    by_name = {c.name: c for c in collections}
    text = target.strip()
    if text.startswith(("qmd://", "//")):
        # qmd:///c/p and qmd:////c/p are qmd://c/p with slashes to spare.
        rest = text.split("//", 1)[1].lstrip("/")
        name, _, path = rest.partition("/")
        if name not in by_name:
            raise collection_not_found(name)
        return Target(by_name[name], _clean(path), exact=True)
    first, _, rest = text.partition("/")
    if first in by_name and not text.startswith("/"):
        return Target(by_name[first], _clean(rest))
    # A filesystem path: absolute, ~, or relative to the client's working directory.
    fs = os.path.expanduser(text)
    if not os.path.isabs(fs):
        if cwd is None:
            return Target(None, text)
        fs = os.path.join(cwd, fs)
    fs = os.path.realpath(fs)
    # Of the collections whose roots hold the path (nested roots, or views of one folder with other
    # masks), the innermost whose masks select the file; for a folder, or a file none selects, the
    # innermost.
    holding = sorted((c for c in collections if fs == c.root or fs.startswith(c.root.rstrip("/") + "/")),
                     key=lambda c: len(c.root), reverse=True)
    if not holding:
        return Target(None, text)

    def relpath(c: CollectionRow) -> str:
        return _clean(os.path.relpath(fs, c.root)) if fs != c.root else ""

    best = next((c for c in holding if relpath(c) and masks_select(c.masks, c.excludes, relpath(c))), holding[0])
    return Target(best, relpath(best))


def path_readings(path: str, collections: Sequence[CollectionRow]) -> list[Target]:
    """The folders a search's `--path` may mean, most likely first; collection None: a folder inside each
    searched collection. A qmd:// URI means one collection's folder; a path on disk inside a collection's
    root, that folder (else, with its leading slash dropped, a folder inside the collections); a relative
    path, a folder inside the collections, or else, when its first name is a collection's, that one's."""
    _check_size(path)
    text = path.strip()
    if text.startswith(("qmd://", "//")):
        return [resolve_target(text, collections, None)]
    readings = [Target(None, text.strip("/"))]
    if text.startswith(("/", "~")):
        on_disk = resolve_target(text, collections, None)
        return ([on_disk] if on_disk.collection is not None else []) + readings
    if any(c.name == text.partition("/")[0] for c in collections):
        readings.append(resolve_target(text, collections, None))
    return readings


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[{")


# A glob is one or more chains of elements (one per spelling of its {a,b} groups); each element is
# a bit position, and a set of states is an int. Every character then costs a few big-int
# operations, whatever the pattern: no backtracking, so time is linear in the text.
_ONE, _STAR, _GLOBSTAR, _DIRS = "one", "*", "**", "**/"
_Element = tuple[str, Callable[[str], bool] | None]


def _not_slash(ch: str) -> bool:
    return ch != "/"


def _in_class(one_of: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda ch: one_of.fullmatch(ch) is not None


def _glob_tokens(pattern: str) -> list[list[list[_Element]]]:
    """The pattern as a sequence of choices, each a list of alternative element runs: `**/` (any
    depth, or none), `**` (anything), `*` and `?` (not crossing '/'), `[...]`, `{a,b}` alternatives."""
    tokens: list[list[list[_Element]]] = []
    i = 0
    while i < len(pattern):
        ch, step = pattern[i], 1
        element: _Element = (_ONE, ch.__eq__)
        if pattern.startswith("**/", i):
            element, step = (_DIRS, None), 3
        elif pattern.startswith("**", i):
            element, step = (_GLOBSTAR, None), 2
        elif ch == "*":
            element = (_STAR, None)
        elif ch == "?":
            element = (_ONE, _not_slash)
        elif ch == "[" and (end := pattern.find("]", i + 1)) > 0:
            body = pattern[i + 1:end].replace("\\", "\\\\")
            try:
                one_of = re.compile("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            except re.error as exc:
                raise QmddError(ErrorCode.INVALID_INPUT, f"bad glob {pattern!r}: {exc}") from None
            element, step = (_ONE, _in_class(one_of)), end + 1 - i
        elif ch == "{" and (end := pattern.find("}", i + 1)) > 0:
            tokens.append([[(_ONE, c.__eq__) for c in alternative] for alternative in pattern[i + 1:end].split(",")])
            i = end + 1
            continue
        tokens.append([[element]])
        i += step
    return tokens


class Glob:
    """A multi-get glob, matched against a document's qmd:// URI, its collection/path and its path."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_GLOB_CHARS:
            raise QmddError(ErrorCode.INVALID_INPUT, f"the glob is {len(pattern)} characters long; "
                            f"at most {MAX_GLOB_CHARS} are accepted")
        tokens = _glob_tokens(pattern)
        spellings = 1
        for choice in tokens:
            spellings *= len(choice)
            if spellings > MAX_GLOB_ALTERNATIVES:
                raise QmddError(ErrorCode.INVALID_INPUT, f"the glob {pattern[:80]!r} spells more than "
                                f"{MAX_GLOB_ALTERNATIVES} alternatives", hints=("Use fewer {a,b} groups.",))
        # What every match starts with, for the index to narrow the candidates before any matching.
        self.literal_prefix = re.split(r"[*?[{]", pattern, maxsplit=1)[0]
        self._start = self._accept = self._skip = self._dirs = self._globstar = self._star = 0
        self._tests: list[tuple[int, Callable[[str], bool]]] = []
        position = 0
        for chain in itertools.product(*tokens):
            self._start |= 1 << position
            for kind, test in itertools.chain.from_iterable(chain):
                bit = 1 << position
                if kind == _ONE:
                    assert test is not None
                    self._tests.append((bit, test))
                else:
                    self._skip |= bit
                    self._dirs |= bit if kind == _DIRS else 0
                    self._globstar |= bit if kind == _GLOBSTAR else 0
                    self._star |= bit if kind == _STAR else 0
                position += 1
            # Nothing advances or skips out of an accept bit, so no run reaches the next chain.
            self._accept |= 1 << position
            position += 1
        self._start = self._close(self._start)
        self._by_char: dict[str, tuple[int, int]] = {}
        # Transitions already computed, state set -> character -> next set: most paths share them.
        self._seen: dict[int, dict[str, int]] = {}

    def _close(self, states: int) -> int:
        """Add the states reachable by skipping stars: a carry runs through each run of skippable
        positions, one addition for all of them."""
        return states | ((self._skip + (states & self._skip)) ^ self._skip)

    def _next(self, states: int, ch: str) -> int:
        masks = self._by_char.get(ch)
        if masks is None:
            advance = sum(bit for bit, test in self._tests if test(ch)) | (self._dirs if ch == "/" else 0)
            masks = self._by_char[ch] = (advance, self._globstar | (self._star if ch != "/" else 0))
        advance, stay = masks
        # A `**/` stays on any character but can end only after a '/', so its staying is not closed.
        return self._close(((states & advance) << 1) | (states & stay)) | (states & self._dirs)

    def selects(self, collection: str, path: str) -> bool:
        """One pass over the URI, starting afresh where collection/path and the path begin."""
        if len(self._seen) > MAX_GLOB_STATES:  # a pattern built to have many: start over, memory bounded
            self._seen.clear()
        uri = f"qmd://{collection}/{path}"
        states = 0
        for begin, end in itertools.pairwise((0, 6, 7 + len(collection), len(uri))):
            states |= self._start
            for ch in uri[begin:end]:
                row = self._seen.get(states)
                if row is None:
                    row = self._seen[states] = {}
                following = row.get(ch)
                if following is None:
                    following = row[ch] = self._next(states, ch)
                states = following
                if not states:
                    break
        return bool(states & self._accept)
