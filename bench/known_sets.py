"""Known-item sets built from the shared markdown corpora, and how a ranking is scored against them.

Pure and synchronous: reading files, parsing titles, seeded sampling and the metrics. The daemon side
(indexing, querying, reporting) is in known_items.py.

A known item is a query with the documents that answer it (its relevant set), each named by its path
relative to the collection's root. Every set is built so that one thing, a page or a problem, answers
it; the relevant set holds more than one file only where the corpus has that thing twice: the same
tldr command on several platforms (common/ and linux/ ...), the same title on two cpp-docs pages,
or a LeetCode problem's README in the other language (same folder).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qmdd.walk import walk_collection

# A markdown link around a heading's text, as in doocs-leetcode: "# [1. Two Sum](https://...)".
LINKED_HEADING = re.compile(r"^#\s+\[(?P<label>.+)\]\([^)]*\)\s*$")
# A problem number before its title: "1. ", "面试题 01.01. ", "剑指 Offer II 004. ", "LCP 05. ".
PROBLEM_NUMBER = re.compile(r"^[^\d]*\d+(?:\.\d+)*\.\s*")
# tldr's option mnemonics in descriptions: "[c]reate", "[l]i[s]t".
MNEMONIC = re.compile(r"\[(\w+)\]")
WORD_EDGE_PUNCTUATION = "\"'`.,:;!?()[]{}<>«»¿¡“”\u2018\u2019"  # the last two: curly single quotes


@dataclass(frozen=True)
class KnownItem:
    query: str
    relevant: frozenset[str]  # paths relative to the collection's root


@dataclass(frozen=True)
class KnownSet:
    name: str
    collection: str
    items: tuple[KnownItem, ...]


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def markdown_files(root: Path) -> list[str]:
    """The files a collection over root indexes (the daemon's own walk: default mask **/*.md, no
    hidden names such as tldr's "..md", no vendor folders such as cpp-docs' build/), sorted."""
    return sorted(f.relpath for f in walk_collection(root).files)


def first_heading(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


def front_matter_title(text: str) -> str | None:
    """The `title:` of a YAML front matter block, without its quotes."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            return None
        if line.startswith("title:"):
            value = line[len("title:"):].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return value.strip() or None
    return None


def problem_title(text: str) -> str | None:
    """A doocs-leetcode problem's title without its number, from its linked first heading."""
    heading = next((line for line in text.splitlines() if line.startswith("# ")), None)
    match = LINKED_HEADING.match(heading or "")
    if not match:  # an index page ("# 基础算法通关"), not a problem
        return None
    title = PROBLEM_NUMBER.sub("", match["label"], count=1)
    title = title.replace("\U0001f512", "").strip()  # the lock on premium problems is no part of the title
    return title or None


def first_example(text: str) -> str | None:
    """A tldr page's first example description: "- Create an archive:" -> "Create an archive"."""
    for line in text.splitlines():
        if line.startswith("- "):
            return line[2:].strip().rstrip(":\uff1a").strip()  # \uff1a: the full-width colon
    return None


def command_words(title: str) -> set[str]:
    """The words of a command's name, and their parts split on '-': "docker-compose up" gives
    docker-compose, docker, compose, up."""
    words = set()
    for word in title.lower().split():
        words.add(word)
        words.update(part for part in word.split("-") if part)
    return words


def task_query(description: str, title: str) -> str | None:
    """The description with the command's own words taken out; None when fewer than 2 words remain
    (then the query would say little beyond the name)."""
    text = MNEMONIC.sub(r"\1", description.replace("`", ""))
    banned = command_words(title)
    kept = [w for w in text.split() if w.strip(WORD_EDGE_PUNCTUATION).lower() not in banned]
    kept = [w for w in kept if w.strip(WORD_EDGE_PUNCTUATION)]
    return " ".join(kept) if len(kept) >= 2 else None


def group_by_query(pairs: Iterable[tuple[str, str, str]]) -> dict[str, frozenset[str]]:
    """(query, identity, path) triples -> query -> paths. An identity (a title) says which paths answer
    the same thing; a query whose paths have different identities is ambiguous and is left out."""
    paths: dict[str, set[str]] = defaultdict(set)
    identities: dict[str, set[str]] = defaultdict(set)
    for query, identity, path in pairs:
        paths[query].add(path)
        identities[query].add(identity)
    return {q: frozenset(p) for q, p in paths.items() if len(identities[q]) == 1}


def sample_items(candidates: dict[str, frozenset[str]], n: int, seed: int) -> tuple[KnownItem, ...]:
    """n of the candidates (all when fewer), chosen by the seed, in the order drawn."""
    queries = sorted(candidates)
    chosen = random.Random(seed).sample(queries, min(n, len(queries)))
    return tuple(KnownItem(q, candidates[q]) for q in chosen)


def tldr_sets(pages: Path, n: int, seed: int, *, collection: str, names_set: str | None,
              tasks_set: str | None) -> list[KnownSet]:
    """Sets over one tldr pages folder (pages/ or a translation such as pages.es/): by command name
    (query "git rebase"), and by task (the first example's description without the command's words).
    Every page with the same title answers both: the same command on several platforms."""
    names: list[tuple[str, str, str]] = []
    tasks: list[tuple[str, str, str]] = []
    for path in markdown_files(pages):
        text = read_text(pages / path)
        title = first_heading(text)
        if not title:
            continue
        names.append((title, title, path))
        description = first_example(text)
        query = task_query(description, title) if description else None
        if query:
            tasks.append((query, title, path))
    by_title = group_by_query(names)
    out = []
    if names_set:
        out.append(KnownSet(names_set, collection, sample_items(by_title, n, seed)))
    if tasks_set:
        # A task query is answered by every page of its command, not only the page it came from.
        by_task = {q: by_title[title] for q, title in _query_titles(tasks).items()}
        out.append(KnownSet(tasks_set, collection, sample_items(by_task, n, seed)))
    return out


def _query_titles(pairs: list[tuple[str, str, str]]) -> dict[str, str]:
    titles: dict[str, set[str]] = defaultdict(set)
    for query, title, _ in pairs:
        titles[query].add(title)
    return {q: next(iter(t)) for q, t in titles.items() if len(t) == 1}


def leetcode_sets(root: Path, n: int, seed: int, *, collection: str) -> list[KnownSet]:
    """Problem titles, English (README_EN.md) and Chinese (README.md), without their numbers. The
    README in the other language of the same folder answers too."""
    by_language: dict[str, list[tuple[str, str, str]]] = {"README_EN.md": [], "README.md": []}
    for path in markdown_files(root):
        file_name = path.rsplit("/", 1)[-1]
        if file_name in by_language:
            title = problem_title(read_text(root / path))
            if title:
                by_language[file_name].append((title, title, path))
    existing = {path for pairs in by_language.values() for _, _, path in pairs}
    out = []
    for name, file_name in (("leetcode-en-titles", "README_EN.md"), ("leetcode-zh-titles", "README.md")):
        twin = "README.md" if file_name == "README_EN.md" else "README_EN.md"
        candidates = {}
        for query, paths in group_by_query(by_language[file_name]).items():
            twins = {p[: -len(file_name)] + twin for p in paths}
            candidates[query] = paths | frozenset(twins & existing)
        out.append(KnownSet(name, collection, sample_items(candidates, n, seed)))
    return out


def cpp_sets(docs: Path, n: int, seed: int, *, collection: str) -> list[KnownSet]:
    """cpp-docs pages by their front-matter title; every page with that title answers."""
    titles = []
    for path in markdown_files(docs):
        title = front_matter_title(read_text(docs / path))
        if title:
            titles.append((title, title, path))
    return [KnownSet("cpp-titles", collection, sample_items(group_by_query(titles), n, seed))]


def sample_documents(all_paths: Iterable[str], required: Iterable[str], n: int, seed: int) -> list[str]:
    """Every required path, then others drawn by the seed until there are n (sorted)."""
    must = set(required)
    others = sorted(set(all_paths) - must)
    random.Random(seed).shuffle(others)
    return sorted(must | set(others[: max(0, n - len(must))]))


# Metrics. `ranked` is the answer's paths in rank order (a path may come twice where a method returns
# more than one chunk of a document: ranks are then as the user sees them). All of them look at the
# first relevant path only: a known item is found once one of its acceptable answers is.


def first_relevant_rank(ranked: list[str], relevant: frozenset[str]) -> int | None:
    """1-based rank of the first relevant path, or None."""
    return next((i + 1 for i, path in enumerate(ranked) if path in relevant), None)


def reciprocal_rank(ranked: list[str], relevant: frozenset[str], k: int = 10) -> float:
    rank = first_relevant_rank(ranked[:k], relevant)
    return 1.0 / rank if rank else 0.0


def ndcg(ranked: list[str], relevant: frozenset[str], k: int = 10) -> float:
    """Binary nDCG@k of a known item: any relevant path is the answer, so the ideal ranking is one
    answer at rank 1 and the first relevant path found is what counts (1 / log2(1 + rank)); a second
    acceptable path (the other platform's page, the other language's README) adds nothing."""
    rank = first_relevant_rank(ranked[:k], relevant)
    return 1.0 / math.log2(rank + 1) if rank else 0.0


def item_scores(ranked: list[str], relevant: frozenset[str], recall_depth: int = 100) -> dict[str, float]:
    rank = first_relevant_rank(ranked, relevant)
    return {"hit@1": 1.0 if rank == 1 else 0.0, "mrr@10": reciprocal_rank(ranked, relevant),
            "ndcg@10": ndcg(ranked, relevant), "recall@100": 1.0 if rank and rank <= recall_depth else 0.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

