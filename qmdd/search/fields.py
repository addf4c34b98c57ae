"""What the BM25 index is fed for a chunk: term frequencies of its text plus weighted title,
heading and path terms (BM25F-style). Pure; used by the BM25 actor, and by the indexer through
the function the daemon hands it, so a batch is tokenized in the thread that just read it."""

from __future__ import annotations

from collections.abc import Iterable

from qmdd.search.bm25index import IndexedChunk
from qmdd.search.tokenize import Tokenizer
from qmdd.store.documents import ChunkText

# Integer field weights (BM25F-style): a query word in a title or heading says more about a chunk
# than the same word in passing. Title 2 measured best of 1/2/3/5 on the eval collections.
TITLE_WEIGHT = 2
HEADING_WEIGHT = 2
PATH_WEIGHT = 2


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


