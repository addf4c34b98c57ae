"""What the benchmarks share: a throw-away daemon in its own QMDD_HOME."""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qmdctl.client import Client
from qmdd.paths import resolve_paths


@contextmanager
def bench_daemon(prefix: str, **env: str) -> Iterator[tuple[Client, Path]]:
    """A client of a fresh daemon (started on first call) and its home; stopped and removed after."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    environ = {**os.environ, "QMDD_HOME": str(home / "home"), **env}
    client = Client(resolve_paths(environ), environ=environ)
    try:
        yield client, home
    finally:
        try:
            client.call("shutdown")
        finally:
            client.close()
            time.sleep(1)
            shutil.rmtree(home, ignore_errors=True)


def sample_queries(pages: Iterable[Path], n: int, seed: int) -> list[str]:
    """1-4 word queries taken from page titles and descriptions, as people search tldr."""
    rng = random.Random(seed)
    words: list[list[str]] = []
    for page in pages:
        lines = page.read_text(encoding="utf-8", errors="replace").splitlines()
        tokens = re.findall(r"[A-Za-z][A-Za-z0-9-]+", " ".join(line.lstrip("#> ").strip() for line in lines[:4]))
        if tokens:
            words.append(tokens)
    queries = []
    for _ in range(n):
        tokens = rng.choice(words)
        k = rng.randint(1, min(4, len(tokens)))
        start = rng.randint(0, len(tokens) - k)
        queries.append(" ".join(tokens[start:start + k]))
    return queries
