"""The HTTP door against the socket RPC, on one real daemon serving both (tldr English pages).

Prints: `search` p50/p95 over the socket (warm connection) and as `POST /search` (keep-alive, through
httpx and through the stdlib's http.client, whose client side costs less); a warm MCP `search` tool call
over streamable HTTP (the SDK's client); throughput and p95 with 32 concurrent keep-alive clients;
the daemon's idle CPU with the door open; and a burst of 1,000 malformed requests (bad JSON, oversized
declared bodies, garbage, half-sent headers held open) after which the door must still answer.

Uncached figures use queries no earlier step asked (the result cache misses); cached ones ask the same
queries again (it hits).

    python bench/http_speed.py [--queries 500] [--clients 32] [--log-level info]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
from common import bench_daemon, sample_queries

from qmdd import ownfiles
from qmdd.tokens import read_token

CACHE = Path(__file__).resolve().parent / ".cache"


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"p50 {statistics.median(ordered) * 1000:.2f} ms, p95 {ordered[int(len(ordered) * 0.95)] * 1000:.2f} ms, "
            f"{len(ordered) / sum(ordered):,.0f} QPS")


def timed(fn, queries: list[str], warm: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    for q in warm:
        fn(q)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(time.perf_counter() - t0)
    return out


def concurrent_clients(url: str, token: str, queries: list[str], clients: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def run(offset: int) -> None:
        mine = []
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as client:
            client.get("/health")
            start.wait()
            for q in queries[offset::clients]:
                t0 = time.perf_counter()
                assert client.post("/search", json={"query": q, "limit": 5}).status_code == 200
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def mcp_calls(url: str, token: str, queries: list[str]) -> str:
    import httpx2
    import trio
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session() -> list[float]:
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http_client, \
                streamable_http_client(f"{url}/mcp", http_client=http_client) as streams, \
                ClientSession(streams[0], streams[1]) as client:
            await client.initialize()
            out = []
            for q in queries:
                t0 = time.perf_counter()
                await client.call_tool("search", {"query": q, "limit": 5})
                out.append(time.perf_counter() - t0)
            return out

    return ms(trio.run(session))


def malformed_burst(host: str, port: int, token: str, n: int) -> dict[str, int]:
    """n bad requests, one connection each; 50 half-sent header blocks stay open meanwhile."""
    auth = f"Authorization: Bearer {token}\r\n"
    kinds = [
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth.encode() + b"Content-Length: 5\r\n\r\n{bad ",
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth.encode() + b"Content-Length: 999999999\r\n\r\n",
        b"\x16\x03\x01garbage that is not HTTP\r\n\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # no token
    ]
    held = []
    for _ in range(50):
        s = socket.create_connection((host, port))
        s.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append(s)
    counts: dict[str, int] = {}
    for i in range(n):
        with socket.create_connection((host, port), timeout=10) as s:
            try:
                s.sendall(kinds[i % len(kinds)])
                s.shutdown(socket.SHUT_WR)
                head = s.recv(64)
            except OSError:
                head = b""
        status = head[9:12].decode() if head.startswith(b"HTTP/1.1") else "closed"
        counts[status] = counts.get(status, 0) + 1
    for s in held:
        s.close()
    return counts


def main() -> int:
    tldr = CACHE / "tldr-en"
    if not tldr.is_dir():
        raise SystemExit("run bench/speed.py once first: it extracts the tldr pages to bench/.cache/tldr-en")
    distinct = list(dict.fromkeys(sample_queries(sorted(tldr.rglob("*.md")), args.queries * 12, 7)))
    n = args.queries
    warm, on_socket, on_httpx, on_stdlib, on_mcp, concurrent = (distinct[i * n:(i + 1) * n] for i in range(6))
    assert len(concurrent) == n, "too few distinct queries: lower --queries"
    queries = on_socket
    with bench_daemon("qmdd-http-", QMDD_LOG_LEVEL=args.log_level, QMDD_HTTP_LISTEN="127.0.0.1:0",
                      QMDD_HTTP_RATE_PER_MINUTE="0") as (client, _):
        client.call("collection.add", {"path": str(tldr), "name": "tldr"})
        url = ownfiles.read_record(str(client.paths.http_address))
        token = read_token(client.paths)
        assert url and token
        host, port = url.removeprefix("http://").rsplit(":", 1)
        pid = int(client.server["pid"])
        print(f"tldr English pages, {len(queries)} queries, limit 5, door {url}")

        def socket_search(q: str) -> None:
            client.call("search", {"query": q, "limit": 5})

        over_socket = timed(socket_search, on_socket, warm[:20])
        print(f"socket RPC (warm connection), uncached: {ms(over_socket)}")
        print(f"socket RPC, cached (same queries again): {ms(timed(socket_search, on_socket, []))}")
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as h:
            def httpx_search(q: str) -> None:
                h.post("/search", json={"query": q, "limit": 5}).raise_for_status()
            over_httpx = timed(httpx_search, on_httpx, warm[20:40])
            print(f"POST /search, httpx keep-alive, uncached: {ms(over_httpx)}")
            print(f"POST /search, httpx keep-alive, cached:   {ms(timed(httpx_search, on_httpx, []))}")
        conn = http.client.HTTPConnection(host, int(port))
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

        def stdlib(q: str) -> None:
            conn.request("POST", "/search", json.dumps({"query": q, "limit": 5}), headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200

        over_stdlib = timed(stdlib, on_stdlib, warm[40:60])
        print(f"POST /search, http.client keep-alive, uncached: {ms(over_stdlib)}")
        print(f"POST /search, http.client keep-alive, cached:   {ms(timed(stdlib, on_stdlib, []))}")
        conn.close()
        base = statistics.median(over_socket) * 1000
        print(f"  HTTP minus socket, uncached p50: httpx {statistics.median(over_httpx) * 1000 - base:+.2f} ms, "
              f"http.client {statistics.median(over_stdlib) * 1000 - base:+.2f} ms")

        print(f"MCP over HTTP (/mcp, SDK client), warm `search` tool call: {mcp_calls(url, token, on_mcp[:200])}")

        for label in ("uncached", "cached"):
            lat, wall = concurrent_clients(url, token, concurrent, args.clients)
            print(f"{args.clients} concurrent keep-alive clients (httpx, threads here), {label}: "
                  f"{len(lat) / wall:,.0f} req/s, p50 {statistics.median(lat) * 1000:.1f} ms, "
                  f"p95 {sorted(lat)[int(len(lat) * 0.95)] * 1000:.1f} ms")

        tick = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{pid}/stat").read_text().split()
        before = (int(fields[13]) + int(fields[14])) / tick
        time.sleep(10)
        fields = Path(f"/proc/{pid}/stat").read_text().split()
        print(f"idle CPU with the door open: {((int(fields[13]) + int(fields[14])) / tick - before) * 100:.2f} ms/s")

        t0 = time.perf_counter()
        counts = malformed_burst(host, int(port), token, 1000)
        print(f"1,000 malformed requests in {time.perf_counter() - t0:.1f}s, answered: {dict(sorted(counts.items()))}")
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}) as h:
            after = h.post("/search", json={"query": queries[0]})
        print(f"after the burst: POST /search -> {after.status_code}, {len(after.json()['results'])} results")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--log-level", default="info", help="the daemon's (info, the default, logs each request)")
    args = parser.parse_args()
    raise SystemExit(main())
