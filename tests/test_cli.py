"""End to end through the real CLI and a real daemon: collections, update, search, get, ls, contexts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qmdd.protocol.errors import ErrorCode
from tests.conftest import Env


def exit_code(code: ErrorCode) -> int:
    return code.spec.exit_code


def test_add_search_get_roundtrip_with_qmd_json_shape(env: Env, notes: Path) -> None:
    added = env.json("collection", "add", str(notes), "--name", "notes")
    assert added["name"] == "notes" and added["update"][0]["indexed"] == 4
    assert env.daemon_pid() is not None  # started on demand

    hits = env.json("search", "gnome-screenshot")
    assert hits and list(hits[0]) == ["docid", "score", "file", "line", "title", "snippet"]
    top = hits[0]
    assert top["file"] == "qmd://notes/alpha.md" and top["title"] == "Alpha Project"
    assert top["docid"].startswith("#") and len(top["docid"]) == 7
    assert 0 < top["score"] <= 1
    assert top["snippet"].startswith("@@ -") and "gnome-screenshot" in top["snippet"]
    assert top["line"] >= 1

    # OR semantics: one missing word does not empty the result.
    assert env.json("search", "gnome-screenshot", "zzzunknownword")[0]["file"] == "qmd://notes/alpha.md"

    # get by qmd:// URI, by #docid, by collection path with a line range, by filesystem path.
    by_uri = env.json("get", "qmd://notes/alpha.md")
    assert by_uri["body"].startswith("# Alpha Project")
    assert env.json("get", top["docid"])["file"] == "qmd://notes/alpha.md"
    ranged = env.json("get", "notes/projects/gamma.md:7:2")
    # Lines 7 and 8, each with its newline: the second is empty.
    assert ranged["from_line"] == 7 and ranged["body"] == "Quarterly plan: ship the daemon.\n\n"
    assert env.json("get", "projects/gamma.md", cwd=notes)["title"] == "Gamma Plan"
    text = env.run("get", "notes/alpha.md", "--from", "3", "-l", "1").stdout
    assert "3: The alpha project" in text


def test_cjk_search_finds_words_without_spaces(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    hits = env.json("search", "搜索")
    assert hits[0]["file"] == "qmd://notes/chinese.md"
    assert env.json("search", "全文搜索")[0]["file"] == "qmd://notes/chinese.md"


def test_update_sees_edits_additions_and_deletions(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    (notes / "beta.md").write_text("# Beta\n\nNow about kangaroos.\n")
    (notes / "delta.md").write_text("# Delta\n\nA new note on wombats.\n")
    (notes / "alpha.md").unlink()
    summary = env.json("update")[0]
    assert (summary["indexed"], summary["removed"]) == (2, 1)
    assert env.json("search", "kangaroos")[0]["file"] == "qmd://notes/beta.md"
    assert env.json("search", "wombats")[0]["file"] == "qmd://notes/delta.md"
    assert env.json("search", "databases") == []
    assert env.json("search", "gnome-screenshot") == []
    again = env.json("update")[0]
    assert (again["indexed"], again["removed"], again["unchanged"]) == (0, 0, 4)


def test_filters_limit_min_score_and_formats(env: Env, notes: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.md").write_text("# Other\n\nalpha project elsewhere\n")
    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("collection", "add", str(other), "--name", "other")
    both = {h["file"] for h in env.json("search", "alpha project")}
    assert {"qmd://notes/alpha.md", "qmd://other/x.md"} <= both
    only = {h["file"] for h in env.json("search", "alpha project", "-c", "other")}
    assert only == {"qmd://other/x.md"}
    assert env.json("search", "plan", "--path", "projects")[0]["file"] == "qmd://notes/projects/gamma.md"
    assert len(env.json("search", "alpha project", "-n", "1")) == 1
    assert env.json("search", "alpha project", "--min-score", "0.99999") == []

    csv_out = env.run("search", "alpha", "--csv").stdout.splitlines()
    assert csv_out[0] == "docid,score,file,title,context,line,snippet"
    files = env.run("search", "alpha", "--files").stdout.splitlines()
    assert files[0].split(",")[2].startswith("qmd://")
    ndjson = [json.loads(line) for line in env.run("search", "alpha", "--format", "ndjson").stdout.splitlines()]
    assert ndjson[0]["type"] == "metadata" and all(r["type"] == "result" for r in ndjson[1:])
    assert [r["seq"] for r in ndjson] == list(range(len(ndjson)))
    md = env.run("search", "alpha", "--md").stdout
    assert "**docid:**" in md
    text = env.run("search", "alpha").stdout
    assert "qmd://notes/alpha.md" in text and "Score:" in text
    full = env.json("search", "gnome-screenshot", "--full")[0]
    assert full["body"].startswith("# Alpha Project") and "snippet" not in full
    explained = env.json("search", "alpha", "--explain")[0]["explain"]
    assert explained["terms"] and 0 < explained["norm"] <= 1


def test_multi_get_ls_and_contexts(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    many = env.json("multi-get", "notes/**/*.md")
    assert {d["file"] for d in many} == {"qmd://notes/alpha.md", "qmd://notes/beta.md",
                                         "qmd://notes/chinese.md", "qmd://notes/projects/gamma.md"}
    capped = env.json("multi-get", "alpha.md,projects/gamma.md", "--max-bytes", "300")
    skipped = [d for d in capped if d.get("skipped")]
    assert [d["file"] for d in skipped] == ["qmd://notes/projects/gamma.md"]
    assert "File too large" in skipped[0]["reason"]

    listing = env.json("ls", "notes/projects")
    assert [f["file"] for f in listing] == ["qmd://notes/projects/gamma.md"]
    assert env.json("ls")[0]["documents"] == 4
    assert "qmd://notes/projects/gamma.md" in env.run("ls", "notes").stdout

    env.run("context", "add", "qmd://notes/projects", "Quarterly planning documents")
    env.run("context", "add", "/", "Personal knowledge base")
    hit = env.json("search", "quarterly")[0]
    assert hit["context"] == "Personal knowledge base\n\nQuarterly planning documents"
    assert env.json("search", "databases")[0]["context"] == "Personal knowledge base"
    listed = env.json("context", "list")
    assert {c["target"] for c in listed} == {"/", "qmd://notes/projects"}
    env.run("context", "rm", "qmd://notes/projects")
    assert env.json("search", "quarterly")[0]["context"] == "Personal knowledge base"


def test_collection_list_rename_remove(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes", "--no-update")
    env.run("update")
    assert [c["name"] for c in env.json("collection", "list")] == ["notes"]
    env.run("collection", "rename", "notes", "kb")
    assert env.json("search", "alpha")[0]["file"].startswith("qmd://kb/")
    env.run("collection", "remove", "kb")
    assert env.json("collection", "list") == []
    assert env.json("search", "alpha") == []


def test_errors_have_stable_codes_and_exit_codes(env: Env, notes: Path, tmp_path: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    cases = [
        (("search", "x", "-c", "missing"), ErrorCode.COLLECTION_NOT_FOUND),
        (("collection", "add", str(tmp_path / "nope"), "--name", "n2"), ErrorCode.PATH_NOT_FOUND),
        # Nested roots and other masks are other views of the folder (tests/test_collection_views.py);
        # the same folder with the same masks is a duplicate.
        (("collection", "add", str(notes), "--name", "twin"), ErrorCode.COLLECTION_OVERLAP),
        (("collection", "add", str(notes), "--name", "notes"), ErrorCode.COLLECTION_EXISTS),
        (("get", "notes/missing.md"), ErrorCode.NOT_FOUND),
        (("get", "notes/../../etc/passwd"), ErrorCode.PERMISSION_DENIED),
        (("collection", "remove", "missing"), ErrorCode.COLLECTION_NOT_FOUND),
        (("search", "   "), ErrorCode.INVALID_INPUT),
    ]
    for args, code in cases:
        proc = env.run(*args, "--json", check=False)
        assert proc.returncode == exit_code(code), (args, proc.stdout, proc.stderr)
        problem = json.loads(proc.stderr)
        assert problem["code"] == str(code) and problem["recovery_hints"] and problem["status"] >= 400
    text = env.run("get", "notes/missing.md", check=False)
    assert text.stderr.startswith("error: NOT_FOUND") and "hint:" in text.stderr
    (tmp_path / "other").mkdir()
    env.run("collection", "add", str(tmp_path / "other"), "--name", "other")
    for dry in ((), ("--dry-run",)):  # a rename's hint is about renaming (the catalogue's: `add --name`)
        taken = env.run("collection", "rename", "notes", "other", *dry, check=False)
        assert taken.returncode == exit_code(ErrorCode.COLLECTION_EXISTS), taken.stderr
        assert "hint: Rename it to another name" in taken.stderr and "--name" not in taken.stderr
    empty = env.run("search", "   ", check=False)  # the catalogue's hint names the command that failed
    assert "`qmdctl search --help`" in empty.stderr and "COMMAND" not in empty.stderr
    # Nothing to look up is not "no page says it": said beside the empty answer, which a script still gets.
    marks = env.run("search", "?.,;:! --", "--json")
    assert json.loads(marks.stdout) == [] and "warning: INVALID_INPUT" in marks.stderr
    assert "has no words or numbers" in marks.stderr and "a word or a number" in marks.stderr
    too_long = env.run("search", "b" * 70, "--json")  # dropped from the index as base64 is: not "punctuation"
    assert json.loads(too_long.stdout) == [] and "longer than 64 characters" in too_long.stderr
    # The daemon is still serving after all of that.
    assert env.json("search", "alpha")


def test_get_never_reads_outside_roots_even_through_symlinks(env: Env, notes: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n")
    os.symlink(secret, notes / "leak.md")
    env.run("collection", "add", str(notes), "--name", "notes")
    assert env.run("get", "notes/leak.md", "--json", check=False).returncode == exit_code(ErrorCode.NOT_FOUND)
    assert env.run("get", str(secret), "--json", check=False).returncode == exit_code(ErrorCode.NOT_FOUND)
    status = env.json("status")
    assert any(p["path"] == "leak.md" and p["code"] == "outside_root" for p in status["problems"])
