"""The HTTP door against a real daemon, with a real HTTP client (httpx): the same answers as the socket,
the token on everything but /health, loopback-only Host and Origin, problem details for bad input."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.tokens import read_token
from qmdd.transports.http import MAX_BODY_BYTES
from tests.conftest import Env


@pytest.fixture
def door(env: Env, notes: Path) -> Iterator[httpx.Client]:
    """A daemon serving HTTP on a free loopback port, `notes` indexed; a client carrying its token (no rate
    limit: these tests send more than a burst)."""
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    url = started["http"]
    assert url is not None and url.startswith("http://127.0.0.1:")
    assert env.paths.http_token.stat().st_mode & 0o777 == 0o600
    token = read_token(env.paths)
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, f"urn:qmdd:error:{code}")
    assert body["recovery_hints"] and body["trace_id"] == response.headers["x-trace-id"]
    return body


def test_search_answers_as_the_socket_does(door: httpx.Client, env: Env) -> None:
    over_http = door.post("/search", json={"query": "sqlite wal", "collection": "notes", "limit": 3})
    assert over_http.status_code == 200, over_http.text
    over_socket = env.client().call("search", {"query": "sqlite wal", "collections": ["notes"], "limit": 3})
    assert over_http.json() == over_socket
    assert [r["file"] for r in over_http.json()["results"]] == ["qmd://notes/beta.md"]
    # qmd's field names are accepted beside ours.
    assert door.post("/search", json={"query": "gnome", "minScore": 0.99}).json()["results"] == []


def test_long_result_lists_come_back_whole(door: httpx.Client, env: Env, notes: Path) -> None:
    for i in range(620):  # above the 500 a reply streams in parts
        (notes / f"bulk{i}.md").write_text(f"# Bulk {i}\n\nzebra number {i}\n")
    env.run("update")
    answer = door.post("/search", json={"query": "zebra", "limit": 1000}).json()
    assert len(answer["results"]) == 620 and "streamed" not in answer


def test_documents_collections_stats_and_health(door: httpx.Client) -> None:
    doc = door.get("/documents/notes/projects/gamma.md", params={"from_line": 6, "max_lines": 2}).json()
    assert (doc["file"], doc["from_line"], doc["body"]) == ("qmd://notes/projects/gamma.md", 6,
                                                             "\nQuarterly plan: ship the daemon.\n")
    by_docid = door.get(f"/documents/{doc['docid'].replace('#', '%23')}").json()
    assert by_docid["file"] == doc["file"]
    assert [c["name"] for c in door.get("/collections").json()] == ["notes"]
    stats = door.get("/stats").json()
    assert stats["rpc"]["http"]["requests"] >= 4
    health = httpx.get(f"{str(door.base_url).rstrip('/')}/health")  # no token needed
    assert health.json()["status"] == "ok"


def test_the_token_is_required_and_rotates(door: httpx.Client, env: Env) -> None:
    url = str(door.base_url).rstrip("/")
    problem(httpx.get(f"{url}/collections"), 401, "UNAUTHORIZED")
    assert httpx.get(f"{url}/collections").headers["www-authenticate"].startswith("Bearer")
    problem(httpx.get(f"{url}/collections", headers={"authorization": "Bearer nope"}), 401, "UNAUTHORIZED")
    problem(httpx.post(f"{url}/search", json={"query": "x"}, headers={"authorization": "Basic eDp5"}), 401,
            "UNAUTHORIZED")
    rotated = env.json("http", "token", "--rotate")
    assert rotated["rotated"] and rotated["url"] == url
    problem(door.get("/collections"), 401, "UNAUTHORIZED")  # the old token stops working at once
    fresh = httpx.get(f"{url}/collections", headers={"authorization": f"Bearer {rotated['token']}"})
    assert fresh.status_code == 200
    assert env.run("http", "token").stdout.strip() == rotated["token"]


def test_loopback_door_refuses_foreign_hosts_and_origins(door: httpx.Client) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host and Origin."""
    problem(door.get("/collections", headers={"host": "evil.example"}), 403, "PERMISSION_DENIED")
    problem(door.post("/search", json={"query": "x"}, headers={"origin": "http://evil.example"}), 403,
            "PERMISSION_DENIED")
    port = door.base_url.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert door.get("/collections", headers={"host": host, "origin": f"http://{host}"}).status_code == 200


def test_bad_requests_get_problem_details_and_the_door_stays_up(door: httpx.Client) -> None:
    wrong = door.delete("/search")  # typed, as the README promises every error is, with Allow
    assert problem(wrong, 405, "METHOD_NOT_ALLOWED") and wrong.headers["allow"] == "POST"
    assert problem(door.post("/collections"), 405, "METHOD_NOT_ALLOWED")["details"]["allow"] == "GET, HEAD"
    problem(door.post("/search", content=b"{not json"), 400, "INVALID_INPUT")
    deep = problem(door.post("/search", content=b"[" * 100_000 + b"]" * 100_000), 400, "INVALID_INPUT")
    assert "nested too deeply" in deep["detail"]  # it was a 500 (RecursionError)
    problem(door.post("/search", json=["query"]), 400, "INVALID_INPUT")
    problem(door.post("/search", json={}), 400, "INVALID_INPUT")  # query is required
    misspelt = problem(door.post("/search", json={"query": "x", "colections": ["notes"]}), 400, "INVALID_INPUT")
    assert "'colections'" in misspelt["detail"] and "'collections'" in misspelt["detail"]
    assert "/openapi.json" in misspelt["recovery_hints"][0]
    problem(door.post("/search", json={"query": "x", "cwd": "/etc"}), 400, "INVALID_INPUT")
    problem(door.post("/search", json={"query": "x", "limit": "many"}), 400, "INVALID_INPUT")
    for candidates in (-5, 0, 1001):  # refused as the CLI refuses them, not clamped
        assert "between 1 and 1000" in problem(door.post("/query", json={"query": "x", "candidates": candidates}),
                                               400, "INVALID_INPUT")["detail"]
    problem(door.post("/search", json={"query": "x", "collection": "nope"}), 404, "COLLECTION_NOT_FOUND")
    problem(door.post("/search", content=b" " * (MAX_BODY_BYTES + 1)), 413, "FRAME_TOO_LARGE")
    problem(door.get("/documents/notes/missing.md"), 404, "NOT_FOUND")
    problem(door.get("/documents/notes/alpha.md", params={"max_lines": "-1"}), 400, "INVALID_INPUT")
    assert "max_line" in problem(door.get("/documents/notes/alpha.md", params={"max_line": "5"}), 400,
                                 "INVALID_INPUT")["detail"]  # misspelt: it used to return the whole file
    problem(door.get("/documents/"), 400, "INVALID_INPUT")  # it said "Collection not found: "
    assert door.get("/search").status_code == 405
    assert door.get("/no/such/endpoint").status_code == 404
    assert door.post("/search", json={"query": "alpha"}).json()["results"]


def test_inputs_found_by_fuzzing_get_problem_details_not_server_errors(door: httpx.Client) -> None:
    """Found by the schemathesis run (tests/test_openapi.py) or next to what it found; each was a 500 (or
    crashed the embedder), a reply that was not problem details, or a value silently dropped."""
    for method in ("search", "vsearch", "query"):
        problem(door.post(f"/{method}", content=b'{"query": "alpha \\ud800"}'), 400, "INVALID_INPUT")
        problem(door.post(f"/{method}", content=b'{"query": "a", "min_score": 1' + b"0" * 400 + b"}"), 400,
                "INVALID_INPUT")
        problem(door.post(f"/{method}", content=b'{"query": "alpha", "minScore": NaN}'), 400, "INVALID_INPUT")
        for odd in ({"min_score": 7}, {"minScore": -3}, {"snippet_lines": -1}):  # as the CLI and MCP refuse
            problem(door.post(f"/{method}", json={"query": "alpha", **odd}), 400, "INVALID_INPUT")
        problem(door.post(f"/{method}", json={"query": "a", "collection": ["notes"], "collections": [1]}), 400,
                "INVALID_INPUT")
    problem(door.post("/search", content=b'{"query": "alpha", "path_prefix": "\\udcff"}'), 400, "INVALID_INPUT")
    problem(door.get("/documents/notes/alpha.md", params={"from_line": "\u00b2"}), 400, "INVALID_INPUT")
    problem(door.get("/documents/notes/al%0Apha.md"), 404, "NOT_FOUND")  # no route matches a newline
    assert door.post("/query", json={"query": "alpha", "collection": "notes"}).json()["results"]


def test_clients_that_leave_mid_request_never_stop_the_door(door: httpx.Client) -> None:
    """Garbage, bodies cut short, bodies declared huge, each half-closed at once: every connection ends
    one way or another, the door keeps serving, and nothing is logged as a bug."""
    auth = f"Authorization: {door.headers['authorization']}\r\n".encode()
    post = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    sends = [b"\x00\xffGARBAGE\r\n\r\n", post + auth + b"Content-Length: 999999999\r\n\r\n",
             post + b"Content-Length: 99\r\n\r\n{", post + auth + b"Content-Length: 50\r\n\r\n{\"query\"",
             post + auth + b"Content-Length: 2097152\r\n\r\n" + b" " * (MAX_BODY_BYTES + 4096)]
    for i in range(60):
        with socket.create_connection((door.base_url.host, door.base_url.port), timeout=10) as raw, \
                contextlib.suppress(OSError):
            raw.sendall(sends[i % len(sends)])
            raw.shutdown(socket.SHUT_WR)
            raw.recv(4096)
    assert door.post("/search", json={"query": "alpha"}).json()["results"]
    assert door.get("/stats").json()["rpc"]["http"]["errors"].get("INTERNAL", 0) == 0


def test_the_daemon_refuses_to_start_on_a_port_in_use(env: Env) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = env.run("daemon", "start", "--http", f"127.0.0.1:{port}", check=False)
    assert proc.returncode != 0
    assert "CONFIG_ERROR" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_a_bad_listen_value_is_a_config_error(env: Env) -> None:
    (env.paths.config_file.parent).mkdir(parents=True, exist_ok=True)
    env.paths.config_file.write_text('[http]\nlisten = "no-port"\n')
    proc = env.run("daemon", "start", check=False)
    assert proc.returncode != 0 and "http_listen" in proc.stderr, proc.stderr
    # The flag's value is refused as the flag's, before any daemon starts (it would name the variable
    # the flag is passed as, which the user never set).
    proc = env.run("daemon", "start", "--http", "notahost", check=False)
    assert proc.returncode == ErrorCode.INVALID_INPUT.spec.exit_code, proc.stderr
    assert "--http 'notahost'" in proc.stderr and "QMDD_HTTP_LISTEN" not in proc.stderr
    env.paths.config_file.write_text('[http]\nlisten = "127.0.0.1:0"\n')
    started = env.json("daemon", "start")
    assert json.dumps(started["http"]).startswith('"http://127.0.0.1:')


def test_a_server_that_ends_is_started_again_on_the_same_socket(env: Env, notes: Path) -> None:
    env.vars["QMDD_FAULTS"] = "http.server=2"
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    token = read_token(env.paths)
    with httpx.Client(base_url=started["http"], headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        for _ in range(200):  # the two restarts take a pause of 50 ms each
            with contextlib.suppress(httpx.TransportError):
                if client.get("/stats").json()["rpc"]["http"]["restarts"] == 2:
                    break
            time.sleep(0.05)
        stats = client.get("/stats").json()["rpc"]["http"]
    assert stats["restarts"] == 2
    assert "HTTP server ended" in (env.paths.log_file.read_text())


def test_mcp_over_http_serves_the_same_tools(door: httpx.Client) -> None:
    """The official SDK's streamable-HTTP client, under trio: initialize, list the tools, call one; and
    the endpoint takes the same token as the rest."""
    import httpx2
    import trio
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    url = str(door.base_url).rstrip("/") + "/mcp"
    refused = httpx.post(url, json={})  # a JSON-RPC error, which MCP clients hand to their caller
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["message"].startswith("UNAUTHORIZED: ")

    async def session() -> tuple[str, list[str], Any]:
        with trio.fail_after(60):
            async with httpx2.AsyncClient(headers={"authorization": door.headers["authorization"]},
                                          timeout=30) as http_client, \
                    streamable_http_client(url, http_client=http_client) as streams, \
                    ClientSession(streams[0], streams[1]) as client:
                init = await client.initialize()
                tools = await client.list_tools()
                found = await client.call_tool("search", {"query": "sqlite wal", "collections": ["notes"]})
                return init.instructions or "", [t.name for t in tools.tools], found.structured_content

    instructions, tools, found = trio.run(session)
    assert "- notes (qmd://notes/)" in instructions
    assert set(tools) == {"search", "vsearch", "query", "get", "multi_get", "status"}
    assert [r["file"] for r in found["results"]] == ["qmd://notes/beta.md"]


def test_a_client_past_its_burst_gets_429_with_retry_after(env: Env, notes: Path) -> None:
    env.vars.update(QMDD_HTTP_BURST="3", QMDD_HTTP_RATE_PER_MINUTE="6")  # then one per 10 s
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    token = read_token(env.paths)
    with httpx.Client(base_url=started["http"], headers={"authorization": f"Bearer {token}"}) as client:
        assert [client.get("/collections").status_code for _ in range(3)] == [200, 200, 200]
        limited = client.get("/collections")
        body = problem(limited, 429, "RATE_LIMITED")
        retry = int(limited.headers["retry-after"])
        assert 1 <= retry <= 10 and body["details"]["retry_after"] == retry
        assert client.get("/health").status_code == 200  # never limited
        assert client.get("/collections", headers={"authorization": "Bearer wrong"}).status_code == 401
    # The socket's clients are not limited.
    assert all(env.client().call("ping")["pong"] for _ in range(20))
    assert env.client().call("status")["rpc"]["http"]["rate_limited"] == 1


def test_an_mcp_session_spends_its_rate_on_tool_calls_and_its_opening_and_reads_the_refusal(env: Env,
                                                                                           notes: Path) -> None:
    import httpx2
    import trio
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    env.vars.update(QMDD_HTTP_BURST="3", QMDD_HTTP_RATE_PER_MINUTE="6")
    url = env.json("daemon", "start", "--http", "127.0.0.1:0")["http"].rstrip("/") + "/mcp"
    env.run("collection", "add", str(notes), "--name", "notes")
    token = read_token(env.paths)

    def open_sessions() -> int:
        return int(env.client().call("status")["rpc"]["mcp"]["open_http_sessions"])

    async def session() -> MCPError:
        with trio.fail_after(60):
            async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http_client, \
                    streamable_http_client(url, http_client=http_client) as streams, \
                    ClientSession(streams[0], streams[1]) as client:
                await client.initialize()  # opens a session: counted
                for _ in range(3):  # protocol: not counted
                    await client.list_tools()
                for _ in range(2):  # the rest of the burst
                    assert not (await client.call_tool("search", {"query": "sqlite"})).is_error
                assert open_sessions() == 1
                with pytest.raises(MCPError) as caught:
                    await client.call_tool("search", {"query": "sqlite"})
                await client.list_tools()  # still served
                return caught.value

    refused = trio.run(session)
    assert refused.error.message.startswith("RATE_LIMITED: ") and 1 <= refused.error.data["retry_after"] <= 10
    assert open_sessions() == 0  # the client closed its session
    # Opening sessions in a loop (10,000 filled the SDK's table in 40 s) meets the same limit.
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                             "clientInfo": {"name": "c", "version": "1"}}}
    with httpx.Client(headers={"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"},
                      timeout=30) as client:
        opened = client.post(url, json=initialize)
        assert opened.status_code == 429 and opened.json()["error"]["data"]["code"] == "RATE_LIMITED"
    assert open_sessions() == 0


def test_metrics_over_http_and_the_socket(door: httpx.Client, env: Env) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    door.post("/search", json={"query": "alpha"})
    door.post("/search", json={"query": "x", "collection": "nope"})  # COLLECTION_NOT_FOUND
    env.client().call("search", {"query": "beta"})
    scraped = door.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    assert samples[("qmdd_requests_total", (("door", "http"), ("method", "search")))] == 2
    assert samples[("qmdd_requests_total", (("door", "socket"), ("method", "search")))] >= 1
    assert samples[("qmdd_errors_total", (("code", "COLLECTION_NOT_FOUND"), ("door", "http")))] == 1
    assert samples[("qmdd_request_seconds_count", (("door", "http"), ("method", "search")))] == 2
    assert samples[("qmdd_actor", (("part", "bm25"), ("statistic", "handled")))] >= 3
    assert ("qmdd_actor", (("part", "embedder"), ("statistic", "inference_s"))) in samples
    assert ("qmdd_door", (("part", "http"), ("statistic", "rate_limited"))) in samples
    # The same over the socket, through qmdctl.
    families = {f.name for f in text_string_to_metric_families(env.run("metrics").stdout)}
    assert {"qmdd_requests", "qmdd_request_seconds", "qmdd_actor", "qmdd_door"} <= families


def test_line_ranges_are_checked_alike_at_every_door(door: httpx.Client, env: Env) -> None:
    """alpha.md has 11 lines. Line 0, an empty slice and a line past the end are refused, whoever asks."""
    assert door.get("/documents/notes/alpha.md", params={"from_line": 11, "max_lines": 1}).json()["body"] == \
        "More text about cameras.\n"
    for params, said in (({"from_line": 0}, "the first line is 1"), ({"max_lines": 0}, "1 line or more"),
                         ({"from_line": 12}, "past the end of qmd://notes/alpha.md (11 lines)"),
                         ({"from_line": 10**30}, "past the end")):
        assert said in problem(door.get("/documents/notes/alpha.md", params=params), 400, "INVALID_INPUT")["detail"]
    for target in ("notes/alpha.md:0", "notes/alpha.md:5:0", "notes/alpha.md:99"):
        refused = env.run("get", target, check=False)
        assert refused.returncode == ErrorCode.INVALID_INPUT.spec.exit_code and "INVALID_INPUT" in refused.stderr
    with env.client() as c:
        with pytest.raises(QmddError) as caught:
            c.call("get", {"target": "notes/alpha.md", "from_line": -3})  # as MCP's fromLine reaches it
        assert caught.value.code == ErrorCode.INVALID_INPUT
    assert env.run("get", "notes/alpha.md:11").stdout.rstrip().endswith("More text about cameras.")


def test_a_body_that_stops_arriving_is_a_typed_timeout(door: httpx.Client) -> None:
    with socket.create_connection((door.base_url.host, door.base_url.port), timeout=30) as raw:
        raw.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
                    f"Authorization: {door.headers['authorization']}\r\n".encode() +
                    b'Content-Length: 2000000\r\n\r\n{"query": "x"}')
        started = time.monotonic()
        answer = b""
        while (b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}")) and (part := raw.recv(65536)):
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504") and b"application/problem+json" in head
    assert json.loads(body)["code"] == "TIMEOUT" and time.monotonic() - started < 25
    assert door.post("/search", json={"query": "alpha"}).json()["results"]
