"""Every setting is checked against its allowed range, and every new collection name against one rule."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

from qmdd.config import load_config
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store.db import connect, transaction
from tests.conftest import Env


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("frame_stall_s", "-1", "from 0.1 to 3600"),
    ("frame_stall_s", "0", "from 0.1 to 3600"),
    ("k1", "nan", "from 0 to 10"),
    ("b", "inf", "from 0 to 1"),
    ("b", "1.5", "from 0 to 1"),
    ("log_level", "bogus", "one of debug, info, warning, error"),
    ("max_file_bytes", "0", "whole number from 1 to"),
    ("max_file_bytes", "-5", "whole number from 1 to"),
    ("index_batch_files", "0", "whole number from 1 to"),
    ("shutdown_grace_s", "-inf", "from 0 to 3600"),
    ("watch_poll_s", "0", "from 0.1 to 3600"),
    ("model_idle_unload_s", "nan", "from 0 to"),
    ("embed_threads", "-1", "from 0 to 1024"),
    ("device", "tpu", "one of auto, cpu, cuda"),
    ("watch", "maybe", "true or false"),
])
def test_a_bad_setting_is_a_config_error_naming_the_key_and_its_range(tmp_path: Path, key: str, value: str,
                                                                      allowed: str) -> None:
    with pytest.raises(QmddError) as raised:
        load_config(env={"QMDD_HOME": str(tmp_path), f"QMDD_{key.upper()}": value})
    assert raised.value.code is ErrorCode.CONFIG_ERROR
    assert f"QMDD_{key.upper()}: {key} = {value!r}" in raised.value.message and allowed in raised.value.message
    assert raised.value.details["key"] == key


def test_the_config_file_is_held_to_the_same_ranges_and_types(tmp_path: Path) -> None:
    for line, key in (("k1 = nan", "k1"), ("b = inf", "b"), ("k1 = true", "k1"),
                      ("max_file_bytes = 0", "max_file_bytes"), ("frame_stall_s = -1.0", "frame_stall_s"),
                      ("log_level = 3", "log_level")):
        (tmp_path / "config.toml").write_text(line + "\n")
        with pytest.raises(QmddError) as raised:
            load_config(env={"QMDD_HOME": str(tmp_path)})
        assert raised.value.code is ErrorCode.CONFIG_ERROR and raised.value.details["key"] == key, line
    (tmp_path / "config.toml").write_text("daemon = 3\n")
    with pytest.raises(QmddError, match="must be a table"):
        load_config(env={"QMDD_HOME": str(tmp_path)})


def test_good_settings_still_load(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[daemon]\nk1 = 2\nwatch = false\nlog_level = 'WARNING'\n")
    config = load_config(env={"QMDD_HOME": str(tmp_path), "QMDD_B": "1", "QMDD_FRAME_STALL_S": "0.5",
                              "QMDD_MAX_FILE_BYTES": "1024", "QMDD_AUTO_EMBED": "off"})
    assert (config.k1, config.b, config.watch, config.log_level) == (2.0, 1.0, False, "warning")
    assert (config.frame_stall_s, config.max_file_bytes, config.auto_embed) == (0.5, 1024, False)


@pytest.mark.parametrize("setting", ["QMDD_FRAME_STALL_S=-1", "QMDD_K1=nan", "QMDD_LOG_LEVEL=bogus"])
def test_the_daemon_refuses_a_bad_setting_with_its_exit_code_and_no_traceback(env: Env, setting: str) -> None:
    key, _, value = setting.partition("=")
    proc = subprocess.run([sys.executable, "-m", "qmdd"], env={**env.vars, key: value}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == ErrorCode.CONFIG_ERROR.spec.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr and f"qmdd: CONFIG_ERROR: {key}:" in proc.stderr
    assert "hint:" in proc.stderr


BAD_NAMES = ["evil\u202etxt.md", "-rf", "$(touch pwned)", "name:1", ".hidden", "a/b", "tab\tname", "#abc",
             "with space", "x" * 101, "", "\u200bzero-width"]


def test_collection_names_follow_one_rule_on_add_and_rename(env: Env, notes: Path) -> None:
    with env.client() as client:
        for name in BAD_NAMES:
            with pytest.raises(QmddError) as raised:
                client.call("collection.add", {"path": str(notes), "name": name})
            assert raised.value.code is ErrorCode.INVALID_INPUT, name
            assert any("letters, digits" in hint for hint in raised.value.hints), raised.value.hints
        assert client.call("collection.list") == []
        client.call("collection.add", {"path": str(notes), "name": "笔记_2024.v1-x", "update": False})
        for name in BAD_NAMES:
            with pytest.raises(QmddError) as raised:
                client.call("collection.rename", {"old": "笔记_2024.v1-x", "new": name})
            assert raised.value.code is ErrorCode.INVALID_INPUT, name
        assert [c["name"] for c in client.call("collection.list")] == ["笔记_2024.v1-x"]


def test_a_collection_with_a_name_from_before_the_rule_still_loads_and_can_be_renamed(env: Env, notes: Path
                                                                                      ) -> None:
    with env.client() as client:
        client.call("collection.add", {"path": str(notes), "name": "notes"})
    env.stop_daemon()
    with contextlib.closing(connect(env.paths.database)) as conn, transaction(conn):
        conn.execute("UPDATE collections SET name = 'old:name'")  # accepted by the rule of older versions
    with env.client() as client:
        assert [c["name"] for c in client.call("collection.list")] == ["old:name"]
        assert client.call("update", {"collections": ["old:name"]})[0]["files"] == 4
        hits = client.call("search", {"query": "gnome-screenshot"})["results"]
        assert hits[0]["file"] == "qmd://old:name/alpha.md"
        assert client.call("collection.rename", {"old": "old:name", "new": "notes"})["name"] == "notes"
        assert [c["name"] for c in client.call("collection.list")] == ["notes"]


def test_a_folder_whose_name_breaks_the_rule_still_gets_a_default_name(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / ".My Notes: 2026\u202e"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nhello\n")
    added = env.json("collection", "add", str(folder))
    assert added["name"] == "My-Notes-2026"
    assert env.json("search", "hello")[0]["file"] == "qmd://My-Notes-2026/a.md"
