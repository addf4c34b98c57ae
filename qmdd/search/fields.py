"""What the BM25 index is fed for a chunk: term frequencies of its text plus weighted title,
heading and path terms (BM25F-style), and the document's *name keys*. Pure; used by the BM25 actor,
and by the indexer through the function the daemon hands it, so a batch is tokenized in the thread
that just read it.

Name keys make "the page called X" findable by X: a document's title and file stem, each analysed
like a query, become terms of their own: a mark, then the sorted distinct terms (`tar`, `git rebase`),
once as written and once stemmed. A query looks up the keys its own term sets would have, so a query
that is, or contains, a document's name finds that document by an exact lookup, whatever the text
around the name says. The marks are control characters, which the tokenizer never emits, so no query
word can match a key by accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import combinations

from qmdd.search.bm25index import IndexedChunk
from qmdd.search.tokenize import Tokenizer, TokenizerConfig
from qmdd.store.documents import ChunkText

# Bump whenever what a chunk is fed changes (fields, weights, name keys): it is part of the BM25
# snapshot's fingerprint, so an old snapshot is rebuilt rather than mixed with new terms.
FIELDS_VERSION = 2

def snapshot_meta(database_id: str, tokenizer: Tokenizer, k1: float, b: float) -> dict[str, str]:
    """What a BM25 snapshot must have been made with to be used as it is (else it is rebuilt)."""
    return {"database_id": database_id, "tokenizer": tokenizer.fingerprint, "fields": str(FIELDS_VERSION),
            "k1": repr(k1), "b": repr(b)}


# Integer field weights (BM25F-style): a query word in a title or heading says more about a chunk
# than the same word in passing. Title 2 measured best of 1/2/3/5 on the eval collections.
TITLE_WEIGHT = 2
HEADING_WEIGHT = 2
PATH_WEIGHT = 2

EXACT_MARK = "\x02"  # key of a name's terms as written (case-folded, not stemmed)
STEMMED_MARK = "\x03"  # key of its stemmed terms: "ports" and "port" share one
# A stemmed-only match is weaker evidence: `port` should find port.md before ports.md, and
# `glibtoolize` glibtoolize.md before glibtool.md, though each pair shares a stemmed name.
STEMMED_STRENGTH = 0.5
MAX_NAME_TERMS = 16  # longer titles are sentences, not names
_ALL_SUBSETS_UP_TO = 6  # queries this short look up every subset of their terms; longer ones, runs
_MAX_PART = 4  # the most terms of a name found inside a longer query
# Connectors between letters or digits that people also type as spaces: git-rebase, std_vector.
_SPACED_CONNECTOR = re.compile(r"(?<=[^\W_])[-_.](?=[^\W_])")
# A numbering before a name ("0001.Two Sum", "1. 两数之和", "01.02.Check Permutation") is not typed.
_NUMBERING = re.compile(r"\s*\d+(?:[.-]\d+)*[.):-]?\s*(?=\D)")
# Stems that name a folder's page rather than the page: the folder's name is the page's name.
_GENERIC_STEM = re.compile(r"(?i)(readme|index|_index)([-_.]\w{1,5})?")
_SURFACE = Tokenizer(TokenizerConfig(stem=False))


def name_key(mark: str, terms: Iterable[str]) -> str:
    return mark + " ".join(sorted(set(terms)))


def document_name_keys(tokenizer: Tokenizer, title: str, path: str) -> set[str]:
    """Keys of a document's title and file stem (its folder's name for a README or index page), as
    written, with connectors read as spaces, and without a leading numbering; each exact and stemmed."""
    folder, _, stem = path.rpartition("/")
    stem = stem.rpartition(".")[0] or stem
    if _GENERIC_STEM.fullmatch(stem):
        stem = folder.rpartition("/")[2]
    names = {title, stem, _NUMBERING.sub("", title, count=1), _NUMBERING.sub("", stem, count=1)}
    names |= {_SPACED_CONNECTOR.sub(" ", name) for name in names}
    keys = set()
    for name in filter(str.strip, names):
        for mark, analyser in ((EXACT_MARK, _SURFACE), (STEMMED_MARK, tokenizer)):
            terms = set(analyser.query_terms(name))
            if 0 < len(terms) <= MAX_NAME_TERMS:
                keys.add(name_key(mark, terms))
    return keys


def query_name_keys(tokenizer: Tokenizer, text: str) -> dict[str, tuple[float, tuple[str, ...]]]:
    """The name keys a query could mean -> (strength, the query terms, as `tokenizer` gives them, that
    the name covers). Each candidate name is every subset of a short query's terms, else every run of
    up to four consecutive terms, and always the whole query; looked up exact and stemmed."""
    surface = _SURFACE.query_terms(text)
    stemmed = {term: (tokenizer.query_terms(term) or [term])[0] for term in surface}
    if len(surface) <= _ALL_SUBSETS_UP_TO:
        parts: Iterable[tuple[str, ...]] = (c for n in range(1, len(surface) + 1) for c in combinations(surface, n))
    else:
        parts = [tuple(surface[i:i + n]) for n in range(1, _MAX_PART + 1) for i in range(len(surface) - n + 1)]
        parts.append(tuple(surface))
    keys: dict[str, tuple[float, tuple[str, ...]]] = {}
    for part in parts:
        if len(part) <= MAX_NAME_TERMS:
            covered = tuple(dict.fromkeys(stemmed[t] for t in part))
            keys[name_key(EXACT_MARK, part)] = (1.0, covered)
            keys.setdefault(name_key(STEMMED_MARK, covered), (STEMMED_STRENGTH, covered))
    return keys


def _weighted(tokenizer: Tokenizer, fields: tuple[tuple[int, str], ...]) -> dict[str, int]:
    tf: dict[str, int] = {}
    for weight, text in fields:
        for term, count in tokenizer.count_terms(text).items():
            tf[term] = tf.get(term, 0) + weight * count
    return tf


def index_chunks(tokenizer: Tokenizer, chunks: Iterable[ChunkText]) -> list[IndexedChunk]:
    """Chunk texts to weighted term frequencies. Title and path terms are shared by all chunks of a
    document and headings by runs of chunks: each is tokenized once per batch."""
    doc_fields: dict[int, dict[str, int]] = {}
    heading_fields: dict[tuple[tuple[str, ...], str], dict[str, int]] = {}
    out = []
    for chunk in chunks:
        tf = tokenizer.count_terms(chunk.text)
        length = sum(tf.values())
        shared = doc_fields.get(chunk.doc_id)
        if shared is None:
            folder, _, name = chunk.path.rpartition("/")
            path_text = f"{folder.replace('/', ' ')} {name.rpartition('.')[0] or name}"
            shared = doc_fields[chunk.doc_id] = _weighted(tokenizer, ((TITLE_WEIGHT, chunk.title),
                                                                       (PATH_WEIGHT, path_text)))
            shared.update(dict.fromkeys(document_name_keys(tokenizer, chunk.title, chunk.path), 1))
        headings = heading_fields.get((chunk.heading, chunk.title))
        if headings is None:
            # A heading that repeats the title (the usual `# Title` line) is boosted once, as the title.
            text = " ".join(h for h in chunk.heading if h != chunk.title)
            headings = heading_fields[chunk.heading, chunk.title] = _weighted(tokenizer, ((HEADING_WEIGHT, text),))
        for extra in (shared, headings):
            for term, count in extra.items():
                tf[term] = tf.get(term, 0) + count
        out.append(IndexedChunk(chunk.chunk_id, chunk.doc_id, chunk.collection_id, tf, length))
    return out


