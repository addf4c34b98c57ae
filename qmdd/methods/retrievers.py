"""The search port (`qmdd.search.ports.Retrievers`) answered by the BM25, embedder and vectors actors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np
import outcome
from pyroaring import BitMap

from qmdd.actors.messages import Bm25Query, EmbedTexts, RerankPairs, VectorQuery
from qmdd.methods.services import Mailboxes
from qmdd.search.bm25index import ChunkHit
from qmdd.search.chunkdocs import NearChunk

T = TypeVar("T")


class ActorRetrievers:
    def __init__(self, actors: Mailboxes) -> None:
        self._actors = actors

    async def keywords(self, text: str, limit: int, collection_ids: list[int] | None, allowed: BitMap | None,
                       explain: bool = False) -> tuple[list[str], list[ChunkHit]]:
        found: tuple[list[str], list[ChunkHit]] = await self._actors.bm25.call(
            Bm25Query(text, limit, collection_ids=collection_ids, allowed=allowed, explain=explain))
        return found

    async def keywords_then(self, text: str, limit: int, collection_ids: list[int] | None, allowed: BitMap | None,
                            explain: bool, then: Callable[[list[str], list[ChunkHit]], T]) -> T:
        done: outcome.Outcome[T] = await self._actors.bm25.call(
            Bm25Query(text, limit, collection_ids=collection_ids, allowed=allowed, explain=explain,
                      then=_captured(then)))
        return done.unwrap()

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        vectors: np.ndarray[Any, Any] = await self._actors.embedder.call(EmbedTexts(list(texts), "query"))
        return vectors

    async def nearest(self, vectors: np.ndarray[Any, Any], limit: int, collection_ids: list[int] | None,
                      allowed: BitMap | None) -> list[list[NearChunk]]:
        found: list[list[NearChunk]] = await self._actors.vectors.call(
            VectorQuery(vectors, limit, collection_ids=collection_ids, allowed=allowed))
        return found

    async def nearest_then(self, vectors: np.ndarray[Any, Any], limit: int, collection_ids: list[int] | None,
                           allowed: BitMap | None, then: Callable[[list[list[NearChunk]]], T]) -> T:
        done: outcome.Outcome[T] = await self._actors.vectors.call(
            VectorQuery(vectors, limit, collection_ids=collection_ids, allowed=allowed, then=_captured(then)))
        return done.unwrap()

    async def rerank(self, query: str, texts: Sequence[str]) -> list[float] | None:
        scores: list[float] | None = await self._actors.embedder.call(RerankPairs(query, list(texts)))
        return scores


def _captured(then: Callable[..., T]) -> Callable[..., outcome.Outcome[T]]:
    """The caller's step as an actor runs it: its failure is captured and becomes the caller's error
    (unwrapped here), never the actor's, which would then be restarted."""
    return partial(outcome.capture, then)
