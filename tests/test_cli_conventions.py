"""Command-line conventions a qmd script and an ANEL agent both rely on: stdout holds results only, every
error (usage errors included) is typed problem details on stderr in the format asked for, bad flag values
are usage errors (exit 2), and qmd's format names (cli, xml) and flags (--glob) are accepted."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qmdctl.commands.search import qmd_shape, render_results
from qmdctl.render import Output, files_field, xml_escape
from tests.conftest import Env


def _problem(proc: object) -> dict:
    assert proc.stdout == "", proc.stdout  # type: ignore[attr-defined]
    return json.loads(proc.stderr)  # type: ignore[attr-defined]


@pytest.mark.parametrize("args, words", [
    (("search", "x", "-n", "0"), "-n must be between 1 and 100000"),
    (("search", "x", "--min-score", "1.5"), "--min-score must be between 0.0 and 1.0"),
    (("query", "x", "--min-score", "-3"), "--min-score must be between 0.0 and 1.0"),
    (("search", "x", "--min-score", "nan"), "--min-score must be between"),
    (("search", "x", "-n", "99999999999999999999999"), "-n must be between 1 and 100000"),
    (("embed", "--timeout", "inf"), "--timeout must be at least 0"),
    (("multi-get", "a.md", "-l", "0"), "-l must be at least 1"),
    (("search", "x", "--bogus"), "no such option: --bogus"),
    (("search", "x", "--format", "yaml"), "unknown format 'yaml'"),
    (("collection", "add"), "missing PATH"),
    (("nosuch", "thing"), "no such command: 'nosuch'"),
    (("collection", "nosuch"), "no such command: 'collection nosuch'"),
])
def test_usage_errors_are_problem_details_on_stderr(env: Env, args: tuple[str, ...], words: str) -> None:
    fmt_args = ("--format", "yaml") if "yaml" in args else ("--json",)
    proc = env.run(*args, *([] if "yaml" in args else fmt_args), check=False)
    assert proc.returncode == 2, proc.stderr
    if "yaml" in args:  # no usable format was asked for: text on stderr
        assert proc.stdout == "" and proc.stderr.startswith("error: USAGE_ERROR:") and words in proc.stderr
        return
    problem = _problem(proc)
    assert problem["code"] == "USAGE_ERROR" and problem["exit_code"] == 2 and words in problem["detail"]
    assert problem["recovery_hints"] and "--help" in problem["recovery_hints"][0]
    assert not env.paths.database.exists()  # nothing reached (or started) a daemon


def test_usage_error_under_ndjson_opens_with_the_metadata_record(env: Env) -> None:
    proc = env.run("search", "x", "-n", "0", "--ndjson", check=False)
    assert proc.returncode == 2
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    err = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["type"] for r in out] == ["metadata"] and out[0]["payload"]["command"] == "search"
    assert [r["type"] for r in err] == ["error"] and err[0]["seq"] == 1
    assert err[0]["payload"]["trace_id"] == out[0]["payload"]["trace_id"]
    # AGENT_OUTPUT_FORMAT chooses the format of a usage error too.
    agent = Env(env.home, {**env.vars, "AGENT_OUTPUT_FORMAT": "json"})
    assert _problem(agent.run("search", "x", "--limit=0", check=False))["code"] == "USAGE_ERROR"


def test_errors_keep_stdout_for_results(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    missing = env.run("get", "notes/missing.md", "--json", check=False)
    assert missing.returncode == 12 and _problem(missing)["code"] == "NOT_FOUND"
    piped = env.run("search", "alpha", "--json")  # what `| jq '.[]'` reads: results only
    assert [hit["file"] for hit in json.loads(piped.stdout)] == ["qmd://notes/alpha.md"]


def test_format_names_of_qmd_and_anel(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    text = env.run("search", "alpha").stdout
    assert env.run("search", "alpha", "--format", "cli").stdout == text
    as_json = json.loads(env.run("search", "alpha", "--output-format", "json").stdout)
    assert as_json[0]["file"] == "qmd://notes/alpha.md"
    # --format (qmd's) wins over --output-format (ANEL's); AGENT_OUTPUT_FORMAT is the default.
    assert env.run("search", "alpha", "--output-format", "json", "--format", "cli").stdout == text
    agent = Env(env.home, {**env.vars, "AGENT_OUTPUT_FORMAT": "ndjson"})
    assert json.loads(agent.run("search", "alpha").stdout.splitlines()[0])["type"] == "metadata"
    # qmd's xml: one <file> element per hit.
    hits = ET.fromstring("<r>" + env.run("search", "alpha", "--xml").stdout + "</r>")
    assert hits[0].tag == "file" and hits[0].get("name") == "qmd://notes/alpha.md" and "alpha" in hits[0].text


def test_status_as_a_table(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--mask", "*.md", "--glob", "projects/*.md", "--name", "notes")
    csv = env.run("status", "--csv").stdout.splitlines()
    assert csv[0] == "name,uri,root,masks,documents,chunks,embedded,watch"
    assert csv[1].startswith(f"notes,qmd://notes/,{notes},")
    item = ET.fromstring(env.run("status", "--xml").stdout).find("item")
    assert item is not None and item.findtext("name") == "notes" and item.findtext("documents") == "4"
    assert env.json("collection", "list")[0]["masks"] == ["*.md", "projects/*.md"]  # --glob is --mask


def test_files_records_never_span_lines() -> None:
    hit = {"docid": "#abc123", "score": 0.5, "file": "qmd://n/two\nlines,.md", "line": 1, "title": "T",
           "context": 'Runbooks\nand "ops"', "snippet": "@@ -1,1 @@\nx"}
    out = io.StringIO()
    render_results(Output("files", out=out), [qmd_shape(hit, False, False)], "q", min_score=0)
    assert out.getvalue() == '#abc123,0.50,"qmd://n/two\\nlines,.md","Runbooks\\nand ""ops"""\n'
    assert files_field("plain/path.md") == "plain/path.md" and files_field("ctx", quoted=True) == '"ctx"'


def test_xml_escape_keeps_documents_well_formed() -> None:
    text = 'a<b & "c" \x1b[31m \ud800'
    parsed = ET.fromstring(f"<x a=\"{xml_escape(text)}\">{xml_escape(text)}</x>")
    assert parsed.text == parsed.get("a") == 'a<b & "c" \\x1b[31m \\ud800'


def test_search_full_path_shows_files_on_disk(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    hits = json.loads(env.run("search", "alpha", "--full-path", "--json", cwd=notes).stdout)
    assert hits[0]["file"] == "./alpha.md" and "docid" not in hits[0]
    files = env.run("query", "alpha", "--full-path", "--files", "--no-rerank", cwd=Path("/")).stdout
    assert files.splitlines()[0].endswith(f",{notes / 'alpha.md'}")  # outside the working dir: absolute


def test_query_takes_qmds_intent(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    plain = env.json("query", "lex: gnome-screenshot", "--no-rerank")
    steered = env.json("query", "intent: databases and cameras\nlex: gnome-screenshot", "--no-rerank")
    flagged = env.json("query", "lex: gnome-screenshot", "--intent", "databases", "--no-rerank")
    # The intent is background: it never finds a document by itself.
    assert [h["file"] for h in steered] == [h["file"] for h in plain] == [h["file"] for h in flagged]
    alone = env.run("query", "intent: databases", "--json", check=False)
    assert alone.returncode != 0 and alone.stdout == ""


def test_collection_show_as_qmd(env: Env, notes: Path) -> None:
    from tests.test_anel import assert_valid_json

    env.run("collection", "add", str(notes), "--name", "notes")
    env.run("context", "add", "qmd://notes/projects", "Plans")
    shown = assert_valid_json(env, "collection", "show", "notes")
    assert shown["root"] == str(notes) and [c["path"] for c in shown["contexts"]] == ["projects"]
    text = env.run("collection", "info", "notes").stdout
    assert text.startswith("Collection: notes\n  Path:     ") and "Contexts: 1" in text
    missing = env.run("collection", "show", "nope", check=False)
    assert missing.returncode == 13 and "Collection not found: nope" in missing.stderr


def test_messages_scripts_grep_say_what_qmd_says(env: Env, notes: Path) -> None:
    added = env.run("collection", "add", str(notes), "--name", "notes").stdout
    assert "Indexed: 4 new, 0 updated, 0 unchanged, 0 removed\n" in added
    assert "✓ Collection 'notes' created successfully" in added
    updated = env.run("update").stdout
    assert "Indexed: 0 new, 0 updated, 4 unchanged, 0 removed\n" in updated
    assert updated.endswith("✓ All collections updated.\n")
    assert env.run("context", "add", "qmd://notes/projects", "Plans").stdout.startswith(
        "✓ Added context for: qmd://notes/projects\n")
    assert "(collection root)" in env.run("context", "add", "qmd://notes/", "All notes").stdout
    assert env.run("context", "add", "/", "Everything").stdout.startswith("✓ Set global context")
    assert env.run("context", "rm", "/").stdout.startswith("✓ Removed context for: /")
    env.run("context", "rm", "qmd://notes/projects")
    again = env.run("context", "rm", "qmd://notes/projects", check=False)
    assert again.returncode == 12 and "no context set for qmd://notes/projects" in again.stderr
    assert "qmdctl context list" in again.stderr
    assert env.run("collection", "rename", "notes", "n2").stdout == "✓ Renamed collection 'notes' to 'n2'\n"
    missing = env.run("collection", "remove", "notes", check=False)
    assert missing.returncode == 13 and "Collection not found: notes" in missing.stderr
    assert env.run("collection", "rm", "n2").stdout.startswith("✓ Removed collection 'n2'\n")


def test_options_may_come_before_the_command_as_in_qmd(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    after = env.run("search", "alpha", "-n", "1", "--json").stdout
    assert env.run("--json", "search", "alpha", "-n", "1").stdout == after
    assert env.run("-n", "1", "--format", "json", "search", "alpha").stdout == after
    assert env.run("--index", "index", "--version").stdout.startswith("qmdctl ")
    assert _problem(env.run("--json", "search", "x", "-n", "0", check=False))["code"] == "USAGE_ERROR"
