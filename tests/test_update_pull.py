"""`qmdctl update --pull`: `git pull --ff-only` in each collection's work tree, then the rescan; a failed
pull is a warning and the rescan happens all the same. Real git repositories: a bare one and clones."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from qmdctl.gitpull import git_environment
from tests.conftest import Env

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder,
                          check=True, capture_output=True, text=True, env=git_environment()).stdout


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    """(a clone the collection indexes, another clone to push from)."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", str(bare), str(seed))
    (seed / "one.md").write_text("# One\n\nThe first note.\n")
    git(seed, "add", ".")
    git(seed, "commit", "-m", "one")
    git(seed, "push", "origin", "HEAD:main")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-b", "main", str(bare), str(clone))
    return clone, seed


def test_pull_brings_new_commits_in_before_the_rescan(env: Env, repos: tuple[Path, Path], tmp_path: Path) -> None:
    clone, seed = repos
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "p.md").write_text("# Plain\n")
    env.run("collection", "add", str(clone), "--name", "repo")
    env.run("collection", "add", str(plain), "--name", "plain")
    (seed / "two.md").write_text("# Two\n\nThe quokka arrived by git pull.\n")
    git(seed, "add", ".")
    git(seed, "commit", "-m", "two")
    git(seed, "push", "origin", "HEAD:main")
    # A hostile environment must not send git elsewhere: GIT_DIR would make it pull into the seed.
    env.vars.update(GIT_DIR=str(seed / ".git"), GIT_WORK_TREE=str(seed))
    summaries = {s["collection"]: s for s in env.json("update", "--pull")}
    assert summaries["repo"]["pull"]["status"] == "pulled" and summaries["repo"]["indexed"] == 1
    assert summaries["repo"]["pull"]["work_tree"] == str(clone)
    assert summaries["plain"]["pull"] == {"root": str(plain), "status": "skipped", "message": "not in a git work tree"}
    assert (clone / "two.md").exists()
    assert env.json("search", "quokka")[0]["file"] == "qmd://repo/two.md"


def test_a_failed_pull_is_a_warning_and_the_rescan_still_runs(env: Env, repos: tuple[Path, Path]) -> None:
    clone, _ = repos
    env.run("collection", "add", str(clone), "--name", "repo")
    git(clone, "remote", "set-url", "origin", str(clone.parent / "gone.git"))
    (clone / "local.md").write_text("# Local\n\nWritten here, not pulled.\n")
    proc = env.run("update", "--pull", "-c", "repo", "--json")
    [summary] = json.loads(proc.stdout)
    assert summary["pull"]["status"] == "failed" and summary["pull"]["message"]
    assert summary["indexed"] == 1  # local.md: the rescan ran
    assert "git pull failed" in proc.stderr


def test_update_without_pull_runs_no_git(env: Env, repos: tuple[Path, Path]) -> None:
    clone, seed = repos
    env.run("collection", "add", str(clone), "--name", "repo")
    (seed / "three.md").write_text("# Three\n")
    git(seed, "add", ".")
    git(seed, "commit", "-m", "three")
    git(seed, "push", "origin", "HEAD:main")
    [summary] = env.json("update")
    assert "pull" not in summary and not (clone / "three.md").exists()


def test_git_environment_drops_what_redirects_git() -> None:
    env = git_environment({"GIT_DIR": "/x", "GIT_CONFIG_COUNT": "1", "GIT_EXEC_PATH": "/evil", "LD_PRELOAD": "/e.so",
                           "GIT_SSH_COMMAND": "ssh -i k", "HOME": "/h"})
    assert env == {"GIT_SSH_COMMAND": "ssh -i k", "HOME": "/h", "GIT_TERMINAL_PROMPT": "0"}
