"""`qmdd worker --nats URL`: embed bulk batches for qmdd daemons, over NATS.

The worker loads the embedding model this machine's daemon would use (the same selection, models.json
in the data dir, and device rules), and answers on the subject of that model's fingerprint in one queue
group (models/natswire.py): only daemons whose vectors would be the same send it their batches. Pure
asyncio (nats-py has no trio client); batches are embedded in an executor, so the loop keeps answering
the server's pings. SIGTERM or SIGINT drains: no new batches are taken, those taken are answered.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from qmdd.config import Config, display_url, load_config
from qmdd.logs import setup_logging
from qmdd.models.natswire import QUEUE_GROUP, BadRequest, decode_request, encode_error, encode_reply, subject_for
from qmdd.models.placement import embedding_runtime
from qmdd.models.registry import DEFAULT_EMBEDDING, ModelRegistry, load_model, prefixed
from qmdd.models.runtime import LoadedModel
from qmdd.protocol.errors import ErrorCode, QmddError

log = logging.getLogger("qmdd.worker")

CONNECT_TIMEOUT_S = 5


def embed_texts(model: LoadedModel, texts: Sequence[str], kind: str, batch_tokens: int) -> tuple[np.ndarray, int]:
    """Blocking: (float32 rows for `texts` in order, tokens read). Sorted by length and cut into batches
    of at most `batch_tokens` padded tokens, as the daemon's embedder batches."""
    ids = model.token_ids(prefixed(model.manifest, kind, texts))
    vectors = np.zeros((len(ids), model.dims), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and len(ids[order[end]]) * (end - start + 1) <= batch_tokens:
            end += 1
        chosen = order[start:end]
        vectors[chosen] = model.embed_ids([ids[i] for i in chosen])
        start = end
    return vectors, sum(map(len, ids))


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.answered = 0
        self.texts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        import nats
        from nats import errors

        config = self.config
        url = display_url(config.embed_nats)
        registry = ModelRegistry(config.paths)
        runtime = await asyncio.to_thread(embedding_runtime, config, registry)
        name = registry.selection()["embedding"] or DEFAULT_EMBEDDING
        fingerprint = registry.choice(name).fingerprint(runtime.compute_type, runtime.chunking)
        try:
            client = await nats.connect(config.embed_nats, name=f"qmdd-worker {self.name}",
                                        connect_timeout=CONNECT_TIMEOUT_S, max_reconnect_attempts=1,
                                        allow_reconnect=True, error_cb=self._nats_error)
        except (TimeoutError, OSError, errors.Error) as exc:
            raise QmddError(ErrorCode.BACKEND_UNAVAILABLE, f"cannot reach NATS at {url}: {exc}",
                            hints=("Is nats-server running there, and its port open to this machine?",)) from None
        # One retry at start, so an unreachable server is a clear exit; once served, a restarted server
        # (or a moment without network) is waited for, however long: nats-py reads this at each reconnect.
        client.options["max_reconnect_attempts"] = -1
        executor = ThreadPoolExecutor(runtime.workers, thread_name_prefix="qmdd-embed")
        try:
            model = await asyncio.get_running_loop().run_in_executor(executor, partial(
                load_model, registry, name, device=runtime.device, compute_type=runtime.compute_type,
                threads=runtime.threads, workers=runtime.workers))
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
            subject = subject_for(fingerprint)
            subscription = await client.subscribe(subject, queue=QUEUE_GROUP,
                                                  cb=partial(self._take, model, executor))
            log.info("qmdd worker ready: %s on %s/%s (%d x %d threads), NATS %s, subject %s, fingerprint %s",
                     name, runtime.device, runtime.compute_type, runtime.workers, runtime.threads, url, subject,
                     fingerprint)
            await stop.wait()
            log.info("draining: no new batches; answering the %d taken", len(self._tasks))
            await subscription.drain()
            await asyncio.gather(*self._tasks)
            await client.flush()
        finally:
            if not client.is_closed:
                await client.close()
            executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped: answered %d batches, %d texts", self.answered, self.texts)

    async def _nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    async def _take(self, model: LoadedModel, executor: ThreadPoolExecutor, message: Any) -> None:
        """nats-py runs one callback at a time per subscription: each batch gets a task of its own, so the
        executor's threads all work while more batches arrive."""
        task = asyncio.create_task(self._answer(model, executor, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, model: LoadedModel, executor: ThreadPoolExecutor, message: Any) -> None:
        from nats import errors

        try:
            texts, kind = decode_request(message.data)
            log.debug("took %d %s texts", len(texts), kind)
            vectors, tokens = await asyncio.get_running_loop().run_in_executor(
                executor, embed_texts, model, texts, kind, self.config.embed_batch_tokens)
            reply = encode_reply(vectors, tokens, self.name)
            self.answered += 1
            self.texts += len(texts)
            log.debug("answered %d %s texts (%d tokens)", len(texts), kind, tokens)
        except BadRequest as exc:
            reply = encode_error(ErrorCode.INVALID_INPUT.value, str(exc))
        except QmddError as exc:
            reply = encode_error(exc.code.value, exc.message)
        except (RuntimeError, ValueError, MemoryError) as exc:  # CTranslate2's, on texts it cannot run
            log.warning("embedding failed: %r", exc)
            reply = encode_error(ErrorCode.EMBEDDING_FAILED.value, str(exc))
        try:
            await message.respond(reply)
        except errors.Error as exc:  # the daemon resends what it gets no answer to
            log.warning("reply lost: %s", exc)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qmdd worker", description="embed bulk batches for qmdd daemons over "
                                     "NATS, with the model this machine's daemon would use")
    parser.add_argument("--nats", metavar="URL", default=None,
                        help="the NATS server, e.g. nats://10.0.0.5:4222 (default: the embed_nats setting)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    args = parser.parse_args(argv)
    try:
        # remote_url off: a worker serves the local model, whatever this machine's daemon embeds with.
        config = load_config({"log_level": args.log_level, "embed_nats": args.nats, "remote_url": ""},
                             flags={"embed_nats": "--nats"})
        setup_logging(config.log_level, config.log_format)
        if not config.embed_nats:
            raise QmddError(ErrorCode.CONFIG_ERROR, "no NATS server given",
                            hints=("qmdd worker --nats nats://HOST:4222 (or set embed_nats).",))
        try:
            import nats  # noqa: F401 -- only to say so before anything else is done
        except ImportError:
            raise QmddError(ErrorCode.CONFIG_ERROR, "nats-py is not installed",
                            hints=("pip install 'qmdd[nats]'",)) from None
        asyncio.run(Worker(config).serve())
    except KeyboardInterrupt:
        return 130
    except QmddError as exc:
        sys.stderr.write(f"qmdd worker: {exc.code}: {exc.message}\n")
        for hint in exc.hints:
            sys.stderr.write(f"  hint: {hint}\n")
        return exc.code.spec.exit_code
    return 0
