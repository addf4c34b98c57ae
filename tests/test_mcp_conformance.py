"""MCP over HTTP (`/mcp`) against the official MCP conformance suite (@modelcontextprotocol/conformance,
server side), run on a real daemon with the `notes` fixture indexed.

The suite's server scenarios are written for its own "everything" test server: most of them call a
tool, resource or prompt that only that server has (`test_simple_text`, `test://static-text`,
`test_simple_prompt`, ...). Those cannot apply to qmdd and are listed, with the reason, in NOT_APPLICABLE;
the rest run here and must pass. The suite's client sends no Authorization header (it has no option for
one), so a small forwarding proxy in this file adds the daemon's bearer token to each request; it passes
everything else, Host and Origin included, through as it is, so the door's own checks still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from qmdd.tokens import read_token
from tests.conftest import Env

VERSION = "0.1.16"  # as .ci/run installs it
PACKAGE = Path("node_modules") / "@modelcontextprotocol" / "conformance"
PREFIXES = (Path(__file__).resolve().parent.parent / ".ci" / "npm", Path("/tmp/qmdd-test-npm"))
SCENARIO_TIMEOUT_S = 30  # each takes about a second

# Scenarios that need nothing but what any MCP server over streamable HTTP offers (or what qmdd offers).
APPLICABLE = (
    "server-initialize",            # initialize + initialized, through the SDK client
    "ping",                         # ping answers {}
    "tools-list",                   # every tool has a name, a description and an inputSchema
    "resources-list",               # resources/list answers a well-formed list (qmdd has templates only)
    "prompts-list",                 # the SDK declares `prompts` for every server: qmdd's list is empty
    "server-sse-multiple-streams",  # three concurrent POSTs in one session, each answered (SSE or JSON)
    "dns-rebinding-protection",     # a foreign Host/Origin gets a 4xx, a loopback one a 2xx
)

_EVERYTHING = "calls a tool, resource or prompt that only the suite's 'everything' test server has"
NOT_APPLICABLE = {
    "tools-call-simple-text": f"{_EVERYTHING}: tool test_simple_text",
    "tools-call-image": f"{_EVERYTHING}: tool test_image_content",
    "tools-call-audio": f"{_EVERYTHING}: tool test_audio_content",
    "tools-call-embedded-resource": f"{_EVERYTHING}: tool test_embedded_resource",
    "tools-call-mixed-content": f"{_EVERYTHING}: tool test_multiple_content_types",
    "tools-call-with-logging": f"{_EVERYTHING}: tool test_tool_with_logging (and qmdd sends no log messages)",
    "tools-call-with-progress": f"{_EVERYTHING}: tool test_tool_with_progress",
    "tools-call-error": f"{_EVERYTHING}: tool test_error_handling (an unknown tool must not count as its error)",
    "tools-call-sampling": f"{_EVERYTHING}: tool test_sampling (qmdd never asks the client to sample)",
    "tools-call-elicitation": f"{_EVERYTHING}: tool test_elicitation (qmdd never elicits)",
    "elicitation-sep1034-defaults": f"{_EVERYTHING}: tool test_elicitation_sep1034_defaults",
    "elicitation-sep1330-enums": f"{_EVERYTHING}: tool test_elicitation_sep1330_enums",
    "json-schema-2020-12": f"{_EVERYTHING}: tool json_schema_2020_12_tool",
    "server-sse-polling": f"{_EVERYTHING}: tool test_reconnection, which closes its SSE stream mid-call",
    "resources-read-text": f"{_EVERYTHING}: resource test://static-text",
    "resources-read-binary": f"{_EVERYTHING}: resource test://static-binary",
    "resources-templates-read": f"{_EVERYTHING}: template test://template/{{id}}/data",
    "resources-subscribe": f"{_EVERYTHING}: resource test://watched-resource; qmdd offers no subscriptions",
    "resources-unsubscribe": f"{_EVERYTHING}: resource test://watched-resource; qmdd offers no subscriptions",
    "prompts-get-simple": f"{_EVERYTHING}: prompt test_simple_prompt",
    "prompts-get-with-args": f"{_EVERYTHING}: prompt test_prompt_with_arguments",
    "prompts-get-embedded-resource": f"{_EVERYTHING}: prompt test_prompt_with_embedded_resource",
    "prompts-get-with-image": f"{_EVERYTHING}: prompt test_prompt_with_image",
    "completion-complete": f"{_EVERYTHING}: prompt test_prompt_with_arguments; no `completions` capability",
    "logging-set-level": "qmdd sends no log messages to clients (no `logging` capability)",
}

# Node < 22 has no fs.globSync, which the bundle imports by name (for a command run here never: it
# globs result files) and so fails to load at all. Where it is missing, a module hook gives that import a
# stand-in that throws; everything else comes from the real `fs`.
_FS_HOOKS = """\
export async function resolve(specifier, context, next) {
  if ((specifier === 'fs' || specifier === 'node:fs') && context.parentURL !== 'qmdd-shim:fs')
    return { url: 'qmdd-shim:fs', shortCircuit: true };
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (url !== 'qmdd-shim:fs') return next(url, context);
  return { format: 'module', shortCircuit: true, source:
    "import fs from 'node:fs'; export * from 'node:fs'; export default fs;\\n" +
    "export const globSync = fs.globSync ?? (() => { throw new Error('fs.globSync needs Node 22'); });" };
}
"""
_FS_REGISTER = "import { register } from 'node:module';\nregister('./fs-hooks.mjs', import.meta.url);\n"


def _conformance(tmp_path: Path) -> list[str]:
    """The command line that runs the suite's CLI with this node, or a skip."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    entry = next((prefix / PACKAGE / "dist" / "index.js" for prefix in PREFIXES
                  if (prefix / PACKAGE / "dist" / "index.js").exists()), None)
    if entry is None:
        pytest.skip(f"@modelcontextprotocol/conformance is not installed: npm install --prefix .ci/npm "
                    f"@modelcontextprotocol/conformance@{VERSION} (as .ci/run does)")
    installed = json.loads((entry.parent.parent / "package.json").read_text())["version"]
    assert installed == VERSION, f"conformance {installed} is installed, the scenario lists here are for {VERSION}"
    probe = subprocess.run([node, "-e", "const [a, b] = process.versions.node.split('.').map(Number);"
                            "process.exit(a > 20 || (a === 20 && b >= 6) ? (require('fs').globSync ? 0 : 3) : 4)"],
                           capture_output=True, timeout=30)
    if probe.returncode == 4:
        pytest.skip("node is older than 20.6 (the conformance suite needs a newer one)")
    if probe.returncode == 0:
        return [node, str(entry)]
    assert probe.returncode == 3, probe.stderr
    (tmp_path / "fs-hooks.mjs").write_text(_FS_HOOKS)
    (tmp_path / "fs-register.mjs").write_text(_FS_REGISTER)
    return [node, "--import", (tmp_path / "fs-register.mjs").as_uri(), str(entry)]


class BearerProxy:
    """A loopback TCP proxy that adds `Authorization: Bearer TOKEN` to each HTTP request it forwards.

    One request per connection: the proxy sets `Connection: close` on the request, so the daemon closes
    the connection after its answer and the client opens a new one for the next request; the bytes after
    the request head (the body; SSE streams coming back) are piped as they are, both ways, until either
    side closes, which then closes the other (a client that drops a GET stream drops it at the daemon)."""

    def __init__(self, upstream_port: int, token: str) -> None:
        self.upstream_port = upstream_port
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="bearer-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> BearerProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self.loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            connections = asyncio.all_tasks() - {asyncio.current_task()}
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _head(self, head: bytes) -> bytes:
        request_line, *fields = head.decode("latin-1").split("\r\n")
        kept = [f for f in fields if f and f.split(":", 1)[0].strip().lower() not in ("authorization", "connection")]
        return "\r\n".join([request_line, *kept, f"Authorization: Bearer {self.token}", "Connection: close",
                            "", ""]).encode("latin-1")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            upstream.write(self._head(head))

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()

            # Whichever side stops first ends the exchange (the daemon takes a client's half-close for
            # a disconnect too).
            pipes = {asyncio.ensure_future(pipe(reader, upstream)), asyncio.ensure_future(pipe(up_reader, writer))}
            done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.exception()  # a connection reset is one way to stop, not an error here
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()


class McpDoor(NamedTuple):
    url: str  # /mcp through the proxy that adds the token
    direct_url: str  # /mcp at the daemon itself


@pytest.fixture
def mcp_door(env: Env, notes: Path) -> Iterator[McpDoor]:
    """A daemon serving HTTP on a free loopback port with `notes` indexed, its /mcp behind the proxy."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"  # the suite sends more than a burst
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    port = httpx.URL(started["http"]).port
    assert port is not None
    with BearerProxy(port, read_token(env.paths)) as proxy:
        yield McpDoor(f"http://127.0.0.1:{proxy.port}/mcp", f"http://127.0.0.1:{port}/mcp")


def _capabilities(url: str) -> dict[str, Any]:
    """What qmdd's initialize declares: the not-applicable reasons above that rest on a missing capability
    are checked against it."""
    answer = httpx.post(url, timeout=30, headers={"accept": "application/json, text/event-stream"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}}})
    assert answer.status_code == 200, answer.text
    data = next(line[5:] for line in answer.text.splitlines() if line.startswith("data:")) \
        if answer.headers["content-type"].startswith("text/event-stream") else answer.text
    capabilities: dict[str, Any] = json.loads(data)["result"]["capabilities"]
    ended = httpx.delete(url, timeout=30, headers={"mcp-session-id": answer.headers["mcp-session-id"]})
    assert ended.status_code == 200, ended.text
    return capabilities


@pytest.fixture
def conformance(tmp_path: Path) -> list[str]:
    return _conformance(tmp_path)


def test_the_scenario_lists_cover_the_suite(conformance: list[str]) -> None:
    """Each server scenario of the installed suite is either run here or set aside with its reason."""
    listed = subprocess.run([*conformance, "list", "--server"], capture_output=True, text=True, timeout=60, check=True)
    scenarios = {line.strip()[2:].split(" ")[0] for line in listed.stdout.splitlines()
                 if line.strip().startswith("- ")}
    assert scenarios == set(APPLICABLE) | set(NOT_APPLICABLE)
    assert not set(APPLICABLE) & set(NOT_APPLICABLE)


def test_mcp_over_http_passes_the_conformance_suite(conformance: list[str], mcp_door: McpDoor, tmp_path: Path
                                                     ) -> None:
    capabilities = _capabilities(mcp_door.url)
    assert {"tools", "resources", "prompts"} <= set(capabilities)
    assert not {"completions", "logging"} & set(capabilities)
    assert not capabilities["resources"].get("subscribe")

    # The proxy is the only way in without the token: the door itself still refuses it.
    assert httpx.post(mcp_door.direct_url, json={}, timeout=30).status_code == 401

    failures = []
    for scenario in APPLICABLE:
        out = tmp_path / "results"
        started = time.monotonic()
        run = subprocess.run([*conformance, "server", "--url", mcp_door.url, "--scenario", scenario, "-o", str(out)],
                             capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S, cwd=tmp_path)
        checks_file = next(out.glob(f"server-{scenario}-*/checks.json"), None)
        checks = json.loads(checks_file.read_text()) if checks_file else []
        failed = [c for c in checks if c["status"] not in ("SUCCESS", "INFO")]  # a WARNING fails here too
        if run.returncode != 0 or failed or not any(c["status"] == "SUCCESS" for c in checks):
            failures.append(f"{scenario} (exit {run.returncode}, {time.monotonic() - started:.1f} s):\n"
                            + (json.dumps(failed, indent=1) if failed else run.stdout[-3000:] + run.stderr[-3000:]))
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(out)
    assert not failures, "\n\n".join(failures)
