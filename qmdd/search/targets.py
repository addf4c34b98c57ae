"""How a user names a document or folder: qmd://collection/path, collection/path, a filesystem path,
`#docid`, with an optional `:from[:count]` line suffix. Pure functions over the collection list."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from qmdd.protocol import ErrorCode, QmddError
from qmdd.store.documents import CollectionRow

_LINE_SUFFIX = re.compile(r":(\d+)(?::(\d+))?$")
_DOCID = re.compile(r"^#?([0-9a-fA-F]{6,64})$")


@dataclass(frozen=True)
class Target:
    collection: CollectionRow | None
    """None: no collection matched (a bare name or a global target)."""
    path: str
    """Relative path inside the collection ('' for its root), or the raw text when collection is None."""


def split_line_suffix(target: str) -> tuple[str, int | None, int | None]:
    """`notes/a.md:10:5` → ('notes/a.md', 10, 5). Anchored at the end, so `qmd://` is never split."""
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


def _clean(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p and p != "."]
    if ".." in parts:
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"'..' is not allowed in {path!r}")
    return "/".join(parts)


def resolve_target(target: str, collections: Sequence[CollectionRow], cwd: str | None) -> Target:
    """Map a user-supplied target onto (collection, relative path) without touching the index."""
    by_name = {c.name: c for c in collections}
    text = target.strip()
    if text.startswith(("qmd://", "//")):
        rest = text.split("//", 1)[1]
        name, _, path = rest.partition("/")
        if name not in by_name:
            raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"no collection named {name!r}")
        return Target(by_name[name], _clean(path))
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
    best: CollectionRow | None = None
    for c in collections:
        if (fs == c.root or fs.startswith(c.root.rstrip("/") + "/")) and (
                best is None or len(c.root) > len(best.root)):
            best = c
    if best is None:
        return Target(None, text)
    return Target(best, _clean(os.path.relpath(fs, best.root)) if fs != best.root else "")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Glob with `**` (any depth), `*` and `?` (not crossing '/'), `[...]` and `{a,b}` alternatives."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        elif ch == "{":
            end = pattern.find("}", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                out.append("(?:" + "|".join(re.escape(a) for a in pattern[i + 1:end].split(",")) + ")")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error as exc:
        raise QmddError(ErrorCode.INVALID_INPUT, f"bad glob {pattern!r}: {exc}") from None


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[{")
