"""The MCP door as a qmd drop-in: qmd's content shapes and arguments, a browsable resources/list,
argument ranges, the resource-not-found code, the prompt, and hints worded for an agent on MCP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, PaginatedRequestParams

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.transports.mcp_documents import PAGE_SIZE, RESOURCE_NOT_FOUND, error_text, not_found_code
from tests.conftest import Env
from tests.test_mcp import run, session

SPORTS_THEN_WEB = ("# Notes\n\nThe performance of the athletes at the stadium was poor.\n"
                   + "".join(f"filler {i}\n" for i in range(4, 30))
                   + "The performance of the web page load in the browser was poor.\n")


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    (root / "sub").mkdir(parents=True)
    (root / "my note.md").write_text("# My Note\n\nFirst line.\nSecond line.\n")
    (root / "big.md").write_text("# Big\n\n" + "a fairly long line of text\n" * 40)
    (root / "sub" / "perf.md").write_text(SPORTS_THEN_WEB)
    return root


class RawBridge:
    """`qmdctl mcp` driven by hand, to see the JSON exactly as sent."""

    def __init__(self, env: Env) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "mcp"], env=env.vars,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "raw", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        assert answer["id"] == self.next_id
        return answer

    def tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        answer = self.request("tools/call", {"name": name, "arguments": arguments})
        result: dict[str, Any] = answer["result"]
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def bridge(env: Env, kb: Path) -> Any:
    env.run("collection", "add", str(kb), "--name", "kb")
    env.run("context", "add", "qmd://kb/", "Personal notes")
    raw = RawBridge(env)
    yield raw
    raw.close()


def test_get_answers_a_qmd_resource_block_beside_the_structured_document(bridge: RawBridge) -> None:
    got = bridge.tool("get", file="kb/my note.md")
    body = got["structuredContent"]["body"]  # raw, as before
    assert body.startswith("# My Note\n\nFirst line.\nSecond line.")
    numbered = "\n".join(f"{i}: {line}" for i, line in enumerate(body.split("\n"), 1))
    assert numbered.startswith("1: # My Note\n2: \n3: First line.\n4: Second line.")
    # qmd's block: the URI encoded segment by segment, markdown, numbered lines under the context.
    assert got["content"] == [{"type": "resource", "resource": {
        "uri": "qmd://kb/my%20note.md", "mimeType": "text/markdown",
        "text": f"<!-- Context: Personal notes -->\n\n{numbered}"}}]
    assert got["structuredContent"]["file"] == "qmd://kb/my note.md" and got["structuredContent"]["title"] == "My Note"

    ranged = bridge.tool("get", file="kb/my note.md:3", maxLines=1)
    assert ranged["content"][0]["resource"]["text"].split("\n\n", 1)[1] == "3: First line."  # no phantom "4: "
    head = bridge.tool("get", file="kb/my note.md", fromLine=1, maxLines=2)
    assert head["content"][0]["resource"]["text"].endswith("-->\n\n1: # My Note\n2: ")
    assert head["structuredContent"]["body"] == "# My Note\n\n"  # the lines as the file has them
    raw = bridge.tool("get", file="kb/my note.md", fromLine=3, lineNumbers=False)
    assert raw["content"][0]["resource"]["text"].split("\n\n", 1)[1].startswith("First line.\nSecond line.")


def test_multi_get_answers_resource_blocks_and_qmd_skip_notes(bridge: RawBridge) -> None:
    both = bridge.tool("multi_get", pattern="kb/big.md,kb/my note.md", maxBytes=200, maxLines=2)
    skipped, read = both["content"]
    assert skipped == {"type": "text", "text": "[SKIPPED: kb/big.md - File too large (1,087 bytes > 200 bytes). "
                                               "Use 'get' with file=\"kb/big.md\" to retrieve.]"}
    assert read["resource"]["uri"] == "qmd://kb/my%20note.md" and read["resource"]["mimeType"] == "text/markdown"
    assert read["resource"]["text"].endswith("1: # My Note\n2: \n3: \n4: [... truncated 2 more lines]")
    documents = both["structuredContent"]["documents"]
    assert documents[0]["skipped"] is True and "qmdctl" not in documents[0]["reason"]
    assert documents[1]["body"].startswith("# My Note\n")

    default = bridge.tool("multi_get", pattern="kb/big.md", lineNumbers=False)  # qmd's 64 KiB default
    assert default["content"][0]["resource"]["text"].startswith("<!-- Context: Personal notes -->\n\n# Big\n\na fairly")


def test_multi_get_hands_an_agent_at_most_100_documents_and_counts_the_rest(env: Env, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(130):
        (many / f"page{i:03}.md").write_text(f"# Page {i}\n\ntext {i}\n")
    env.run("collection", "add", str(many), "--name", "many")

    async def scenario() -> None:
        async with session(env) as client:
            answer = await client.call_tool("multi_get", {"pattern": "many/*.md"})
            assert not answer.is_error
            documents = answer.structured_content["documents"]
            assert len(documents) == 100 and documents[0]["file"] == "qmd://many/page000.md"
            assert answer.structured_content["more"] == 30 and "30 more documents" in answer.content[-1].text

    run(scenario)
    assert len(env.json("multi-get", "many/*.md")) == 130  # the CLI reads what it is asked for


def test_out_of_range_arguments_are_errors_and_a_limit_above_the_cap_is_a_warning(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        async with session(env) as client:
            for tool, arguments, field in (
                    ("search", {"query": "line", "limit": 0}, "limit"),
                    ("search", {"query": "line", "limit": -1}, "limit"),
                    ("query", {"query": "line", "limit": 0}, "limit"),
                    ("search", {"query": "line", "minScore": 1.5}, "minScore"),
                    ("vsearch", {"query": "line", "minScore": -0.1}, "minScore"),
                    ("query", {"query": "line", "candidateLimit": 0}, "candidateLimit"),
                    ("get", {"file": "kb/my note.md", "maxLines": -1}, "maxLines"),
                    ("get", {"file": "kb/my note.md", "maxLines": 0}, "maxLines"),
                    ("get", {"file": "kb/my note.md", "fromLine": -3}, "fromLine"),
                    ("multi_get", {"pattern": "kb/*.md", "maxBytes": 0}, "maxBytes")):
                refused = await client.call_tool(tool, arguments)
                assert refused.is_error, (tool, arguments)
                text = refused.content[0].text
                assert text.startswith("INVALID_INPUT") and field in text and "inputSchema" in text, text
            capped = await client.call_tool("search", {"query": "line", "limit": 100000})
            assert not capped.is_error
            assert any(w.startswith("LIMIT_CAPPED") and "100" in w for w in capped.structured_content["warnings"])
            both = await client.call_tool("query", {"query": "line", "searches": [{"type": "lex", "query": "x"}]})
            assert both.is_error and "mutually exclusive" in both.content[0].text

    run(scenario)


def test_query_takes_qmds_arguments_and_intent_steers_without_searching(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        async with session(env) as client:
            base = {"query": "performance", "rerank": False, "candidateLimit": 5, "collections": ["kb"]}
            plain = await client.call_tool("query", base)
            steered = await client.call_tool("query", {**base, "intent": "web page load times in browsers"})
            assert not plain.is_error and not steered.is_error
            assert plain.structured_content["results"][0]["line"] == 3  # the first line holding the term
            assert steered.structured_content["results"][0]["line"] == 30  # the line the intent is about
            alone = await client.call_tool("query", {"query": "zebra", "intent": "web page load", "rerank": False})
            assert not alone.is_error and alone.structured_content["results"] == []

    run(scenario)


def test_resources_list_pages_through_every_document_and_each_reads(env: Env, kb: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(PAGE_SIZE + 20):
        (many / f"n{i:03}.md").write_text(f"# Note {i}\n\nbody {i}\n")
    exact = tmp_path / "exact"  # a collection that fills the first page exactly, with more after it
    exact.mkdir()
    for i in range(PAGE_SIZE):
        (exact / f"e{i:03}.md").write_text(f"# Exact {i}\n")
    env.run("collection", "add", str(kb), "--name", "kb")
    env.run("collection", "add", str(many), "--name", "many")
    env.run("collection", "add", str(exact), "--name", "a0")

    async def scenario() -> None:
        async with session(env) as client:
            assert "resources" in (await client.initialize()).capabilities.model_dump(exclude_none=True)
            pages, cursor = [], None
            while True:
                page = await client.list_resources(params=PaginatedRequestParams(cursor=cursor))
                pages.append(page.resources)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert [len(p) for p in pages] == [PAGE_SIZE, PAGE_SIZE, 23]
            assert {r.name.split("/")[0] for r in pages[0]} == {"a0"}
            listed = [r for p in pages for r in p]
            assert len({r.uri for r in listed}) == 2 * PAGE_SIZE + 23
            assert listed[PAGE_SIZE].name == "kb/big.md" and listed[-1].name == f"many/n{PAGE_SIZE + 19:03}.md"
            assert all(r.mime_type == "text/markdown" for r in listed)
            note = next(r for r in listed if r.name == "kb/my note.md")
            assert note.uri == "qmd://kb/my%20note.md" and note.title == "My Note"
            assert (await client.read_resource(note.uri)).contents[0].text.startswith("# My Note")
            hostile = ["not-a-cursor", *(base64.urlsafe_b64encode(raw).decode() for raw in (
                b"5", b"null", b'["kb", 3]', b"[" * 100_000 + b"]" * 100_000))]
            for cursor in hostile:
                with pytest.raises(MCPError) as bad_cursor:
                    await client.list_resources(params=PaginatedRequestParams(cursor=cursor))
                assert bad_cursor.value.error.code == INVALID_PARAMS

    run(scenario)


def test_a_missing_resource_answers_the_not_found_code_of_the_sessions_protocol(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        async with session(env) as client:  # negotiates 2025-11-25, whose code is -32002
            for uri in ("qmd://kb/missing.md", "qmd://nope/x.md", "file:///etc/hostname"):
                with pytest.raises(MCPError) as missing:
                    await client.read_resource(uri)
                assert missing.value.error.code == RESOURCE_NOT_FOUND, uri
                assert missing.value.error.data == {"uri": uri}

    run(scenario)
    assert not_found_code("2025-06-18") == not_found_code("2025-11-25") == RESOURCE_NOT_FOUND
    assert not_found_code("2026-07-28") == INVALID_PARAMS  # SEP-2164


def test_the_advertised_prompt_exists_and_unknown_ones_are_invalid_params(env: Env, kb: Path) -> None:
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        async with session(env) as client:
            prompts = (await client.list_prompts()).prompts
            assert [p.name for p in prompts] == ["ask"]
            assert [(a.name, a.required) for a in prompts[0].arguments or ()] == [("question", True)]
            asked = await client.get_prompt("ask", {"question": "when is the quokka fed?"})
            text = asked.messages[0].content.text
            assert "when is the quokka fed?" in text and "`query`" in text and "`get`" in text
            with pytest.raises(MCPError) as unknown:
                await client.get_prompt("nope")
            assert unknown.value.error.code == INVALID_PARAMS

    run(scenario)


def test_hints_inside_mcp_name_tools_not_cli_commands(env: Env, kb: Path) -> None:
    for code in ErrorCode:
        text = error_text(QmddError(code, "message"))
        assert "--help" not in text and "qmdctl ls" not in text and "qmdctl collection list" not in text, text
        for line in text.splitlines():  # what is left for the user to run is marked as theirs
            assert "`qmdctl" not in line or line.endswith("(a command for the user: no MCP tool does it)"), line
    env.run("collection", "add", str(kb), "--name", "kb")

    async def scenario() -> None:
        async with session(env) as client:
            missing = await client.call_tool("get", {"file": "qmd://kb/nowhere.md"})
            assert missing.is_error and "qmdctl" not in missing.content[0].text
            assert "resources/list" in missing.content[0].text
            no_collection = await client.call_tool("search", {"query": "x", "collections": ["nope"]})
            assert "Call the `status` tool" in no_collection.content[0].text

    run(scenario)
