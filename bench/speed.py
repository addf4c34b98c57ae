"""Speed of the keyword path, against a real daemon, with bm25s as the peer for raw BM25 QPS.

Prints: full index files/s (tldr English pages), no-change rescan time, in-daemon `search` latency
(RPC round trip on a warm connection), whole-process `qmdctl search` latency, raw BM25 QPS of our
index vs bm25s on the very same chunks and tokens, and the daemon's peak RSS after indexing the three
markdown archives together.

    python bench/speed.py [--queries 500] [--cli-runs 60] [--skip-archives]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from common import bench_daemon
from common import sample_queries as common_sample_queries

from qmdd.search.bm25index import BM25Index, IndexedChunk
from qmdd.search.tokenize import Tokenizer
from qmdd.store.db import connect

MD = Path(__file__).resolve().parents[2] / "shared" / "data" / "md"
CACHE = Path(__file__).resolve().parent / ".cache"


def extract(archive: str, keep: Callable[[str], bool], dest: Path) -> Path:
    """Extract the members `keep` accepts once; later runs reuse the tree."""
    marker = dest / ".complete"
    if marker.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(MD / archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and keep(m.name)]
        tar.extractall(dest, members=members, filter="data")
    marker.touch()
    return dest


def tldr_english(name: str) -> bool:
    return re.search(r"(^|/)pages/[^/]+/[^/]+\.md$", name) is not None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.2f} ms, p95 {pct(values, 0.95) * 1000:.2f} ms"


def sample_queries(root: Path, n: int, seed: int = 7) -> list[str]:
    return common_sample_queries(sorted(root.rglob("*.md")), n, seed)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def bm25_peer(db: Path, queries: list[str], k1: float, b: float) -> None:
    """Raw BM25 over the daemon's own chunks: our index vs bm25s, same tokens, same k1/b, top 10."""
    import bm25s

    tokenizer = Tokenizer()
    conn = connect(db)
    rows = conn.execute("SELECT id, doc_id, text FROM chunks ORDER BY id").fetchall()
    conn.close()
    counts = [tokenizer.count_terms(text) for _, _, text in rows]
    index = BM25Index(k1=k1, b=b)
    t0 = time.perf_counter()
    index.add(IndexedChunk(row[0], row[1], 1, tf, sum(tf.values())) for row, tf in zip(rows, counts, strict=True))
    ours_build = time.perf_counter() - t0
    corpus_tokens = [tokenizer.index_terms(text) for _, _, text in rows]
    t0 = time.perf_counter()
    peer = bm25s.BM25(k1=k1, b=b, method="lucene")
    peer.index(corpus_tokens, show_progress=False)
    peer_build = time.perf_counter() - t0
    query_terms = [tokenizer.query_terms(q) for q in queries]
    query_terms = [q for q in query_terms if q]

    ours: list[float] = []
    for terms in query_terms:
        t0 = time.perf_counter()
        index.search(terms, limit=10)
        ours.append(time.perf_counter() - t0)
    vocab = peer.vocab_dict
    theirs: list[float] = []
    for terms in query_terms:
        known = [t for t in terms if t in vocab]
        t0 = time.perf_counter()
        if known:
            peer.retrieve([known], k=10, show_progress=False, n_threads=1)
        theirs.append(time.perf_counter() - t0)
    print(f"raw BM25 on {len(rows)} chunks, {len(query_terms)} queries, top 10 (same tokens, k1={k1}, b={b}):")
    print(f"  qmdd BM25Index: {ms(ours)}, {len(ours) / sum(ours):,.0f} QPS (build {ours_build:.2f}s)")
    print(f"  bm25s 'lucene': {ms(theirs)}, {len(theirs) / sum(theirs):,.0f} QPS (build {peer_build:.2f}s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--cli-runs", type=int, default=60)
    parser.add_argument("--index-runs", type=int, default=3, help="full index runs (median reported)")
    parser.add_argument("--skip-archives", action="store_true", help="skip the three-archive RSS run")
    args = parser.parse_args()

    tldr = extract("tldr.tar.gz", tldr_english, CACHE / "tldr-en")
    pages = sum(1 for _ in tldr.rglob("*.md"))
    with bench_daemon("qmdd-bench-", QMDD_LOG_LEVEL="warning") as (client, _):
        client.connect()
        environ = client.environ or {}
        paths = client.paths
        pid = int(client.server["pid"])
        print(f"tldr English pages: {pages} files")
        fulls = []
        for attempt in range(args.index_runs):
            if attempt:
                client.call("collection.remove", {"name": "tldr"})
            t0 = time.perf_counter()
            summary = client.call("collection.add", {"path": str(tldr), "name": "tldr"})["update"][0]
            fulls.append(time.perf_counter() - t0)
        full = statistics.median(fulls)
        print(f"full index (walk, hash, chunk, SQLite, BM25, snapshot), {len(fulls)} runs: median {full:.2f}s = "
              f"{pages / full:,.0f} files/s, best {pages / min(fulls):,.0f} files/s ({summary['chunks_added']} chunks)")
        rescans = []
        for _ in range(7):
            t0 = time.perf_counter()
            client.call("update", {})
            rescans.append(time.perf_counter() - t0)
        print(f"no-change rescan: median {statistics.median(rescans) * 1000:.0f} ms, "
              f"min {min(rescans) * 1000:.0f} ms (7 runs, whole RPC)")

        queries = sample_queries(tldr, args.queries)
        for q in queries[:20]:
            client.call("search", {"query": q})
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            client.call("search", {"query": q, "limit": 5})
            lat.append(time.perf_counter() - t0)
        print(f"in-daemon search (RPC round trip, limit 5, snippets): {ms(lat)}, {len(lat) / sum(lat):,.0f} QPS")

        cli = []
        env_cli = {**environ, "NO_COLOR": "1"}
        qmdctl = str(Path(sys.executable).with_name("qmdctl"))
        for q in queries[: args.cli_runs]:
            t0 = time.perf_counter()
            subprocess.run([qmdctl, "search", q, "--json"], env=env_cli, stdout=subprocess.DEVNULL, check=True)
            cli.append(time.perf_counter() - t0)
        editable = any(p.name.startswith("__editable__") for p in Path(sys.prefix).glob("lib/python*/site-packages/*"))
        print(f"whole-process `qmdctl search --json` ({'editable' if editable else 'regular'} install): "
              f"{ms(cli)} ({len(cli)} runs)")
        print(f"daemon RSS after tldr: {rss_kib(pid)[0] / 1024:.0f} MiB")

        bm25_peer(paths.database, queries, k1=1.3, b=0.55)

        if not args.skip_archives:
            cpp = extract("cpp-docs.tar.gz", lambda n: n.endswith(".md"), CACHE / "cpp-docs")
            leet = extract("doocs-leetcode.tar.gz", lambda n: n.endswith(".md"), CACHE / "doocs-leetcode")
            tldr_all = extract("tldr.tar.gz", lambda n: n.endswith(".md"), CACHE / "tldr-all")
            client.call("collection.remove", {"name": "tldr"})
            total_files = 0
            t0 = time.perf_counter()
            for name, root in (("tldr", tldr_all), ("cpp", cpp), ("leetcode", leet)):
                s = client.call("collection.add", {"path": str(root), "name": name,
                                                   "masks": ["**/*.md"]})["update"][0]
                total_files += s["files"]
            elapsed = time.perf_counter() - t0
            rss, peak = rss_kib(pid)
            status = client.call("status")
            chunks = sum(c["chunks"] for c in status["collections"])
            print(f"three archives: {total_files} files, {chunks} chunks indexed in {elapsed:.1f}s "
                  f"({total_files / elapsed:,.0f} files/s); daemon RSS {rss / 1024:.0f} MiB, "
                  f"peak {peak / 1024:.0f} MiB")
            lat = []
            for q in queries[:200]:
                t0 = time.perf_counter()
                client.call("search", {"query": q, "limit": 5})
                lat.append(time.perf_counter() - t0)
            print(f"in-daemon search over all three: {ms(lat)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
