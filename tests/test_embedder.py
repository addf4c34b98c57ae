"""The embedder's batching engine with a stand-in model: order, token budget, query priority."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from qmdd import faults
from qmdd.actors.base import Mailbox
from qmdd.actors.embedder import EmbedderActor
from qmdd.actors.messages import EmbedTexts, ModelStatus
from qmdd.actors.supervisor import RestartPolicy, Supervisor
from qmdd.models.registry import ModelRegistry
from qmdd.paths import resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError


class FakeModel:
    """One token per word; the vector's first element is the text's token count. Each batch takes
    `delay` seconds of "compute" in its thread, like CTranslate2 (which releases the GIL)."""

    kind = "embedding"
    dims = 4
    size_bytes = 0
    self_check_cosine = None
    manifest = {"name": "all-minilm-l6-v2"}

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []  # token counts of each batch's texts
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [[7] * len(t.split()) for t in texts]

    def embed_ids(self, batch: Sequence[list[int]]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.batches.append([len(ids) for ids in batch])
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        out = np.zeros((len(batch), self.dims), dtype=np.float32)
        out[:, 0] = [len(ids) for ids in batch]
        return out


def embedder(tmp_path: Path, mailbox: Mailbox, model: FakeModel, *, batch_tokens: int = 64,
             workers: int = 1) -> EmbedderActor:
    return EmbedderActor(ModelRegistry(resolve_paths({"QMDD_HOME": str(tmp_path)})), mailbox, lambda _: model,
                         device="cpu", compute_type="int8", threads=1, workers=workers, batch_tokens=batch_tokens,
                         chunking="test", idle_unload_s=0)


async def start(nursery: trio.Nursery, tmp_path: Path, model: FakeModel, *, batch_tokens: int = 64,
                workers: int = 1) -> Mailbox:
    mailbox = Mailbox("embedder")
    actor = embedder(tmp_path, mailbox, model, batch_tokens=batch_tokens, workers=workers)
    await nursery.start(actor.run, mailbox)
    return mailbox


def texts(lengths: Sequence[int]) -> list[str]:
    return [" ".join(["w"] * n) for n in lengths]


def test_vectors_come_back_in_request_order_and_batches_respect_the_token_budget(tmp_path: Path) -> None:
    model = FakeModel(delay=0.001)
    lengths = [9, 1, 5, 3, 12, 2, 7, 4, 16, 6, 1, 8]

    async def main() -> Any:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                mailbox = await start(nursery, tmp_path, model, batch_tokens=16)
                vectors = await mailbox.call(EmbedTexts(texts(lengths), "bulk"))
                status = await mailbox.call(ModelStatus())
                nursery.cancel_scope.cancel()
        return vectors, status

    vectors, status = trio.run(main)
    assert vectors[:, 0].tolist() == lengths
    assert sum(len(b) for b in model.batches) == len(lengths)
    for batch in model.batches:  # padded size within budget, unless one text alone exceeds it
        assert len(batch) == 1 or max(batch) * len(batch) <= 16
    assert all(b == sorted(b) for b in model.batches)  # sorted by length: little padding
    assert status["batching"]["texts"]["bulk"] == len(lengths)


def test_a_query_overtakes_queued_bulk_work(tmp_path: Path) -> None:
    model = FakeModel(delay=0.03)

    async def main() -> tuple[float, float]:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                mailbox = await start(nursery, tmp_path, model, batch_tokens=8)
                bulk_done = trio.Event()
                started = time.monotonic()

                async def bulk() -> None:
                    await mailbox.call(EmbedTexts(texts([4] * 40), "bulk"))  # 20 batches of 2: ~0.6 s
                    bulk_done.set()

                nursery.start_soon(bulk)
                await trio.sleep(0.1)
                asked = time.monotonic()
                vector = await mailbox.call(EmbedTexts(["find me"], "query"))
                query_latency = time.monotonic() - asked
                assert vector[0, 0] == 2 and not bulk_done.is_set()
                await bulk_done.wait()
                nursery.cancel_scope.cancel()
        return query_latency, time.monotonic() - started

    query_latency, total = trio.run(main)
    assert query_latency < 0.15  # at most the bulk batch in flight, not the queue behind it
    assert total > 0.5


@pytest.mark.parametrize("query_recently", [False, True])
def test_while_queries_arrive_one_worker_stays_free_of_bulk_work(tmp_path: Path, query_recently: bool) -> None:
    model = FakeModel(delay=0.02)

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                mailbox = await start(nursery, tmp_path, model, batch_tokens=8, workers=2)
                if query_recently:
                    await mailbox.call(EmbedTexts(["hello"], "query"))
                    model.max_running = 0
                await mailbox.call(EmbedTexts(texts([4] * 24), "bulk"))
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert model.max_running == (1 if query_recently else 2)


@pytest.mark.parametrize("crashes", [1, 2])
def test_a_crash_mid_batch_is_retried_once_by_the_next_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                crashes: int) -> None:
    monkeypatch.setattr(faults, "_armed", {})
    faults.arm("embedder.bulk_batch", crashes)
    model = FakeModel(delay=0.001)

    async def main() -> tuple[Any, dict[str, Any]]:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(nursery, RestartPolicy(backoff_initial_s=0.001))
                mailbox = Mailbox("embedder")
                await supervisor.start_actor(mailbox, lambda: embedder(tmp_path, mailbox, model))
                try:
                    answer: Any = await mailbox.call(EmbedTexts(texts([3, 1, 2]), "bulk"))
                except QmddError as exc:
                    answer = exc.code
                # The crash that answered last reaches the supervisor after the reply: wait for the
                # instance after it, which the supervisor starts only once it has counted the restart.
                await mailbox.call(ModelStatus())
                stats = supervisor.statistics()["embedder"]
                nursery.cancel_scope.cancel()
        return answer, stats

    answer, stats = trio.run(main)
    assert stats["restarts"] == crashes
    if crashes == 1:
        assert answer[:, 0].tolist() == [3, 1, 2]  # answered by the next instance
    else:
        assert answer is ErrorCode.EMBEDDING_FAILED
