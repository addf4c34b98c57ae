"""Offline consistency check of a stopped daemon's index: SQLite against the files, SQLite against
itself, and the BM25 and vector snapshots against SQLite.

    python -m qmdd.consistency [--mode strict|partial] [--snapshots-current] [--rechunk N] [--json]

`strict` is for an index after an update ran to completion: every selected file is indexed exactly
once and matches its file, and the snapshots are current. `partial` is for an index right after a
crash: an update may be half done, so documents may lag behind their files and snapshots behind
SQLite, but every stored document must be one complete version and nothing may be corrupt.

Findings come in two kinds. Problems are states the daemon would not repair by itself (corruption,
lost or duplicated documents, an index serving what SQLite does not hold). Notices are states it
repairs on its own: a snapshot it rebuilds or reconciles on start, files the next update indexes.
Exit status: 0 consistent, 1 problems found, 2 not checked (a daemon holds the index, or none exists).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from collections.abc import Iterator

from qmdd.config import load_config
from qmdd.consistency.report import (
    EXAMPLES,
    EXIT_CONSISTENT,
    EXIT_INCONSISTENT,
    EXIT_NOT_CHECKED,
    Finding,
    Mode,
    NotCheckable,
    Report,
)
from qmdd.consistency.snapshots import check_bm25, check_vectors
from qmdd.consistency.sqlite_checks import check_sqlite, check_tree
from qmdd.ownfiles import open_lock_file
from qmdd.paths import Paths
from qmdd.store import walguard
from qmdd.store.db import connect

__all__ = ["EXAMPLES", "EXIT_CONSISTENT", "EXIT_INCONSISTENT", "EXIT_NOT_CHECKED", "Finding", "Mode", "NotCheckable",
           "Report", "check_index"]


def check_index(env: dict[str, str] | None = None, *, mode: Mode = "strict", snapshots_current: bool | None = None,
                rechunk: int | None = None, vector_sample: int = 64, seed: int = 0) -> Report:
    """Check the index of the daemon configured by `env` (default: this process's environment).

    `rechunk` re-reads and re-chunks that many up-to-date documents (None: all) and compares every
    stored chunk; `vector_sample` stored vectors are compared with SQLite's. Raises NotCheckable."""
    config = load_config(env=env)
    paths = config.paths
    if not paths.database.is_file():
        raise NotCheckable(f"no index at {paths.database}")
    current = mode == "strict" if snapshots_current is None else snapshots_current
    report = Report(str(paths.data_dir), mode, current)
    rng = random.Random(seed)
    shm_left = walguard.shm_without_wal(paths.database)  # before a connection touches the WAL
    with _index_lock(paths), contextlib.closing(connect(paths.database, readonly=True)) as conn:
        lost = walguard.confirm_loss(conn, paths.database, shm_left)
        if lost:
            report.add(True, "wal_lost", "the last run's write-ahead log is gone: committed changes are lost "
                       "(the next daemon start registers lost collections again and rescans)", lost)
        facts = check_sqlite(conn, report)
        check_tree(conn, report, config, facts, mode == "strict", rechunk, rng)
        check_bm25(report, config, facts, current)
        check_vectors(conn, report, config, facts, current, vector_sample, rng)
    for leftover in sorted(paths.data_dir.glob("*.tmp*")):
        report.add(False, "snapshot_temp_file", "a snapshot write interrupted by a crash left its temp file "
                   "(harmless: the daemon deletes it when it next starts)",
                   f"{leftover.name}: {leftover.stat().st_size} bytes")
    return report


@contextlib.contextmanager
def _index_lock(paths: Paths) -> Iterator[None]:
    """Take the data dir's instance lock (as qmdd.transports.listener does), so no daemon changes the index
    while it is checked; one that starts meanwhile exits with DAEMON_RUNNING."""
    fd, _replaced = open_lock_file(str(paths.index_lock))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NotCheckable(f"a daemon is using {paths.data_dir}: stop it first (`qmdctl daemon stop`)") from None
        yield
    finally:
        os.close(fd)
