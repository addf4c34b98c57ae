"""Plugins in a real daemon, through the real CLI, socket and HTTP door: install and manage them, run
scorers and filters per query and per collection, transforms at indexing time, and every misbehaving
plugin ending in a warning (or PLUGIN_FAILED when strict), a disabled plugin, and a daemon that serves on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from qmdd.consistency import check_index
from qmdd.protocol.errors import ERRORS, ErrorCode
from qmdd.tokens import read_token
from tests.conftest import Env
from tests.test_faults import wait_for

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "plugins"
FIXTURES = REPO / "tests" / "fixtures" / "plugins"


@pytest.fixture
def kube(tmp_path: Path) -> Path:
    """Notes that all match `kubernetes`: one under projects/, one draft, one with a comment."""
    root = tmp_path / "kube"
    (root / "projects").mkdir(parents=True)
    (root / "drafts").mkdir()
    (root / "projects" / "alpha.md").write_text("# Alpha plan\n\nkubernetes deploy plan for alpha.\n")
    (root / "beta.md").write_text("# Beta\n\nkubernetes kubernetes deploy notes, kubernetes everywhere.\n")
    (root / "drafts" / "gamma.md").write_text("# Gamma\n\nkubernetes draft kubernetes kubernetes kubernetes.\n")
    (root / "delta.md").write_text("# Delta\n\nkubernetes runbook <!-- zanzibar password hint -->\n")
    return root


def files(results: list[dict[str, Any]]) -> list[str]:
    return [r["file"].removeprefix("qmd://") for r in results]


def search(env: Env, *args: str) -> list[dict[str, Any]]:
    return json.loads(env.run("search", *args, "--json").stdout)


def exit_code(code: ErrorCode) -> int:
    return ERRORS[code].exit_code


def test_install_list_info_replace_remove(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    installed = env.json("plugin", "install", str(EXAMPLES / "path-boost.wat"))
    assert installed["name"] == "path-boost" and installed["hooks"] == ["score"] and installed["version"] == "1.0"
    again = env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"), check=False)
    assert again.returncode == exit_code(ErrorCode.INVALID_INPUT) and "--replace" in again.stderr
    taken = env.run("plugin", "install", str(FIXTURES / "garbage.wasm"), "--name", "path-boost", check=False)
    assert "installed already" in taken.stderr  # the name is checked first: compiling may take seconds
    env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"), "--replace")
    env.run("plugin", "install", str(FIXTURES / "constant.wat"), "--name", "half")
    assert [p["name"] for p in env.json("plugin", "list")] == ["half", "path-boost"]
    info = env.json("plugin", "info", "half")
    assert info["fuel"] == 10_000_000 and info["calls"] == 0 and info["enabled"] and info["collections"] == []
    assert "half" in env.run("plugin", "list").stdout

    env.run("plugin", "remove", "half")
    assert [p["name"] for p in env.json("plugin", "list")] == ["path-boost"]
    gone = env.run("plugin", "info", "half", check=False)
    assert gone.returncode == exit_code(ErrorCode.NOT_FOUND)
    unknown = env.run("search", "kubernetes", "--plugin", "half", check=False)
    assert unknown.returncode == exit_code(ErrorCode.NOT_FOUND) and "plugin list" in unknown.stderr


@pytest.mark.parametrize(("name", "why"), [
    ("garbage.wasm", "neither a WebAssembly module"),
    ("wrong-type.wat", "has the type"),
    ("imports-wasi.wat", "imports wasi_snapshot_preview1"),
    ("no-alloc.wat", "no `qmd_alloc`"),
    ("abi2.wat", "ABI version 2"),
    ("start-loop.wat", r"failed when started: ran out of fuel \(1,000,000 to start\)"),  # both used to install,
    ("huge-memory.wat", "failed when started: .*memory"),  # then fail every call
])
def test_what_is_not_a_plugin_is_refused(env: Env, name: str, why: str) -> None:
    refused = env.run("plugin", "install", str(FIXTURES / name), "--json", check=False)
    assert refused.returncode == exit_code(ErrorCode.INVALID_INPUT)
    assert re.search(why, refused.stdout + refused.stderr)
    assert env.json("plugin", "list") == []
    missing = env.run("plugin", "install", str(FIXTURES / "nowhere.wat"), check=False)
    assert missing.returncode == exit_code(ErrorCode.PATH_NOT_FOUND)


def test_a_module_built_to_be_slow_is_refused_before_it_is_compiled(env: Env, tmp_path: Path) -> None:
    # 200,000 empty functions: compiling them took 14 s of both cores (a trial's hostile plugin).
    functions = 200_000
    body = b"\x02\x00\x0b"  # one function body: its size, no locals, `end`
    sections = [(1, b"\x01\x60\x00\x00"),  # one type: () -> ()
                (3, _leb(functions) + b"\x00" * functions),  # every function of that type
                (10, _leb(functions) + body * functions)]
    module = b"\0asm\x01\x00\x00\x00" + b"".join(bytes([i]) + _leb(len(s)) + s for i, s in sections)
    (tmp_path / "many.wasm").write_bytes(module)
    refused = env.run("plugin", "install", str(tmp_path / "many.wasm"), check=False)
    assert refused.returncode == exit_code(ErrorCode.INVALID_INPUT)
    assert "it declares 200,000 functions (a plugin has at most 20,000)" in refused.stderr


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_searches_with_plugins_answer_while_an_install_is_under_way(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"))
    env.stop_daemon()
    env.vars["QMDD_FAULT_PAUSES"] = "plugins.install=20"  # the next install is held, as a long compile holds it
    install = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "plugin", "install",
                                str(EXAMPLES / "drop-drafts.wat")], env=env.vars, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "plugin.install {'module': b';; drop-drafts" in env.paths.log_file.read_text(), 30,
                 "the install to be under way")
        # Management held the actor's inbox, and the search's hook waited behind it for the whole install.
        boosted = search(env, "kubernetes", "-n", "2", "--plugin", "path-boost", "--explain")
        assert boosted and boosted[0]["explain"]["plugins"][0]["name"] == "path-boost"
        assert "installed (drop-drafts.wat" not in env.paths.log_file.read_text()  # answered while it was held
    finally:
        install.kill()


def test_a_slow_plugin_queues_behind_itself_not_in_front_of_the_others(env: Env, kube: Path,
                                                                        tmp_path: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    module = tmp_path / "spin.wat"
    module.write_bytes((FIXTURES / "spin.wat").read_bytes())
    module.with_suffix(".toml").write_text('[plugin]\nname = "spin"\nfuel = 1000000000\ntime_ms = 2000\n')
    env.run("plugin", "install", str(module))
    env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"))
    done: list[str] = []

    def searching(plugin: str, query: str) -> None:
        with env.client() as client:
            client.call("search", {"query": query, "plugins": [plugin]})
        done.append(plugin)

    # Calls spinning until their fuel runs out (~0.5 s each) held both call threads: a well-behaved
    # plugin's search waited behind them.
    spinning = [threading.Thread(target=searching, args=("spin", f"kubernetes {i}")) for i in range(4)]
    for thread in spinning:
        thread.start()
    wait_for(lambda: all(f"'kubernetes {i}'" in env.paths.log_file.read_text() for i in range(4))
             and env.json("status")["actors"]["plugins"]["threads_busy"] >= 1, 10, "the spin calls to start")
    time.sleep(0.1)  # from BM25 on to the plugin: milliseconds
    searching("path-boost", "kubernetes plan")
    for thread in spinning:
        thread.join(timeout=30)
    assert done[0] == "path-boost", done


def test_scorers_and_filters_per_query(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"))
    env.run("plugin", "install", str(EXAMPLES / "drop-drafts.wat"))
    plain = search(env, "kubernetes", "-n", "3")
    assert "kube/drafts/gamma.md" in files(plain) and len(plain) == 3

    boosted = search(env, "kubernetes", "-n", "4", "--plugin", "path-boost", "--explain")
    engine = {r["file"]: r["score"] for r in search(env, "kubernetes", "-n", "4")}
    for hit in boosted:
        step = hit["explain"]["plugins"][0]
        assert step["name"] == "path-boost" and step["before"] == engine[hit["file"]]
        expected = min(1.0, engine[hit["file"]] * 1.5) if "/projects/" in hit["file"] else engine[hit["file"]]
        assert hit["score"] == pytest.approx(expected, abs=1e-3)
    assert [r["score"] for r in boosted] == sorted((r["score"] for r in boosted), reverse=True)

    filtered = search(env, "kubernetes", "-n", "3", "--plugin", "drop-drafts", "--plugin", "path-boost")
    assert "kube/drafts/gamma.md" not in files(filtered) and len(filtered) == 3  # widened: still a full page
    assert env.json("plugin", "info", "drop-drafts")["calls"] >= 1


def test_a_collection_runs_its_attached_plugins_on_its_own_hits(env: Env, kube: Path, notes: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    (notes / "kubernetes.md").write_text("# Kubernetes\n\nkubernetes notes outside the kube collection.\n")
    (notes / "drafts").mkdir()
    (notes / "drafts" / "k.md").write_text("# K\n\nkubernetes kubernetes kubernetes kubernetes draft\n")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("plugin", "install", str(EXAMPLES / "drop-drafts.wat"))
    attached = env.json("plugin", "attach", "drop-drafts", "-c", "kube")
    assert attached == {"collection": "kube", "plugins": ["drop-drafts"], "rescanned": []}
    hits = files(search(env, "kubernetes", "-n", "20"))
    assert "kube/drafts/gamma.md" not in hits and "notes/drafts/k.md" in hits  # only kube's hits are filtered
    assert env.json("plugin", "list")[0]["collections"] == ["kube"]
    env.run("plugin", "detach", "drop-drafts", "-c", "kube")
    assert "kube/drafts/gamma.md" in files(search(env, "kubernetes", "-n", "20"))


def test_a_failing_plugin_is_left_out_then_disabled_and_the_daemon_serves_on(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    env.run("plugin", "install", str(FIXTURES / "trap.wat"))
    client = env.client()
    answer = client.call("search", {"query": "kubernetes", "plugins": ["trap"]})
    assert len(answer["results"]) == 4 and answer["warnings"][0]["code"] == "PLUGIN_FAILED"
    assert "unreachable" in answer["warnings"][0]["message"]
    strict = env.run("search", "kubernetes", "--plugin", "trap", "--strict-plugins", check=False)
    assert strict.returncode == exit_code(ErrorCode.PLUGIN_FAILED) and "PLUGIN_FAILED" in strict.stderr
    warned = env.run("search", "kubernetes", "--plugin", "trap")
    assert "warning: PLUGIN_FAILED" in warned.stderr and "kube/beta.md" in warned.stdout
    info = env.json("plugin", "info", "trap")
    assert not info["enabled"] and "3 times in a row" in info["disabled_reason"] and info["failures"] == 3
    status = env.json("status")
    assert "trap" in status["actors"]["plugins"]["disabled"]
    env.run("plugin", "enable", "trap")
    assert env.json("plugin", "info", "trap")["enabled"]
    assert client.call("ping") is not None


@pytest.mark.parametrize(("fixture", "manifest", "why"), [
    ("spin.wat", "fuel = 1000000000\ntime_ms = 100\n", "time limit"),
    ("spin.wat", "fuel = 100000\n", "ran out of fuel"),
    ("grow.wat", "memory_mb = 2\nfuel = 5000000\n", "ran out of fuel"),
    ("nan.wat", "", "malformed output"),
    ("short-filter.wat", "", "not 0 or 1"),
])
def test_each_misbehaviour_ends_in_a_warning(env: Env, kube: Path, tmp_path: Path, fixture: str, manifest: str,
                                             why: str) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    module = tmp_path / fixture
    module.write_bytes((FIXTURES / fixture).read_bytes())
    module.with_suffix(".toml").write_text(f"[plugin]\nname = \"bad\"\n{manifest}")
    env.run("plugin", "install", str(module))
    answer = env.client().call("search", {"query": "kubernetes", "plugins": ["bad"]})
    assert len(answer["results"]) == 4 and why in answer["warnings"][0]["message"]
    info = env.json("plugin", "info", "bad")  # what a failed call spent counts: it used to read 0 and 0 ms
    assert info["failures"] == 1 and info["seconds"] > 0 and info["fuel_used"] > 0


def test_a_transform_reindexes_what_it_touches(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    assert files(search(env, "zanzibar")) == ["kube/delta.md"]
    env.run("plugin", "install", str(EXAMPLES / "strip-comments.wat"))
    attached = env.json("plugin", "attach", "strip-comments", "-c", "kube")
    assert attached["rescanned"][0]["indexed"] == 4
    assert search(env, "zanzibar") == [] and files(search(env, "runbook")) == ["kube/delta.md"]
    assert env.json("update")[0]["indexed"] == 0  # unchanged files stay unchanged under the same transform
    env.stop_daemon()
    assert check_index(env.vars).codes() == set()  # the offline checker knows transformed documents
    (kube / "epsilon.md").write_text("# Epsilon\n\nzanzibar <!-- zanzibar -->\n")
    env.run("update")
    assert search(env, "zanzibar")[0]["snippet"].rstrip().endswith("zanzibar")
    env.run("plugin", "disable", "strip-comments")  # undone: every document indexed as it is
    assert files(search(env, "zanzibar", "-n", "5")) == ["kube/epsilon.md", "kube/delta.md"] or \
        sorted(files(search(env, "zanzibar", "-n", "5"))) == ["kube/delta.md", "kube/epsilon.md"]
    env.run("plugin", "enable", "strip-comments")
    assert files(search(env, "zanzibar")) == ["kube/epsilon.md"]
    removed = env.json("plugin", "remove", "strip-comments")
    assert removed["hooks"] == ["transform"] and removed["rescanned"][0]["collection"] == "kube"
    assert len(search(env, "zanzibar", "-n", "5")) == 2
    assert env.json("ls")[0].get("documents", 5) == 5


def test_plugins_survive_a_restart_and_retire_cached_answers(env: Env, kube: Path) -> None:
    env.run("collection", "add", str(kube), "--name", "kube")
    env.run("plugin", "install", str(EXAMPLES / "path-boost.wat"))
    first = search(env, "kubernetes", "--plugin", "path-boost")
    env.stop_daemon()
    assert search(env, "kubernetes", "--plugin", "path-boost") == first
    assert env.json("plugin", "info", "path-boost")["calls"] == 1
    env.run("plugin", "install", str(FIXTURES / "constant.wat"), "--name", "path-boost", "--replace")
    assert {r["score"] for r in search(env, "kubernetes", "--plugin", "path-boost")} == {0.5}


def test_the_http_door_lists_plugins_and_searches_with_them(env: Env, kube: Path) -> None:
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(kube), "--name", "kube")
    env.run("plugin", "install", str(EXAMPLES / "drop-drafts.wat"))
    with httpx.Client(base_url=started["http"], headers={"authorization": f"Bearer {read_token(env.paths)}"},
                      timeout=30) as door:
        listed = door.get("/plugins")
        assert listed.status_code == 200 and listed.json()[0]["name"] == "drop-drafts"
        found = door.post("/search", json={"query": "kubernetes", "limit": 10, "plugins": ["drop-drafts"]})
        assert found.status_code == 200 and "drafts/gamma.md" not in json.dumps(found.json())
        unknown = door.post("/search", json={"query": "kubernetes", "plugins": ["nope"]})
        assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
        assert "/plugins" in door.get("/openapi.json").json()["paths"]


def test_a_failing_transform_leaves_the_others_of_the_chain_in_force(env: Env, kube: Path, tmp_path: Path) -> None:
    # 630 KB with a comment: too big for the second transform's 1 MB of memory, so it fails on this one.
    (kube / "huge.md").write_text("# Huge\n\nzanzibar <!-- hidden --> " + "filler words here\n" * 35_000)
    small = tmp_path / "small.wat"
    small.write_bytes((EXAMPLES / "strip-comments.wat").read_bytes())
    small.with_suffix(".toml").write_text('[plugin]\nname = "small"\nmemory_mb = 1\nfuel = 1000000000\n'
                                          'time_ms = 2000\n')
    env.run("plugin", "install", str(EXAMPLES / "strip-comments.wat"))
    env.run("plugin", "install", str(small))
    env.run("collection", "add", str(kube), "--name", "kube", "--no-update")
    env.run("plugin", "attach", "strip-comments", "-c", "kube")
    env.run("plugin", "attach", "small", "-c", "kube")  # after strip-comments; fails on huge.md alone
    assert env.json("plugin", "info", "small")["failures"] >= 1
    # huge.md's comment, which strip-comments removed, stays out: the failure further down the chain used
    # to index the document as it was read, comment and all.
    assert search(env, "hidden") == [] and files(search(env, "zanzibar")) == ["kube/huge.md"]


def test_a_transform_group_that_fails_is_redone_one_document_at_a_time(env: Env, kube: Path, tmp_path: Path) -> None:
    """Documents are transformed in groups (up to 64 files, about 1 MB); one too big for the plugin's
    memory (1 MB here) fails its group, and the others are still transformed, each on its own; the big
    one is indexed as it is."""
    # 630 KB: in a group with the others, and too big for 1 MB of plugin memory (input and output)
    (kube / "huge.md").write_text("# Huge\n\nzanzibar <!-- hidden --> " + "filler words here\n" * 35_000)
    module = tmp_path / "strip.wat"
    module.write_bytes((EXAMPLES / "strip-comments.wat").read_bytes())
    module.with_suffix(".toml").write_text('[plugin]\nname = "strip"\nmemory_mb = 1\nfuel = 1000000000\n'
                                           'time_ms = 2000\n')
    env.run("plugin", "install", str(module))
    env.run("collection", "add", str(kube), "--name", "kube", "--no-update")
    attached = env.json("plugin", "attach", "strip", "-c", "kube")
    assert attached["rescanned"][0]["indexed"] == 5
    assert files(search(env, "zanzibar", "-n", "5")) == ["kube/huge.md"]  # its comment stayed; delta's went
    assert files(search(env, "hidden")) == ["kube/huge.md"]
    info = env.json("plugin", "info", "strip")
    assert info["failures"] == 2 and info["enabled"]  # the group, then huge.md alone; never 3 in a row
