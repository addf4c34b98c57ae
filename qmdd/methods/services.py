"""What the methods are built from: the configuration, a read connection, the actors' mailboxes, the
supervisor's view of them, and the few daemon-wide facts a method reports."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from qmdd.actors.base import CatchUp, Generation, Mailbox
from qmdd.actors.supervisor import Supervisor
from qmdd.config import Config
from qmdd.methods.cache import GenerationMemo, ResultCache
from qmdd.methods.metrics import Metrics
from qmdd.models.registry import ModelRegistry
from qmdd.search.tokenize import Tokenizer, TokenizerConfig

READ_LIMITER_TOKENS = 4


@dataclass(frozen=True)
class Mailboxes:
    indexer: Mailbox
    bm25: Mailbox
    vectors: Mailbox
    embedder: Mailbox
    watcher: Mailbox
    embed_jobs: Mailbox
    plugins: Mailbox


@dataclass
class Services:
    config: Config
    reader: sqlite3.Connection
    actors: Mailboxes
    supervisor: Supervisor
    registry: ModelRegistry
    shutdown: trio.Event
    tokenizer: Tokenizer
    started_at: float = field(default_factory=time.time)
    files: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(READ_LIMITER_TOKENS))
    """Document reads from disk, at most this many at once."""
    door_statistics: Callable[[], dict[str, Any]] = dict
    """The doors' counters for `status` (connections, requests, errors), set once the doors exist."""
    metrics: Metrics = field(default_factory=Metrics)
    generation: Generation = field(default_factory=Generation)
    """Advanced by the BM25 and vectors actors after each change they apply."""
    cache: ResultCache = field(default_factory=lambda: ResultCache(0, 0.0))
    memo: GenerationMemo = field(default_factory=GenerationMemo)
    catch_up: CatchUp = field(default_factory=lambda: CatchUp(Generation()))
    """The collections still being rescanned since the daemon started (`qmdd.methods.freshness`)."""

    def index_generation(self) -> tuple[int, int]:
        """Moves whenever what a search can see may have changed (see qmdd.methods.cache)."""
        version: int = self.reader.execute("PRAGMA data_version").fetchone()[0]
        return version, self.generation.value


def make_services(config: Config, reader: sqlite3.Connection, actors: Mailboxes, supervisor: Supervisor,
                  registry: ModelRegistry, shutdown: trio.Event, generation: Generation,
                  catch_up: CatchUp) -> Services:
    return Services(config, reader, actors, supervisor, registry, shutdown,
                    Tokenizer(TokenizerConfig(stem=config.stem)), generation=generation,
                    cache=ResultCache(config.cache_entries, config.cache_ttl_s), catch_up=catch_up)
