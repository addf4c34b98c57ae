"""The MCP bridge, driven by the official SDK's client over stdio (and by the MCP Inspector CLI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tests.conftest import Env

DEADLINE_S = 60


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    (root / "sub" / "dir").mkdir(parents=True)
    (root / "archives.md").write_text("# Archives\n\nUse tar with gzip to pack a folder into one file.\n")
    (root / "cooking.md").write_text("# Pasta\n\nBoil the spaghetti in salted water for nine minutes.\n")
    (root / "sub" / "dir" / "deep.md").write_text("# Deep\n\nA nested note about the quokka-7 project.\n"
                                                  + "".join(f"line {i}\n" for i in range(3, 40)))
    return root


@asynccontextmanager
async def session(env: Env, extra_env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "qmdctl.main", "mcp"],
                                   env={**env.vars, **(extra_env or {})})
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


def run(fn: Any) -> None:
    async def with_deadline() -> None:
        with anyio.fail_after(DEADLINE_S):
            await fn()

    anyio.run(with_deadline, backend="trio")


def test_tools_resources_and_errors_through_the_sdk_client(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", "qmdctl.main", "mcp"], env=env.vars)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            init = await client.initialize()
            assert init.protocol_version == "2025-11-25"
            assert init.server_info.name == "qmdd"
            assert "kb (qmd://kb/)" in (init.instructions or "")
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"search", "vsearch", "query", "get", "multi_get", "status"}
            for tool in tools.values():
                assert tool.annotations is not None and tool.annotations.read_only_hint is True
                assert tool.output_schema is not None and tool.output_schema["type"] == "object"
                assert tool.input_schema["additionalProperties"] is False

            found = await client.call_tool("search", {"query": "quokka-7", "limit": 3})
            assert not found.is_error
            hits = found.structured_content["results"]
            assert hits[0]["file"] == "qmd://kb/sub/dir/deep.md" and hits[0]["docid"].startswith("#")
            assert "quokka-7" in found.content[0].text  # readable text beside the structure

            doc = await client.call_tool("get", {"file": hits[0]["docid"], "fromLine": 5, "maxLines": 2})
            assert doc.structured_content["body"].rstrip("\n") == "line 4\nline 5"
            assert doc.structured_content["from_line"] == 5
            by_suffix = await client.call_tool("get", {"file": "qmd://kb/sub/dir/deep.md:3:1"})
            assert by_suffix.structured_content["body"].rstrip("\n") == "A nested note about the quokka-7 project."

            many = await client.call_tool("multi_get", {"pattern": "kb/*.md", "maxBytes": 1000})
            files = sorted(d["file"] for d in many.structured_content["documents"])
            assert files == ["qmd://kb/archives.md", "qmd://kb/cooking.md"]
            small = await client.call_tool("multi_get", {"pattern": "qmd://kb/sub/dir/deep.md", "maxBytes": 10})
            assert small.structured_content["documents"][0]["skipped"] is True

            typed = await client.call_tool("query", {"searches": [{"type": "lex", "query": "spaghetti"}],
                                                     "limit": 1, "rerank": False})
            assert typed.structured_content["results"][0]["file"] == "qmd://kb/cooking.md"

            status = await client.call_tool("status", {})
            assert status.structured_content["collections"][0]["documents"] == 3
            assert status.structured_content["collections"][0]["watch"] == "off"  # the suite runs unwatched

            templates = (await client.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["qmd://{collection}/{+path}"]
            resource = await client.read_resource("qmd://kb/sub/dir/deep.md")
            assert resource.contents[0].text.startswith("# Deep")

            missing = await client.call_tool("get", {"file": "nowhere.md"})
            assert missing.is_error and "NOT_FOUND" in missing.content[0].text and "hint:" in missing.content[0].text
            bad = await client.call_tool("search", {"query": 5})
            assert bad.is_error and "INVALID_INPUT: search: query: Input should be a valid string" in (
                bad.content[0].text)
            assert "pydantic" not in bad.content[0].text  # the problem, not the validator's page of text
            unknown = await client.call_tool("query", {})
            assert unknown.is_error and "INVALID_INPUT" in unknown.content[0].text
            no_collection = await client.call_tool("search", {"query": "x", "collections": ["nope"]})
            assert no_collection.is_error and no_collection.content[0].text.startswith("COLLECTION_NOT_FOUND: ")
            misspelt = await client.call_tool("search", {"query": "x", "colections": ["kb"]})  # not ignored
            assert misspelt.is_error and "INVALID_INPUT: search: no argument 'colections'" in misspelt.content[0].text
            assert "collections" in misspelt.content[0].text  # the hint names what it takes
            extra = await client.call_tool("status", {"verbose": True})
            assert extra.is_error and "hint: status takes no arguments." in extra.content[0].text
            for old_name in ("nope", ["nope"]):  # qmd 1.x's `collection`: one name, or a list
                refused = await client.call_tool("search", {"query": "quokka-7", "collection": old_name})
                assert refused.is_error and "COLLECTION_NOT_FOUND" in refused.content[0].text
            kept = await client.call_tool("search", {"query": "quokka-7", "collection": "kb"})
            assert not kept.is_error and kept.structured_content["results"]
            for odd in ({"collection": 5}, {"collection": "kb", "collections": ["kb"]}):  # typed, as REST's
                refused = await client.call_tool("search", {"query": "quokka-7", **odd})
                assert refused.is_error and "INVALID_INPUT" in refused.content[0].text, refused.content[0].text
            # Unknown names are invalid params (-32602), as the spec says; a missing document is the
            # 2025-11-25 resource-not-found code (tests/test_mcp_qmd_shapes.py has more).
            for attempt, code in ((client.call_tool("nope", {}), INVALID_PARAMS),
                                  (client.get_prompt("nope"), INVALID_PARAMS),
                                  (client.get_prompt("ask", {}), INVALID_PARAMS),  # its `question` missing
                                  (client.read_resource("qmd://kb/missing.md"), -32002)):
                with pytest.raises(MCPError) as refused:
                    await attempt
                assert refused.value.error.code == code
            # The session survives all of that.
            assert not (await client.call_tool("search", {"query": "tar"})).is_error

    run(scenario)


def _bridge(env: Env) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qmdctl.main", "mcp"], env=env.vars, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}


def _exchange(proc: subprocess.Popen[bytes], message: Any) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((message if isinstance(message, str) else json.dumps(message)).encode() + b"\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def test_garbage_gets_protocol_errors_older_clients_are_accepted_and_eof_exits(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")
    proc = _bridge(env)
    try:
        assert _exchange(proc, "this is not json")["error"]["code"] == -32700
        assert _exchange(proc, "[" * 100_000 + "]" * 100_000)["error"]["code"] == -32700  # nested to no end
        assert _exchange(proc, {"jsonrpc": "2.0", "id": 7, "nonsense": True})["error"]["code"] == -32600
        init = _exchange(proc, INITIALIZE)
        assert init["id"] == 1 and init["result"]["protocolVersion"] == "2025-06-18"  # an older client
        assert proc.stdin is not None
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        listed = _exchange(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert len(listed["result"]["tools"]) == 6
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read() == b""  # nothing but protocol on stdout
    finally:
        proc.kill()


def test_daemon_dying_mid_call_gives_backend_unavailable_then_the_session_recovers(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")
    env.stop_daemon()
    # The first daemon holds its first tool call for 30 s; the one the bridge restarts does not.
    first = subprocess.run([sys.executable, "-m", "qmdctl.main", "daemon", "start"],
                           env={**env.vars, "QMDD_FAULT_PAUSES": "mcp.tool=30"}, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    pid = env.daemon_pid()
    assert pid is not None

    async def scenario() -> None:
        async with session(env) as client:
            async def kill_soon() -> None:
                await anyio.sleep(1.0)
                os.kill(pid, signal.SIGKILL)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(kill_soon)
                held = await client.call_tool("search", {"query": "tar"})
            assert held.is_error and "BACKEND_UNAVAILABLE" in held.content[0].text
            again = await client.call_tool("search", {"query": "tar"})  # auto-restart, handshake replayed
            assert not again.is_error and again.structured_content["results"][0]["file"] == "qmd://kb/archives.md"
            assert env.daemon_pid() not in (None, pid)
            env.stop_daemon()  # a clean restart between calls is invisible
            assert not (await client.call_tool("status", {})).is_error

    run(scenario)


def test_daemon_stop_while_the_bridge_that_started_it_is_open(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")
    env.stop_daemon()

    async def scenario() -> None:
        # The bridge starts the daemon (its child, then) with the first tool call held for 2 s.
        async with session(env, {"QMDD_FAULT_PAUSES": "mcp.tool=2"}) as client:
            pid = env.daemon_pid()
            assert pid is not None
            # The SDK checks a tool's structured result against the tool's output schema, and lists the
            # tools first when it has not yet: after the held answer, that request raced the stop (and
            # lost on a loaded CI machine). Listed here, the held call is all that crosses the stop.
            await client.list_tools()
            answers = []

            async def held_call() -> None:
                answers.append(await client.call_tool("search", {"query": "tar"}))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(held_call)
                await anyio.sleep(0.5)
                # It used to linger as the bridge's zombie: `daemon stop` saw it running and gave up after
                # 30 s (TIMEOUT), and `daemon status` meanwhile said "not running".
                stop = await anyio.to_thread.run_sync(lambda: env.run("daemon", "stop", check=False))
            assert stop.returncode == 0 and f"qmdd stopped (pid {pid})" in stop.stdout, (stop.stdout, stop.stderr)
            [held] = answers  # the call in flight was answered before the daemon went
            assert not held.is_error and held.structured_content["results"][0]["file"] == "qmd://kb/archives.md"
            assert await anyio.to_thread.run_sync(_gone, pid)  # no zombie either: the bridge reaped it
        # The open session is not a request the stop waited for; its call in flight was.
        assert "stopping: no new connections; 0 request(s) and 1 MCP call(s) in flight" in \
            env.paths.log_file.read_text()

    run(scenario)


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _inspector() -> str | None:
    """The MCP Inspector CLI: from .ci/run's npm install, else installed here once (npm registry)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    for prefix in (Path(__file__).resolve().parent.parent / ".ci" / "npm", Path("/tmp/qmdd-test-npm")):
        binary = prefix / "node_modules" / ".bin" / "mcp-inspector"
        if binary.exists():
            return str(binary)
    prefix = Path("/tmp/qmdd-test-npm")
    subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                    "@modelcontextprotocol/inspector@2.12.0"], check=True, capture_output=True, timeout=600)
    return str(prefix / "node_modules" / ".bin" / "mcp-inspector")


def test_mcp_inspector_cli_lists_calls_and_reads(env: Env, kb: Path) -> None:
    inspector = _inspector()
    if inspector is None:
        pytest.skip("node/npm are not installed")
    env.run("collection", "add", str(kb), "--name", "kb")
    # The inspector starts servers with a minimal environment: what the bridge needs is passed with -e.
    passed = [arg for key in ("QMDD_HOME", "QMDD_CACHE_DIR") for arg in ("-e", f"{key}={env.vars[key]}")]
    base = [inspector, "--cli", *passed, sys.executable, "-m", "qmdctl.main", "mcp"]

    def inspect(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env.vars, capture_output=True, text=True, timeout=120)

    listed = inspect("--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} >= {"search", "query", "get"}
    called = inspect("--method", "tools/call", "--tool-name", "search", "--tool-arg", "query=spaghetti")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["structuredContent"]["results"][0]["file"] == "qmd://kb/cooking.md"
    read = inspect("--method", "resources/read", "--uri", "qmd://kb/sub/dir/deep.md")
    assert read.returncode == 0 and "quokka-7" in read.stdout
    failed = inspect("--method", "tools/call", "--tool-name", "get", "--tool-arg", "file=missing.md")
    assert failed.returncode == 5  # the inspector's exit status for a tool error


def test_the_bridge_never_imports_the_sdk(env: Env) -> None:
    probe = ("import sys, qmdctl.commands.mcp, qmdctl.main; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types', 'pydantic', 'typer')))")
    out = subprocess.run([sys.executable, "-c", probe], env=env.vars, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_requests_piped_in_are_all_answered_before_the_bridge_exits(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")
    lines = [INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
             {"jsonrpc": "2.0", "id": 3, "method": "resources/list"}]
    # stdin ends right after the last request, as with `requests.jsonl | qmdctl mcp`.
    proc = subprocess.run([sys.executable, "-m", "qmdctl.main", "mcp"], env=env.vars, capture_output=True,
                          input="".join(json.dumps(line) + "\n" for line in lines).encode(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    answers = {a["id"]: a for a in map(json.loads, proc.stdout.splitlines())}
    assert sorted(answers) == [1, 2, 3] and all("result" in a for a in answers.values())
