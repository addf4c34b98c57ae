"""MCP bridge speed: start-to-`initialize`-answered, and warm `search` tool calls over stdio.

A raw JSON-RPC client (this script) drives `qmdctl mcp` through pipes, so the figures are the
bridge's and daemon's, not a client library's. Targets from the issue: initialize <= 300 ms after
the bridge starts (tobi/qmd measured here: 416-724 ms); a warm search call p50 <= 3 ms (qmd: 9.6 ms).

    python bench/mcp_speed.py [--corpus DIR] [--starts 20] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import bench_daemon

INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "mcp_speed", "version": "1"}}}
QUERIES = ["tar", "compress a folder", "list files", "git commit", "docker image", "network port",
           "disk usage", "process kill", "ssh key", "python package"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bridge:
    def __init__(self, env: dict[str, str]) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "qmdctl.main", "mcp"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 1

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}})
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def initialize(self) -> float:
        self.send(INITIALIZE)
        assert self.proc.stdout is not None
        reply = json.loads(self.proc.stdout.readline())
        assert "result" in reply, reply
        elapsed = time.perf_counter() - self.started
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return elapsed

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    parser.add_argument("--corpus", type=Path, default=here / ".cache" / "tldr-en")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(f"corpus {args.corpus} missing: run bench/speed.py once to extract tldr", file=sys.stderr)
        return 1
    with bench_daemon("qmdd-mcp-") as (client, home):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["QMDD_HOME"] = str(home / "home")
        client.call("collection.add", {"path": str(args.corpus), "name": "tldr"})
            # The daemon imports the MCP SDK in the background after start; wait for it.
        warm = Bridge(env)
        warm.initialize()
        warm.close()
        starts = []
        for _ in range(args.starts):
            bridge = Bridge(env)
            starts.append(bridge.initialize())
            bridge.close()
        bridge = Bridge(env)
        bridge.initialize()
        bridge.ask("tools/list")
        calls = []
        for i in range(args.calls + 20):
            began = time.perf_counter()
            reply = bridge.ask("tools/call", {"name": "search",
                                              "arguments": {"query": QUERIES[i % len(QUERIES)], "limit": 5}})
            if i >= 20:  # the first calls warm caches
                calls.append(time.perf_counter() - began)
            assert not reply["result"].get("isError"), reply
        bridge.close()
        status = client.call("status")
        rss = Path(f"/proc/{status['pid']}/status").read_text().split("VmHWM:")[1].split()[0]
    ms = [s * 1000 for s in starts]
    cs = [c * 1000 for c in calls]
    print(f"bridge start -> initialize answered ({len(ms)} starts): p50 {statistics.median(ms):.0f} ms, "
          f"p95 {pct(ms, 0.95):.0f} ms  (target <= 300; qmd 416-724)")
    print(f"warm tools/call search, 5 hits ({len(cs)} calls): p50 {statistics.median(cs):.2f} ms, "
          f"p95 {pct(cs, 0.95):.2f} ms, {1000 / statistics.mean(cs):.0f} calls/s  (target p50 <= 3; qmd 9.6)")
    print(f"daemon peak RSS {int(rss) / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
