"""Near-duplicate collapsing: one hit per document that exists in several copies.

Two documents are copies when their content is identical (same hash, in any collection), or when they
sit at the same relative path under sibling trees that differ only by a language or variant suffix
(`pages/common/tar.md`, `pages.de/common/tar.md`, `docs.zh_TW/a.md`): a translation of the same page.
The best-ranked copy stands for the group and lists the others, so an answer over a multilingual tree
does not repeat one page once per language. Pure.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

# A folder named like `pages.de`, `pages.pt_BR`, `docs.zh-Hant`: a base name and a short variant tag.
_VARIANT_FOLDER = re.compile(r"(?P<base>[^/.]+)\.(?:[a-z]{2,3}(?:[_-][A-Za-z]{2,4})?)")
# Collapsing removes hits, so a search asks for a few more than it shows, and if copies still leave
# it short (a page in forty languages), once more for many more. Most answers have no copies: the
# first, small fetch keeps them as cheap as without collapsing.
FIRST_EXTRA = 10
SECOND_FACTOR = 4


def fetch_sizes(limit: int, collapse: bool) -> list[int]:
    """How many hits to fetch, try after try, to show `limit` after collapsing."""
    if not collapse:
        return [limit]
    return [min(100_000, limit + FIRST_EXTRA), min(100_000, limit * SECOND_FACTOR + 2 * FIRST_EXTRA)]


def enough(kept: int, fetched: int, asked: int, limit: int) -> bool:
    """Whether a fetch of `asked` that returned `fetched` hits, `kept` after collapsing, settles it."""
    return kept >= limit or fetched < asked


@functools.lru_cache(maxsize=16_384)  # the same pages come back search after search: ~2 us each, 20 a search
def sibling_path(path: str) -> str:
    """The path with its variant folders' tags removed: what all translations of a page share."""
    folders, _, name = path.rpartition("/")
    if not folders:
        return path
    return "/".join(m["base"] if (m := _VARIANT_FOLDER.fullmatch(p)) else p for p in folders.split("/")) + "/" + name


class Marked(Protocol):
    """What collapsing reads of a document (a `DocMarks` or a `DocRow`)."""

    @property
    def collection_id(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def hash(self) -> str: ...


def collapse(keys: Sequence[K], row_of: Callable[[K], Marked | None]) -> tuple[list[K], dict[K, list[K]]]:
    """Keys in rank order -> (the first key of each group, in order; first key -> the others, in order).
    A key without a row stands alone."""
    group_of: dict[Hashable, K] = {}
    kept: list[K] = []
    others: dict[K, list[K]] = {}
    for key in keys:
        row = row_of(key)
        marks = _marks(row) if row is not None else ()
        leader = None
        for mark in marks:
            if mark in group_of:
                leader = group_of[mark]
                break
        if leader is None:
            kept.append(key)
            leader = key
        else:
            others.setdefault(leader, []).append(key)
        for mark in marks:
            group_of.setdefault(mark, leader)
    return kept, others


def _marks(row: Marked) -> tuple[Hashable, ...]:
    path = ("path", row.collection_id, sibling_path(row.path))
    return (path, ("hash", row.hash)) if row.hash else (path,)
