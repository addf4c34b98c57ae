"""The messages actors take: the closed set of in-process requests, one frozen dataclass each.

These never go on the wire (the wire is `qmdd.protocol.wire`): they may carry channels, bitmaps and
numpy arrays. Every actor module and the method layer import them from here, so no actor imports
another to talk to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# --- indexer -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanCollections:
    """Indexer: rescan these collections (None: all); progress dicts go to `progress` if given."""

    names: list[str] | None = None
    progress: Any = None


@dataclass(frozen=True, slots=True)
class IndexPaths:
    """Indexer: bring these paths of one collection up to date (the watcher's changes: relpath → watchfiles
    change kind); `full` rescans the whole collection instead (start-up, a root back, a huge burst)."""

    collection_id: int
    changes: dict[str, int]
    full: bool = False


@dataclass(frozen=True, slots=True)
class AddCollection:
    path: str
    name: str
    masks: list[str]
    excludes: list[str]
    dry_run: bool = False  # every check, no write: the collection it would add


@dataclass(frozen=True, slots=True)
class RemoveCollection:
    name: str


@dataclass(frozen=True, slots=True)
class RenameCollection:
    old: str
    new: str
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class SetContext:
    collection: str | None
    prefix: str
    text: str | None  # None removes the context


@dataclass(frozen=True, slots=True)
class Cleanup:
    """Indexer: vacuum, drop stale problems and the vectors of models not in `keep_fingerprints`."""

    keep_fingerprints: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoreEmbeddings:
    """Indexer: persist vectors of embedded texts, keyed by text hash and model fingerprint, then hand
    them to the vectors actor to index."""

    fingerprint: str
    hashes: list[str]
    vectors: Any  # float32 array, one row per hash


@dataclass(frozen=True, slots=True)
class ChooseForEmbedding:
    """Indexer: record that the user chose to embed these collections (the embed jobs actor keeps them
    embedded)."""

    collection_ids: list[int]


# --- watcher -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncWatches:
    """Watcher: start or stop watches to match the collections in SQLite (after add/remove/rename)."""


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """Watcher: per-collection watch state, last change seen and counters."""


# --- BM25 and vectors ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplyChunks:
    """BM25 and vectors: index the added chunks and forget the removed ones. `prepared` holds the added
    chunks' term frequencies when the sender already tokenized them; otherwise they are read from SQLite."""

    added: list[int]
    removed: list[int]
    prepared: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class VerifyIndex:
    """BM25/vectors: reconcile the in-memory index with SQLite (after a start or a crash)."""


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    """BM25/vectors: write the snapshot if it is dirty (or `force`). Indexer: ask both to do so."""

    force: bool = False


@dataclass(frozen=True, slots=True)
class Bm25Query:
    text: str
    limit: int
    collection_ids: list[int] | None = None
    allowed: Any = None  # a pyroaring BitMap of chunk ids that may match (a path filter), or None for all
    explain: bool = False
    # The caller's next step, run on (terms, hits) where the search ran (its worker thread, or the event
    # loop for a small search), its result the reply: a thread hop cost a search more (~0.2 ms) than
    # re-scoring and rendering it. It must not raise (the method layer hands it over wrapped in
    # `outcome.capture`).
    then: Any = None


@dataclass(frozen=True, slots=True)
class ChunkCounts:
    """BM25: collection id -> how many of its chunks the index holds, now."""


@dataclass(frozen=True, slots=True)
class IndexEmbedded:
    """Vectors: these text hashes now have vectors in SQLite; index every chunk that carries one."""

    fingerprint: str
    hashes: list[str]
    vectors: Any


@dataclass(frozen=True, slots=True)
class SetFingerprint:
    """Vectors: the embedding model changed; serve (and rebuild from SQLite) this fingerprint's vectors."""

    fingerprint: str | None
    dims: int


@dataclass(frozen=True, slots=True)
class VectorQuery:
    """Vectors: the nearest `limit` chunks to each of `vectors`, each document's best only (one list of
    `NearChunk`s per vector, best first)."""

    vectors: Any
    limit: int
    collection_ids: list[int] | None = None
    allowed: Any = None
    then: Any = None  # as Bm25Query's: the caller's next step on the lists, in the same worker thread


@dataclass(frozen=True, slots=True)
class VectorCoverage:
    """Vectors: collection id -> how many of its chunks the index holds a vector for, now."""


# --- embedder ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedTexts:
    """Embedder: vectors (float32, L2-normalised, one row per text). `priority` is "query" (served
    first, batched within a millisecond) or "bulk" (indexing; yields to queries). `kind` says what the
    texts are, "query" (searches) or "passage" (the documents' chunks), for models that want each
    marked (e5's "query: " / "passage: " prefixes); empty: queries at query priority, else passages."""

    texts: list[str]
    priority: str = "query"
    kind: str = ""


@dataclass(frozen=True, slots=True)
class EmbedCounted:
    """Embedder: EmbedTexts answered with what a caller billing by tokens needs beside the vectors: an
    `Embedded` (the embeddings API of the HTTP door reports usage and the model that answered)."""

    texts: list[str]
    priority: str = "query"
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Embedded:
    """The answer to EmbedCounted: the vectors (as EmbedTexts'), the tokens the model read for them all
    (its prefixes and special tokens included, each text cut at its max length) and the model's name."""

    vectors: Any
    tokens: int
    model: str


@dataclass(frozen=True, slots=True)
class RerankPairs:
    """Embedder: relevance of each text to the query (0..1) by the cross-encoder in use, or None
    when no reranker is configured."""

    query: str
    texts: list[str]


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Embedder: the models in use, their fingerprint and batching statistics (loads nothing
    unless `load` is set; then a missing or broken model raises its typed error)."""

    load: bool = False


@dataclass(frozen=True, slots=True)
class UseModel:
    """Embedder: serve `role` with model `name` from now on (None: the default / no reranker)."""

    role: str
    name: str | None


# --- embed jobs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedCollections:
    """Embed jobs: embed every chunk without a vector for the model in use, of these collections (None:
    all), a page at a time, each page committed; the reply is the run's summary. Progress dicts go to
    `progress`; one with a "waiting" key says what the run waits for (the model, another run)."""

    collection_ids: list[int] | None
    progress: Any = None
    force: bool = False
    """Re-embed every chunk of these collections (`embed -f`), not only those without a vector."""
    page_chunks: int | None = None
    """At most this many chunks per page (`--max-docs-per-batch`); None: the actor's page."""
    page_bytes: int | None = None
    """At most this many bytes of chunk text per page (`--max-batch-mb`); None: no cap."""
    timeout_s: float | None = None
    """Stop after the page in progress once the run has lasted this long (`--timeout`); None: never."""


@dataclass(frozen=True, slots=True)
class SuspendSnapshots:
    """Vectors: while `suspended`, write no snapshot and drop the one on disk (an `embed -f` replaces
    vectors the snapshot holds: after a crash it must be rebuilt from SQLite, not trusted)."""

    suspended: bool


@dataclass(frozen=True, slots=True)
class ChunksIndexed:
    """Embed jobs: the watcher indexed new chunks in this collection (embedded in the background when the
    user chose the collection for embedding)."""

    collection_id: int


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Embed jobs: look at every chosen collection again (the embedding model in use changed: a run of the
    old one ended, and the new one's vectors may be missing where the old one's were not)."""


@dataclass(frozen=True, slots=True)
class EmbedJobsStatus:
    """Embed jobs: what the background embedder is doing (state, collection, counts, last run, last error)."""


@dataclass(frozen=True, slots=True)
class SetCollectionPlugins:
    """Indexer: the plugins a collection runs by default (its searches' scorers and filters, its
    documents' transforms)."""

    collection: str
    plugins: list[str]


# --- plugins ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstallPlugin:
    module: bytes
    """WebAssembly binary or WAT text."""
    where: str
    """The file it came from, for messages."""
    default_name: str
    name: str | None = None
    manifest: str | None = None
    replace: bool = False


@dataclass(frozen=True, slots=True)
class RemovePlugin:
    name: str


@dataclass(frozen=True, slots=True)
class SetPluginEnabled:
    name: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class ListPlugins:
    """Plugins: each installed plugin's manifest, hooks, state and statistics."""


@dataclass(frozen=True, slots=True)
class RunPlugin:
    """Plugins: one batch through one hook; the values, or PLUGIN_FAILED with the reason."""

    name: str
    hook: str
    query: str
    candidates: list[Any]
    """qmdd.sandbox.abi.Candidate"""
