"""get, multi-get and ls as qmd 2.8.3 has them: the files record, partial misses, ls's path prefix and its
errors, --full and --full-path, -l's truncation, percent-encoded qmd:// URIs. Through the real CLI and a
real daemon, plus the pure helpers they rest on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qmdctl.fullpath import FullPaths, render_full_path
from qmdd.methods.documents import slice_lines
from qmdd.protocol.errors import ErrorCode
from qmdd.search.targets import spellings
from tests.conftest import Env


@pytest.fixture
def diary(tmp_path: Path) -> Path:
    """Files whose names share prefixes (2026_06, 2026_06_01.md, 2026_060.md), one with a space, one
    whose name really holds `%41`, and one that ends with an empty line."""
    root = tmp_path / "diary"
    (root / "2026_06").mkdir(parents=True)
    (root / "2026_06" / "a.md").write_text("# June A\n\nin the folder\n")
    (root / "2026_06_01.md").write_text("# First of June\n\nsecond\nthird\nfourth\n")
    (root / "2026_060.md").write_text("# Sixty\n")
    (root / "2026_07.md").write_text("# July\n")
    (root / "has space.md").write_text("# Spaced\n\nbody\n")
    (root / "pct%41.md").write_text("# Literal percent\n")
    (root / "pctA.md").write_text("# Decoded percent\n")
    (root / "blank.md").write_text("# Blank\n\n")
    return root


def _add(env: Env, root: Path) -> None:
    env.run("collection", "add", str(root), "--name", "diary")


def test_multi_get_files_lines_are_qmds_csv_records(env: Env, diary: Path) -> None:
    _add(env, diary)
    docid = env.json("get", "diary/2026_07.md")["docid"]
    assert env.run("multi-get", "diary/2026_07.md", "--files").stdout == f"{docid},qmd://diary/2026_07.md\n"
    # A context is a quoted field; two contexts, joined by a blank line, stay on the record's one line.
    env.run("context", "add", "qmd://diary/2026_06", 'June "notes", mostly')
    env.run("context", "add", "/", "My diary")
    lines = env.run("multi-get", "diary/2026_06/*.md", "--files").stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(',qmd://diary/2026_06/a.md,"My diary\\n\\nJune ""notes"", mostly"')
    skipped = env.run("multi-get", "diary/2026_06_01.md", "--files", "--max-bytes", "10").stdout
    assert skipped.rstrip("\n").endswith(",qmd://diary/2026_06_01.md,\"My diary\",[SKIPPED]")


def test_files_records_survive_a_newline_in_a_file_name(env: Env, diary: Path) -> None:
    (diary / "two\nlines, one file.md").write_text("# Odd\n")
    _add(env, diary)
    out = env.run("multi-get", "diary/two*.md", "--files").stdout
    assert out.count("\n") == 1 and out.endswith(',"qmd://diary/two\\nlines, one file.md"\n')
    listed = env.run("ls", "diary/two", "--files").stdout
    assert listed == '"qmd://diary/two\\nlines, one file.md"\n'


def test_multi_get_prints_what_it_found_and_reports_each_miss(env: Env, diary: Path) -> None:
    _add(env, diary)
    text = env.run("multi-get", "diary/2026_07.md,missing.md,qmd://nosuch/x.md")
    assert text.returncode == 0 and "File: qmd://diary/2026_07.md" in text.stdout
    assert "missing.md" not in text.stdout
    errors = text.stderr.splitlines()
    assert errors[0].startswith("error: NOT_FOUND:") and "missing.md" in errors[0]
    assert errors[1].startswith("error: COLLECTION_NOT_FOUND:")

    as_json = env.run("multi-get", "diary/2026_07.md,missing.md", "--json")
    assert as_json.returncode == 0
    assert [d["file"] for d in json.loads(as_json.stdout)] == ["qmd://diary/2026_07.md"]
    problem = json.loads(as_json.stderr)
    assert problem["code"] == "NOT_FOUND" and "missing.md" in problem["detail"]

    records = [json.loads(line) for line in env.run("multi-get", "diary/2026_07.md,nope.md", "--ndjson").stdout
               .splitlines()]
    assert [r["type"] for r in records] == ["metadata", "result"]

    # Nothing found at all: NOT_FOUND, for a list as for a glob.
    for pattern in ("missing.md,other.md", "diary/zzz*.md"):
        proc = env.run("multi-get", pattern, "--json", check=False)
        assert proc.returncode == ErrorCode.NOT_FOUND.spec.exit_code and proc.stdout == ""
        assert json.loads(proc.stderr)["code"] == "NOT_FOUND"
    for pattern in ("", " , ,"):  # names nothing: a mistake to say, not a search that found nothing
        proc = env.run("multi-get", pattern, "--json", check=False)
        assert proc.returncode == ErrorCode.INVALID_INPUT.spec.exit_code
        assert "the pattern is empty" in json.loads(proc.stderr)["detail"]


def test_ls_lists_by_path_prefix_and_refuses_what_is_not_there(env: Env, diary: Path) -> None:
    _add(env, diary)
    files = [f["file"] for f in env.json("ls", "diary/2026_06")]
    assert files == ["qmd://diary/2026_06/a.md", "qmd://diary/2026_060.md", "qmd://diary/2026_06_01.md"]
    assert [f["file"] for f in env.json("ls", "qmd://diary/2026_06/")] == ["qmd://diary/2026_06/a.md"]
    assert [f["file"] for f in env.json("ls", str(diary / "2026_06"))] == ["qmd://diary/2026_06/a.md"]

    missing = env.run("ls", "nosuch", check=False)
    assert missing.returncode == ErrorCode.COLLECTION_NOT_FOUND.spec.exit_code and missing.stdout == ""
    assert "Collection not found: nosuch" in missing.stderr
    # A bare word is a collection name, as in qmd, even inside a collection's folder.
    assert env.run("ls", "2026_06", cwd=diary, check=False).returncode == missing.returncode

    nothing = env.run("ls", "diary/nonexistent", "--json", check=False)
    assert nothing.returncode == ErrorCode.NOT_FOUND.spec.exit_code and nothing.stdout == ""
    assert "No files found under qmd://diary/nonexistent" in json.loads(nothing.stderr)["detail"]


def test_get_full_is_the_whole_document(env: Env, diary: Path) -> None:
    _add(env, diary)
    whole = env.json("get", "diary/2026_06_01.md", "--full")
    assert whole["body"] == (diary / "2026_06_01.md").read_text()
    text = env.run("get", "diary/2026_06_01.md", "--full").stdout
    assert text.endswith("1: # First of June\n2: \n3: second\n4: third\n5: fourth\n")


def test_line_limits_keep_empty_lines_and_leave_the_marker_unnumbered(env: Env, diary: Path) -> None:
    _add(env, diary)
    # Lines 1-2 of "# First of June\n\nsecond...": the second is empty, and the body says so.
    assert env.json("get", "diary/2026_06_01.md", "-l", "2")["body"] == "# First of June\n\n"
    assert env.json("get", "diary/blank.md:2:1")["body"] == "\n"
    text = env.run("get", "diary/2026_06_01.md", "-l", "2").stdout
    assert text.endswith("---\n\n1: # First of June\n2: \n[... 3 more lines]\n")

    many = env.run("multi-get", "diary/2026_06_01.md", "-l", "2").stdout
    assert many.endswith("1: # First of June\n2: \n[... truncated 3 more lines]\n")
    assert "3:" not in many
    entry = env.json("multi-get", "diary/2026_06_01.md", "-l", "2")[0]
    assert entry["body"] == "# First of June\n\n\n[... truncated 3 more lines]" and entry["lines_after"] == 3


def test_percent_encoded_uris_are_decoded_after_the_literal_name(env: Env, diary: Path) -> None:
    _add(env, diary)
    assert env.json("get", "qmd://diary/has%20space.md")["title"] == "Spaced"
    # A name that really holds %41 is itself; decoded, it would be pctA.md.
    assert env.json("get", "qmd://diary/pct%41.md")["title"] == "Literal percent"
    assert env.json("get", "qmd://diary/pct%2541.md")["title"] == "Literal percent"
    assert env.json("multi-get", "qmd://diary/has%20space.md,qmd://diary/2026_07.md")[0]["title"] == "Spaced"
    assert [f["file"] for f in env.json("ls", "qmd://diary/has%20")] == ["qmd://diary/has space.md"]


def test_full_path_shows_files_on_disk_or_warns(env: Env, diary: Path, tmp_path: Path) -> None:
    _add(env, diary)
    text = env.run("get", "diary/2026_07.md", "--full-path", cwd=tmp_path).stdout
    assert text.startswith("./diary/2026_07.md\n---\n") and "#" not in text.splitlines()[0]
    elsewhere = env.json("get", "diary/2026_07.md", "--full-path", cwd=Path("/"))
    assert elsewhere["file"] == os.path.realpath(diary / "2026_07.md") and "docid" not in elsewhere

    (diary / "2026_060.md").unlink()  # gone from disk, still in the index
    proc = env.run("multi-get", "diary/2026_06/a.md,diary/2026_060.md,2026_06_01.md", "--full-path", "--files",
                   cwd=diary)
    lines = proc.stdout.splitlines()
    assert lines[0] == "./2026_06/a.md" and lines[2] == "./2026_06_01.md"
    assert lines[1].startswith("#") and lines[1].endswith(",qmd://diary/2026_060.md,[SKIPPED]")  # unreadable too
    assert "could not resolve 1 of 3 results on disk" in proc.stderr
    # get reads the file, so it fails first; the lookup itself, for one document:
    with env.client() as client:
        paths = FullPaths(client, str(diary))
        assert paths.of("qmd://diary/2026_060.md") is None
        assert "could not resolve the file on disk" in str(paths.warning())
        assert paths.of("qmd://diary/2026_07.md") == "./2026_07.md"


def test_helpers() -> None:
    assert slice_lines("a\n\nb\n", None, 2) == ("a\n\n", 1, 1)
    assert slice_lines("a\n\nb\n", None, None) == ("a\n\nb\n", 1, 0)
    assert slice_lines("a\nb", 2, 5) == ("b", 2, 0)
    assert slice_lines("a\n", 3, 1) == ("", 3, 0)
    assert spellings("qmd://c/a%20b.md") == ["qmd://c/a%20b.md", "qmd://c/a b.md"]
    assert spellings("notes/a%20b.md") == ["notes/a%20b.md"]  # a path, not a URI: as written
    assert spellings("qmd://c/%ff.md") == ["qmd://c/%ff.md"]  # not UTF-8 once decoded
    assert render_full_path("/etc", "/etc") == "./"
    assert render_full_path("/etc/hosts", "/etc") == "./hosts"
    assert render_full_path("/etc/hosts", "/usr") == os.path.realpath("/etc/hosts")
