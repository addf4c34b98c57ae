"""What search needs from the rest of the daemon, as a port: the search package orchestrates a query
(filters, fusion, reranking, snippets) without knowing that actors answer these calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from pyroaring import BitMap

from qmdd.search.bm25index import ChunkHit
from qmdd.search.chunkdocs import NearChunk

T = TypeVar("T")


class Retrievers(Protocol):
    async def keywords(self, text: str, limit: int, collection_ids: list[int] | None, allowed: BitMap | None,
                       explain: bool = False) -> tuple[list[str], list[ChunkHit]]:
        """BM25: the query's terms and its best chunks."""
        ...

    async def keywords_then(self, text: str, limit: int, collection_ids: list[int] | None, allowed: BitMap | None,
                            explain: bool, then: Callable[[list[str], list[ChunkHit]], T]) -> T:
        """`then(terms, hits)` of `keywords`, run where the search ran (its worker thread, or the event
        loop for a small one): the next step of a search without a second thread hop."""
        ...

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        """One normalised query vector per text."""
        ...

    async def nearest(self, vectors: np.ndarray[Any, Any], limit: int, collection_ids: list[int] | None,
                      allowed: BitMap | None) -> list[list[NearChunk]]:
        """Per vector, its nearest `limit` chunks reduced to each document's best, best first."""
        ...

    async def nearest_then(self, vectors: np.ndarray[Any, Any], limit: int, collection_ids: list[int] | None,
                           allowed: BitMap | None, then: Callable[[list[list[NearChunk]]], T]) -> T:
        """`then` of `nearest`'s lists, run in the worker thread that searched (as `keywords_then`)."""
        ...

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float] | None:
        """Each text's relevance to the query by the cross-encoder, or None when none is configured."""
        ...
