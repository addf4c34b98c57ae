"""Server mode beyond the REST routes, against a real daemon with a real HTTP client: the result cache
(hits, and never a stale answer after an update or a watched edit), ETags, W3C trace context, the
request log line at the default level, JSON logs, log rotation, HTTPS and OpenTelemetry spans."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qmdd.tokens import read_token
from tests.conftest import Env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def open_door(env: Env, notes: Path, **settings: str) -> httpx.Client:
    env.vars.update({"QMDD_HTTP_RATE_PER_MINUTE": "0", "QMDD_LOG_LEVEL": "info", **settings})
    started = env.json("daemon", "start", "--http", "127.0.0.1:0")
    env.run("collection", "add", str(notes), "--name", "notes")
    cert = settings.get("QMDD_HTTP_CERT")
    verify: Any = ssl.create_default_context(cafile=cert) if cert else True
    return httpx.Client(base_url=started["http"], headers={"authorization": f"Bearer {read_token(env.paths)}"},
                        timeout=30, verify=verify)


@pytest.fixture
def door(env: Env, notes: Path) -> Iterator[httpx.Client]:
    with open_door(env, notes) as client:
        yield client


def cache_statistics(door: httpx.Client) -> dict[str, float]:
    families = text_string_to_metric_families(door.get("/metrics").text)
    return {s.labels["statistic"]: s.value for f in families if f.name == "qmdd_cache" for s in f.samples}


def files(answer: dict[str, Any]) -> list[str]:
    return [r["file"] for r in answer["results"]]


def test_repeated_searches_are_cached_and_an_update_retires_them(door: httpx.Client, env: Env,
                                                                  notes: Path) -> None:
    query = {"query": "quarterly plan", "limit": 5}
    first = door.post("/search", json=query).json()
    before = cache_statistics(door)
    assert door.post("/search", json=query).json() == first  # the same answer, from the cache
    # Defaults filled in count as the same parameters; the socket shares the cache.
    assert door.post("/search", json={**query, "snippet_lines": 4}).json() == first
    assert env.client().call("search", {"query": "quarterly plan", "limit": 5}) == first
    after = cache_statistics(door)
    assert after["hits"] - before["hits"] == 3 and after["misses"] == before["misses"]

    (notes / "delta.md").write_text("# Delta\n\nThe quarterly plan moved to delta.\n")
    env.run("update")
    fresh = door.post("/search", json=query).json()
    assert "qmd://notes/delta.md" in files(fresh) and "qmd://notes/delta.md" not in files(first)
    assert cache_statistics(door)["stale"] >= 1
    # `full` answers carry files read from disk: never kept.
    full = door.post("/search", json={**query, "full": True}).json()
    assert door.post("/search", json={**query, "full": True}).json() == full
    assert cache_statistics(door)["entries"] == 1


def test_a_watched_edit_is_never_answered_from_the_cache(env: Env, notes: Path) -> None:
    with open_door(env, notes, QMDD_WATCH="1", QMDD_WATCH_DEBOUNCE_MS="50") as door:
        query = {"query": "zeppelin", "limit": 5}
        assert door.post("/search", json=query).json()["results"] == []
        assert door.post("/search", json=query).json()["results"] == []  # cached: nothing matches
        (notes / "beta.md").write_text("# Beta\n\nA zeppelin over the SQLite WAL.\n")
        deadline = time.monotonic() + 20
        while not (found := files(door.post("/search", json=query).json())):
            assert time.monotonic() < deadline, "the watched edit never reached the answer"
            time.sleep(0.05)
        assert found == ["qmd://notes/beta.md"]
        (notes / "beta.md").write_text("# Beta\n\nNothing flies here any more.\n")
        while files(door.post("/search", json=query).json()):
            assert time.monotonic() < deadline + 20, "a removed word is still answered (a stale entry)"
            time.sleep(0.05)


def test_documents_carry_an_etag(door: httpx.Client, notes: Path, env: Env) -> None:
    first = door.get("/documents/notes/beta.md")
    tag = first.headers["etag"]
    assert first.status_code == 200 and tag.startswith('"') and first.headers["cache-control"] == "private, no-cache"
    again = door.get("/documents/notes/beta.md", headers={"if-none-match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert door.get("/documents/notes/beta.md", headers={"if-none-match": '"other", W/' + tag}).status_code == 304
    (notes / "beta.md").write_text("# Beta\n\nRewritten.\n")
    env.run("update")
    changed = door.get("/documents/notes/beta.md", headers={"if-none-match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag and "Rewritten." in changed.json()["body"]


def test_trace_context_goes_in_and_out_and_tags_the_log(door: httpx.Client, env: Env) -> None:
    answer = door.post("/search", json={"query": "gnome"}, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert answer.headers["x-trace-id"] == TRACE
    version, trace_id, span_id, flags = answer.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01") and len(span_id) == 16 and span_id != PARENT
    # An invalid traceparent starts a trace of its own; x-trace-id is taken as it is.
    fresh = door.get("/collections", headers={"traceparent": f"00-{'0' * 32}-{PARENT}-01"})
    assert len(fresh.headers["x-trace-id"]) == 32 and fresh.headers["x-trace-id"] != TRACE
    assert door.get("/collections", headers={"x-trace-id": "agent-7"}).headers["x-trace-id"] == "agent-7"
    # At the default level (info), the request's line carries its trace id, on every door.
    env.vars["AGENT_TRACE_ID"] = "cli-trace-1"
    env.run("search", "gnome")
    log = env.paths.log_file.read_text()
    assert f"[{TRACE}] search via http: ok in" in log
    assert "[agent-7] collection.list via http: ok" in log and "[cli-trace-1] search via socket: ok" in log
    # Problems carry it too.
    missing = door.get("/documents/notes/nope.md", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert missing.status_code == 404 and missing.json()["trace_id"] == TRACE
    assert f"[{TRACE}] get via http: NOT_FOUND" in env.paths.log_file.read_text()


def test_json_logs_and_size_based_rotation(env: Env, notes: Path) -> None:
    with open_door(env, notes, QMDD_LOG_FORMAT="json", QMDD_LOG_MAX_BYTES="4000", QMDD_LOG_BACKUPS="2") as door:
        for i in range(60):
            assert door.post("/search", json={"query": f"alpha {i}"}, headers={"x-trace-id": f"t{i}"}).is_success
        log = env.paths.log_file
        rotated = [log.with_name(f"qmdd.log.{n}") for n in (1, 2, 3)]
        assert rotated[0].exists() and rotated[1].exists() and not rotated[2].exists()
        assert all(p.stat().st_size < 4000 + 1000 for p in (log, *rotated[:2]))
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in (log, *rotated[:2]))
        lines = [json.loads(line) for p in (rotated[1], rotated[0], log) for line in p.read_text().splitlines()]
        assert {"time", "level", "logger", "trace_id", "message"} <= set(lines[-1])
        assert any(e["trace_id"] == "t59" and e["message"].startswith("search via http: ok") for e in lines)
        # The daemon keeps serving after rotating.
        assert door.get("/collections").json()[0]["name"] == "notes"


def test_https_with_a_certificate(env: Env, notes: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with open_door(env, notes, QMDD_HTTP_CERT=str(cert), QMDD_HTTP_KEY=str(key)) as door:
        assert str(door.base_url).startswith("https://127.0.0.1:")
        assert door.post("/search", json={"query": "sqlite"}).json()["results"][0]["file"] == "qmd://notes/beta.md"
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(f"{str(door.base_url).rstrip('/')}/health")
    env.stop_daemon()
    env.vars["QMDD_HTTP_KEY"] = str(cert)  # not the key of that certificate
    failed = env.run("daemon", "start", "--http", "127.0.0.1:0", "--json", check=False)
    assert failed.returncode != 0 and "CONFIG_ERROR" in failed.stdout + failed.stderr + env.paths.log_file.read_text()


def test_opentelemetry_spans_per_method_and_actor_call(env: Env, notes: Path) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    with open_door(env, notes, OTEL_TRACES_EXPORTER="console") as door:
        door.post("/search", json={"query": "gnome"}, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    env.stop_daemon()  # spans are flushed at shutdown
    spans = _console_spans(env.paths.log_file.read_text())
    method = next(s for s in spans if s["name"] == "search" and s["context"]["trace_id"] == f"0x{TRACE}")
    assert method["parent_id"] == f"0x{PARENT}" and method["attributes"]["qmdd.door"] == "http"
    actor = next(s for s in spans if s["name"] == "bm25.Bm25Query" and s["context"]["trace_id"] == f"0x{TRACE}")
    assert actor["parent_id"] == method["context"]["span_id"]


def _console_spans(log: str) -> list[dict[str, Any]]:
    """The ConsoleSpanExporter's pretty-printed JSON objects, among the log lines."""
    spans, decoder, at = [], json.JSONDecoder(), 0
    while (at := log.find('{\n    "name"', at)) >= 0:
        span, end = decoder.raw_decode(log, at)
        spans.append(span)
        at = end
    return spans


def test_qmdctl_mcp_http_starts_the_door_and_prints_the_url(env: Env) -> None:
    env.vars["QMDD_HTTP_RATE_PER_MINUTE"] = "0"
    printed = env.run("mcp", "--http", "--port", "0").stdout
    url = printed.split()[3]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp") and "started" in printed
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    answer = httpx.post(url, json=initialize, headers={"authorization": f"Bearer {read_token(env.paths)}",
                                                       "accept": "application/json, text/event-stream"}, timeout=30)
    assert answer.status_code == 200 and "qmdd" in answer.text
    assert "running" in env.run("mcp", "--http").stdout  # points to the daemon that runs
    moved = env.run("mcp", "--http", "--port", "1")  # the port of the door that runs; it used to say nothing
    assert "running" in moved.stdout and "--port 1 is not used" in moved.stderr
    env.stop_daemon()
    env.run("daemon", "start")
    refused = env.run("mcp", "--http", check=False)
    assert refused.returncode == 29 and "without HTTP" in refused.stderr
    refused = env.run("daemon", "start", "--http", "127.0.0.1:0", check=False)  # as a script would
    assert refused.returncode == 29 and "without HTTP" in refused.stderr


def test_stateless_mcp_answers_each_post_on_its_own(env: Env, notes: Path) -> None:
    with open_door(env, notes, QMDD_HTTP_MCP_STATELESS="1") as door:
        headers = {"accept": "application/json, text/event-stream"}
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "search", "arguments": {"query": "sqlite", "limit": 1}}}
        answer = door.post("/mcp", json=call, headers=headers)  # no initialize, no session id
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
        assert "mcp-session-id" not in answer.headers
        result = answer.json()["result"]
        assert not result["isError"] and result["structuredContent"]["results"][0]["file"] == "qmd://notes/beta.md"
        assert door.post("/mcp", json={**call, "id": 8}, headers=headers).json()["id"] == 8
