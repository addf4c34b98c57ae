"""Where and how the daemon runs its models, and so which vectors it serves: shared by the daemon's
wiring and the offline consistency check, which must agree on the fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import outcome

from qmdd.chunking import ChunkerConfig
from qmdd.config import Config
from qmdd.models.registry import DEFAULT_EMBEDDING, ModelRegistry
from qmdd.models.remote import RemoteSettings
from qmdd.models.runtime import cpu_threads, pick_device

log = logging.getLogger("qmdd.models")


@dataclass(frozen=True)
class EmbeddingRuntime:
    device: str
    compute_type: str
    threads: int
    workers: int
    chunking: str
    remote: RemoteSettings | None = None
    """Embeddings from this server (remote_url) in place of the selected local model."""

    def fingerprint(self, registry: ModelRegistry) -> str | None:
        """The fingerprint of the vectors to serve now (the selection may change at run time), or
        None when the selected model is unknown: then there is nothing to serve until it is fixed."""
        if self.remote is not None:
            return self.remote.fingerprint(self.chunking)
        choice = outcome.capture(registry.choice, registry.selection()["embedding"] or DEFAULT_EMBEDDING)
        if isinstance(choice, outcome.Error):
            log.warning("embedding model unavailable: %s", choice.error)
            return None
        return choice.unwrap().fingerprint(self.compute_type, self.chunking)


def embedding_runtime(config: Config, registry: ModelRegistry) -> EmbeddingRuntime:
    """Where and how models run, and the fingerprint of the vectors to serve. Loads no model: a
    missing one must not keep the daemon (and keyword search) from starting."""
    device, compute_type = pick_device(config.device)
    threads = config.embed_threads or cpu_threads()
    # Two CTranslate2 workers on a CPU: one can answer a query while the other runs a bulk batch
    # (throughput equals one worker with all threads, measured on 2 cores). A GPU takes one stream.
    workers = 1 if device == "cuda" or threads < 2 else 2
    chunker = ChunkerConfig()
    chunking = f"chunks{chunker.target_tokens}-{chunker.max_tokens}-{chunker.overlap_tokens}"
    return EmbeddingRuntime(device, compute_type, max(1, threads // workers), workers, chunking,
                            RemoteSettings.from_config(config))
