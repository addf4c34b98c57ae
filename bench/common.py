"""What the benchmarks share: a throw-away daemon in its own QMDD_HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
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
