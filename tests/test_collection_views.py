"""Collections as views of a folder: two collections of one root with other --mask patterns (and nested
roots) are allowed, as in qmd, and indexed, searched, read and watched apart; only a true duplicate is
refused. Search's path filter keeps to whole folder names. A dry run asks a running daemon to make its
checks, changing nothing, and starts none."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qmdctl.client import Client, call_collecting
from qmdd.protocol.errors import ErrorCode, QmddError
from tests.conftest import Env

DEADLINE_S = 15.0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "pages").mkdir(parents=True)
    (root / "pages.ru").mkdir()
    (root / "pages" / "home.md").write_text("# Home\n\nThe wombat page.\n")
    (root / "pages.ru" / "home.md").write_text("# Dom\n\nThe wombat page, in Russian.\n")
    (root / "pages2.md").write_text("# Pages two\n\nA wombat list.\n")
    (root / "notes.txt").write_text("Plain text about the wombat and the quokka.\n")
    return root


def files(client: Client, collection: str) -> set[str]:
    return {f["path"] for f in call_collecting(client, "ls", {"target": collection}, "files")["files"]}


def hits(client: Client, query: str, **params: Any) -> list[str]:
    """Every view's hit: a file two collections select is one page, which search shows once unless asked."""
    params = {"query": query, "limit": 50, "collapse": False, **params}
    return sorted(r["file"] for r in client.call("search", params)["results"])


def problem(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    proc = env.run(*args, "--json", check=False)
    return proc.returncode, json.loads(proc.stderr)


def wait_for(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_two_masks_on_one_folder_are_two_collections(env: Env, tree: Path) -> None:
    env.vars["QMDD_WATCH"] = "1"
    (tree / "pages" / "inner.txt").write_text("Text in the nested root's folder.\n")
    env.run("collection", "add", str(tree), "--name", "docs")
    env.run("collection", "add", str(tree), "--name", "text", "--mask", "*.txt")
    env.run("collection", "add", str(tree / "pages"), "--name", "pages")  # nested: allowed, as in qmd
    # The same folder with the same masks holds nothing new: refused, saying which collection has it.
    code, err = problem(env, "collection", "add", str(tree), "--name", "again")
    assert code == ErrorCode.COLLECTION_OVERLAP.spec.exit_code and err["code"] == "COLLECTION_OVERLAP"
    assert "docs" in err["detail"]
    with env.client() as client:
        assert files(client, "docs") == {"pages/home.md", "pages.ru/home.md", "pages2.md"}
        assert files(client, "text") == {"notes.txt", "pages/inner.txt"}
        assert files(client, "pages") == {"home.md"}
        assert hits(client, "quokka") == ["qmd://text/notes.txt"]
        assert hits(client, "quokka", collections=["docs"]) == []
        # A path inside the folder is read from the collection whose masks select it.
        assert client.call("get", {"target": str(tree / "notes.txt")})["file"] == "qmd://text/notes.txt"
        assert client.call("get", {"target": str(tree / "pages2.md")})["file"] == "qmd://docs/pages2.md"
        assert client.call("get", {"target": str(tree / "pages" / "home.md")})["file"] == "qmd://pages/home.md"
        # The innermost root (pages: *.md) does not select it: the outer view that does answers.
        inner = client.call("get", {"target": str(tree / "pages" / "inner.txt")})
        assert inner["file"] == "qmd://text/pages/inner.txt"

        # Each collection has its own watch: a change reaches every view that selects the file.
        for name in ("docs", "text", "pages"):
            wait_for(lambda n=name: next(c["watch"]["state"] for c in client.call("status")["collections"]
                                         if c["name"] == n) == "watching", f"{name} to be watched")
        (tree / "more.txt").write_text("The numbat, in text.\n")
        (tree / "pages" / "more.md").write_text("# More\n\nThe numbat, in markdown.\n")
        wait_for(lambda: hits(client, "numbat") == ["qmd://docs/pages/more.md", "qmd://pages/more.md",
                                                    "qmd://text/more.txt"], "every view to see its change")
        # Removing one view leaves the others.
        client.call("collection.remove", {"name": "text"})
        assert hits(client, "numbat") == ["qmd://docs/pages/more.md", "qmd://pages/more.md"]


def test_the_path_filter_keeps_to_whole_folder_names(env: Env, tree: Path) -> None:
    env.run("collection", "add", str(tree), "--name", "docs")
    with env.client() as client:
        everything = ["qmd://docs/pages.ru/home.md", "qmd://docs/pages/home.md", "qmd://docs/pages2.md"]
        assert hits(client, "wombat") == everything
        for prefix in ("pages/", "pages", "/pages/", "pages/home.md"):
            assert hits(client, "wombat", path_prefix=prefix) == ["qmd://docs/pages/home.md"], prefix
        assert hits(client, "wombat", path_prefix="pages.ru") == ["qmd://docs/pages.ru/home.md"]
        # The folder as `get` and `ls` name it: a qmd:// URI, collection/folder, or the folder on disk.
        for prefix in ("qmd://docs/pages", "docs/pages", str(tree / "pages"), str(tree / "pages") + "/"):
            assert hits(client, "wombat", path_prefix=prefix) == ["qmd://docs/pages/home.md"], prefix
        for nothing in ("pag", "qmd://docs/nowhere", str(tree.parent)):  # "pag": not a folder name of its own
            with pytest.raises(QmddError) as caught:
                hits(client, "wombat", path_prefix=nothing)
            assert caught.value.code is ErrorCode.PATH_NOT_FOUND, nothing
    assert [h["file"] for h in env.json("search", "wombat", "--path", "pages/")] == ["qmd://docs/pages/home.md"]
    here = env.run("search", "wombat", "--path", "./pages", "--json", cwd=tree)  # relative to where it runs
    assert [h["file"] for h in json.loads(here.stdout)] == ["qmd://docs/pages/home.md"]
    missing = env.run("search", "wombat", "--path", "nowhere", check=False)
    assert missing.returncode == ErrorCode.PATH_NOT_FOUND.spec.exit_code and "qmd://notes/ops" in missing.stderr


def test_collection_not_found_is_said_in_qmds_words(env: Env, tree: Path) -> None:
    env.run("collection", "add", str(tree), "--name", "docs")
    for args in (("collection", "remove", "nope"), ("search", "x", "-c", "nope"), ("update", "-c", "nope")):
        code, err = problem(env, *args)
        assert code == ErrorCode.COLLECTION_NOT_FOUND.spec.exit_code, args
        assert err["code"] == "COLLECTION_NOT_FOUND" and "Collection not found: nope" in err["detail"], args


def dry_run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qmdctl.main", *args, "--dry-run", "--json"], env=env.vars,
                          capture_output=True, text=True, timeout=60)


def test_a_dry_run_is_checked_by_the_running_daemon_and_changes_nothing(env: Env, tree: Path,
                                                                       tmp_path: Path) -> None:
    # No daemon running: a dry run starts none, and is checked locally only.
    plan = json.loads(dry_run(env, "collection", "rm", "docs").stdout)
    assert plan["method"] == "collection.remove" and "checked" not in plan
    assert env.daemon_pid() is None

    env.run("collection", "add", str(tree), "--name", "docs")
    env.run("context", "add", "qmd://docs/pages", "The English pages")
    with env.client() as client:
        before = (client.call("collection.list"), client.call("context.list"))
    failing = [
        (("collection", "add", str(tree), "--name", "twin"), ErrorCode.COLLECTION_OVERLAP),
        (("collection", "add", str(tmp_path / "missing"), "--name", "gone"), ErrorCode.PATH_NOT_FOUND),
        (("collection", "add", str(tmp_path), "--name", "docs"), ErrorCode.COLLECTION_EXISTS),
        (("collection", "rename", "nope", "other"), ErrorCode.COLLECTION_NOT_FOUND),
        (("collection", "rm", "nope"), ErrorCode.COLLECTION_NOT_FOUND),
        (("context", "add", "qmd://nope/x", "text"), ErrorCode.COLLECTION_NOT_FOUND),
        (("context", "rm", "qmd://docs/pages2"), ErrorCode.NOT_FOUND),
        (("model", "use", "no-such-model"), ErrorCode.MODEL_NOT_FOUND),
    ]
    for args, code in failing:
        proc = dry_run(env, *args)
        assert proc.returncode == code.spec.exit_code, (args, proc.stdout, proc.stderr)
        assert json.loads(proc.stderr)["code"] == code.value, args
    passing = [
        (("collection", "add", str(tree), "--name", "text", "--mask", "*.txt"), {"name": "text", "root": str(tree)}),
        (("collection", "rename", "docs", "site"), {"name": "site"}),
        (("collection", "rm", "docs"), {"name": "docs", "documents": 3}),
        (("context", "add", "qmd://docs/pages.ru", "Russian"), {"target": "qmd://docs/pages.ru"}),
        (("context", "rm", "qmd://docs/pages"), {"removed": True}),
    ]
    for args, would in passing:
        proc = dry_run(env, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        plan = json.loads(proc.stdout)
        assert plan["checked"] is True and would.items() <= plan["would"].items(), (args, plan)
    with env.client() as client:
        assert (client.call("collection.list"), client.call("context.list")) == before
