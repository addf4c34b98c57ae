"""qmd's global `--index NAME`: named indexes side by side, each its own data directory, socket and daemon;
and `qmdctl init`, a project folder's own index named in `.qmd/qmdd-index`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qmdctl.fastargs import UsageError
from qmdctl.indexes import select_index
from qmdd.paths import resolve_paths, socket_path
from qmdd.protocol.errors import QmddError
from tests.conftest import Env


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "../x", "-rf", "a b", "x\n", "n" * 65, "é\u202e"])
def test_index_names_that_are_not_one_plain_name_are_refused(name: str) -> None:
    with pytest.raises(QmddError):
        resolve_paths({"QMDD_HOME": "/tmp/h", "QMDD_INDEX": name} if name else {"QMDD_INDEX": "/"})
    with pytest.raises(UsageError):
        select_index(["--index", name, "status"], {})


def test_a_named_index_has_its_own_data_dir_and_socket_and_the_default_keeps_its_paths() -> None:
    plain = resolve_paths({"QMDD_HOME": "/tmp/h"})
    assert (str(plain.data_dir), str(plain.socket)) == ("/tmp/h/data", "/tmp/h/run/qmdd.sock")
    assert resolve_paths({"QMDD_HOME": "/tmp/h", "QMDD_INDEX": "index"}).socket == plain.socket
    work = resolve_paths({"QMDD_HOME": "/tmp/h", "QMDD_INDEX": "work"})
    assert str(work.data_dir) == "/tmp/h/data/indexes/work"
    assert (str(work.socket), str(work.pid_file)) == ("/tmp/h/run/qmdd-work.sock", "/tmp/h/run/qmdd-work.pid")
    assert socket_path({"QMDD_HOME": "/tmp/h", "QMDD_INDEX": "work"}) == str(work.socket)
    assert work.model_cache == plain.model_cache and work.config_file == plain.config_file


def test_index_is_taken_anywhere_before_a_double_dash_like_qmd() -> None:
    env: dict[str, str] = {}
    assert select_index(["search", "x", "--index=work", "-n", "3"], env) == ["search", "x", "-n", "3"]
    assert env["QMDD_INDEX"] == "work"
    env = {}
    assert select_index(["--index", "w2", "search", "--", "--index", "y"], env) == ["search", "--", "--index", "y"]
    assert env["QMDD_INDEX"] == "w2"
    with pytest.raises(UsageError):
        select_index(["status", "--index"], {})


def test_two_named_indexes_serve_side_by_side(env: Env, notes: Path) -> None:
    env.run("--index", "work", "collection", "add", str(notes), "--name", "notes")
    assert [c["name"] for c in env.json("--index", "work", "collection", "list")] == ["notes"]
    assert env.json("collection", "list") == []  # the default index knows nothing of it
    assert env.json("search", "gnome", "--index", "work")[0]["file"] == "qmd://notes/alpha.md"
    work = env.json("--index", "work", "daemon", "status")
    default = env.json("daemon", "status")
    assert work["socket"].endswith("/qmdd-work.sock") and default["socket"].endswith("/qmdd.sock")
    assert work["pid"] != default["pid"]
    env.run("--index", "work", "daemon", "stop")


def test_a_bad_index_name_is_a_usage_error_before_anything_runs(env: Env) -> None:
    proc = env.run("--index", "../../etc", "status", "--json", check=False)
    assert proc.returncode == 2
    assert json.loads(proc.stdout or proc.stderr)["code"] == "USAGE_ERROR"
    assert not (env.home / "etc").exists() and env.daemon_pid() is None


def test_init_makes_the_folder_its_own_index_used_in_it_and_below(env: Env, notes: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "docs").mkdir(parents=True)
    (project / "docs" / "a.md").write_text("# Project\n\nThe zanzibar protocol.\n")
    made = env.json("init", cwd=project)
    assert made["created"] and made["index"].startswith("proj-")
    assert (project / ".qmd" / "qmdd-index").read_text().strip() == made["index"]
    assert env.json("init", cwd=project)["created"] is False  # again: the same index
    env.run("collection", "add", ".", "--name", "proj", cwd=project)
    assert env.json("search", "zanzibar", cwd=project / "docs")[0]["file"] == "qmd://proj/docs/a.md"
    assert env.json("collection", "list") == []  # outside the project: the default index
    assert env.json("collection", "list", "--index", made["index"])[0]["name"] == "proj"
    env.run("daemon", "stop", cwd=project)


def test_init_refuses_the_home_folder_and_markers_that_are_not_names(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env.vars["HOME"] = str(home)
    proc = env.run("init", "--json", cwd=home, check=False)
    assert proc.returncode == 10 and json.loads(proc.stdout or proc.stderr)["code"] == "INVALID_INPUT"
    assert not (home / ".qmd").exists()
    clone = tmp_path / "clone"
    (clone / ".qmd").mkdir(parents=True)
    (clone / ".qmd" / "qmdd-index").write_text("../../elsewhere\n")
    proc = env.run("status", "--json", cwd=clone, check=False)
    assert proc.returncode == 2 and "does not name an index" in proc.stdout + proc.stderr
    assert env.daemon_pid() is None


def test_the_project_marker_is_found_from_below(tmp_path: Path) -> None:
    (tmp_path / ".qmd").mkdir()
    (tmp_path / ".qmd" / "qmdd-index").write_text("proj-1\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    env: dict[str, str] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path / "a" / "b")
    try:
        select_index(["status"], env)
        assert env["QMDD_INDEX"] == "proj-1"
        env = {"QMDD_INDEX": "mine"}  # the environment's choice wins over the marker
        select_index(["status"], env)
        assert env["QMDD_INDEX"] == "mine"
    finally:
        os.chdir(cwd)


def test_a_marker_planted_by_another_user_or_as_a_link_is_passed_over(tmp_path: Path) -> None:
    from qmdctl.indexes import project_index

    (tmp_path / ".qmd").mkdir()
    (tmp_path / "proj" / ".qmd").mkdir(parents=True)
    planted = tmp_path / "proj" / ".qmd" / "qmdd-index"
    (tmp_path / ".qmd" / "qmdd-index").write_text("outer\n")
    planted.symlink_to(tmp_path / ".qmd" / "qmdd-index")
    assert project_index(str(tmp_path / "proj")) == "outer"  # the link is skipped, the real file above used
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    planted.unlink()
    planted.write_text("theirs\n")
    os.chown(planted, 4321, 4321)
    assert project_index(str(tmp_path / "proj")) == "outer"
