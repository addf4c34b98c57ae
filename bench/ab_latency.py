"""Latency of two qmdd builds side by side: the same queries against two daemons, in alternating blocks.

Each side is a Python that imports one build (a venv) and a QMDD_HOME it serves, holding the same
corpus indexed (and embedded) by that build. A worker process per side talks to its daemon with its own
build's client, so the wire may differ between builds. Blocks of --block queries (every method per
query) go to one side, then the other, the order swapped each block: both sides see the same machine
state (a shared 2-core VM drifts by ±25% over minutes), and each block runs on warm caches. Prints
p50/p95 per method and side, and each daemon's CPU per query.

A baseline build, without touching this checkout's venv (a copied venv's pip installs into the
original): `git worktree add /tmp/base REV`, `python -m venv --without-pip /tmp/basevenv`, and a .pth in
its site-packages listing /tmp/base and this venv's site-packages.

    python bench/ab_latency.py --a /tmp/basevenv/bin/python:/tmp/base-home --b .venv/bin/python:/tmp/home \\
        --index tldr-en --pages /tmp/tldr/pages [--queries 400] [--block 50] [--methods search,vsearch,query]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from common import sample_queries
from speed import pct

WORKER = r'''
import json, os, sys, time
from qmdctl.client import Client
from qmdd.paths import resolve_paths
env = {**os.environ, "QMDD_HOME": sys.argv[1], "QMDD_LOG_LEVEL": "warning"}
if sys.argv[2]:
    env["QMDD_INDEX"] = sys.argv[2]
client = Client(resolve_paths(env), environ=env)
pid = client.call("status")["pid"]
def cpu_s():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
print(json.dumps(cpu_s()), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request is None:
        print(json.dumps(cpu_s()), flush=True)
        continue
    method, query = request
    params = {"query": query, "limit": 5, **({"rerank": False} if method == "query" else {})}
    started = time.perf_counter()
    client.call(method, params)
    print(json.dumps(time.perf_counter() - started), flush=True)
'''


class Side:
    def __init__(self, name: str, spec: str, index: str) -> None:
        python, home = spec.split(":", 1)
        self.name = name
        self.proc = subprocess.Popen([python, "-c", WORKER, home, index], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd="/tmp")
        self.cpu_start = self.ask(None, wait=True)
        self.cpu_end = self.cpu_start

    def ask(self, request: list[str] | None, wait: bool = False) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not wait:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        answer: float = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="PYTHON:QMDD_HOME of side a (the baseline)")
    parser.add_argument("--b", required=True, help="PYTHON:QMDD_HOME of side b")
    parser.add_argument("--index", default="", help="QMDD_INDEX of both sides (a named index)")
    parser.add_argument("--pages", type=Path, required=True, help="the corpus' markdown pages, for queries")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--methods", default="search,vsearch,query")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after the daemons answer (start-up work)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    queries = sample_queries(sorted(args.pages.rglob("*.md")), args.queries, 7)
    sides = [Side("a", args.a, args.index), Side("b", args.b, args.index)]
    time.sleep(args.settle)
    for side in sides:
        side.cpu_start = side.ask(None)
    latencies: dict[tuple[str, str], list[float]] = {(s.name, m): [] for s in sides for m in methods}
    for number, start in enumerate(range(0, len(queries), args.block)):
        for side in sides if number % 2 == 0 else sides[::-1]:
            for query in queries[start:start + args.block]:
                for method in methods:
                    latencies[side.name, method].append(side.ask([method, query]))
    for side in sides:
        side.cpu_end = side.ask(None)
        side.close()
    print(f"{len(queries)} queries, blocks of {args.block}, limit 5 (query: no rerank); ms")
    print(f"{'method':<9}{'a p50':>8}{'a p95':>8}{'b p50':>8}{'b p95':>8}{'b - a p50':>11}")
    for method in methods:
        a, b = latencies["a", method], latencies["b", method]
        print(f"{method:<9}{pct(a, 0.5) * 1e3:>8.2f}{pct(a, 0.95) * 1e3:>8.2f}{pct(b, 0.5) * 1e3:>8.2f}"
              f"{pct(b, 0.95) * 1e3:>8.2f}{(pct(b, 0.5) - pct(a, 0.5)) * 1e3:>+11.2f}")
    for side in sides:
        print(f"daemon {side.name}: CPU {(side.cpu_end - side.cpu_start) * 1e3 / len(queries):.2f} ms per query "
              f"(all methods)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
