"""Benchmark of the pure BM25 index (qmdd.search.bm25index) on the tldr pages, against bm25s.

Prints add throughput, search latency (p50/p95) and QPS, top-10 agreement with bm25s on the same
tokens and parameters, the same figures on the corpus replicated to larger sizes, snapshot
save/load times, and peak RSS.

    python bench/bm25_core.py [--scales 20000,200000] [--queries 500] [--no-bm25s]

The tokenizer here (lowercased \\w+ runs, Snowball English stemming) is a stand-in so the numbers
depend only on the index; qmdd's real tokenizer lives in qmdd.search.tokenize.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import Stemmer
from pyroaring import BitMap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qmdd.search.bm25index import BM25Index, IndexedChunk

HERE = Path(__file__).resolve().parent
DEFAULT_TARBALL = HERE.parent.parent / "shared" / "data" / "md" / "tldr.tar.gz"
WORD = re.compile(r"\w+")
STEMMER = Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    return STEMMER.stemWords(WORD.findall(text.lower()))


def extract(tarball: Path, cache: Path) -> list[Path]:
    """English pages only (pages/<platform>/*.md, not pages.xx/), extracted once into the cache."""
    root = cache / "tldr"
    marker = root / ".extracted"
    if not marker.exists():
        pattern = re.compile(r"^(?:[^/]+/)?pages/[^/]+/[^/]+\.md$")
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and pattern.match(m.name)]
            tar.extractall(root, members=members, filter="data")
        marker.touch()
    return sorted(p for p in root.rglob("*.md") if p.parent.parent.name == "pages")


def sample_queries(texts: Sequence[str], n: int, rng: random.Random) -> list[list[str]]:
    """1-4 words drawn from a random page's title and description lines ('# name', '> ...')."""
    queries: list[list[str]] = []
    while len(queries) < n:
        lines = rng.choice(texts).splitlines()
        words = [w for line in lines if line.startswith(("#", ">")) and "More information" not in line
                 for w in WORD.findall(line.lower())]
        if not words:
            continue
        k = rng.randint(1, 4)
        start = rng.randrange(max(1, len(words) - k + 1))
        terms = list(dict.fromkeys(tokenize(" ".join(words[start:start + k]))))
        if terms:
            queries.append(terms)
    return queries


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def time_queries(run: Callable[[list[str]], object], queries: Sequence[list[str]]) -> dict[str, float]:
    for q in queries[:20]:  # warm caches (length-norm array, page faults)
        run(q)
    times = []
    started = time.perf_counter()
    for q in queries:
        t0 = time.perf_counter()
        run(q)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    multi = [t for t, q in zip(times, queries, strict=True) if len(q) >= 2]
    return {"p50_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * percentile(times, 0.95),
            "qps": len(queries) / total, "p50_multi_ms": 1e3 * statistics.median(multi or times)}


def build(chunks: Sequence[IndexedChunk], batch: int) -> tuple[BM25Index, float]:
    index = BM25Index()
    t0 = time.perf_counter()
    for start in range(0, len(chunks), batch):
        index.add(chunks[start:start + batch])
    return index, time.perf_counter() - t0


def replicate(base: Sequence[IndexedChunk], target: int) -> list[IndexedChunk]:
    copies = max(1, math.ceil(target / len(base)))
    n = len(base)
    return [IndexedChunk(r * n + c.chunk_id, r * n + c.doc_id, r % 4, c.tf, c.length)
            for r in range(copies) for c in base]


def line(label: str, stats: dict[str, float]) -> None:
    print(f"  {label:<30} p50 {stats['p50_ms']:6.3f} ms  p95 {stats['p95_ms']:6.3f} ms"
          f"  {stats['qps']:6.0f} QPS  (2-4 terms: p50 {stats['p50_multi_ms']:6.3f} ms)")


def compare_bm25s(tokens: list[list[str]], index: BM25Index, queries: list[list[str]],
                  k1: float, b: float) -> None:
    import bm25s
    import numpy as np

    t0 = time.perf_counter()
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(tokens, show_progress=False)
    print(f"  bm25s index: {time.perf_counter() - t0:.2f} s")
    vocab = retriever.vocab_dict

    def theirs(q: list[str]) -> tuple[list[int], list[float]]:
        known = [t for t in q if t in vocab]
        if not known:
            return [], []
        docs, scores = retriever.retrieve([known], k=10, show_progress=False, n_threads=1)
        keep = scores[0] > 0
        return docs[0][keep].tolist(), scores[0][keep].tolist()

    line("bm25s retrieve (k=10)", time_queries(theirs, queries))
    overlaps, rank_equal, tie_equal, worst = [], 0, 0, 0.0
    for q in queries:
        ours = index.search(q, limit=10)
        their_docs, their_scores = theirs(q)
        mine = [h.doc_id for h in ours]
        denom = max(len(mine), len(their_docs))
        overlaps.append(len(set(mine) & set(their_docs)) / denom if denom else 1.0)
        rank_equal += mine == their_docs
        # Lists that differ only in which of several equally scored documents made the cut are
        # equivalent: neither engine's tie-breaking is more right.
        mine_scaled = [h.score / (k1 + 1) for h in ours]
        tie_equal += len(mine_scaled) == len(their_scores) and bool(
            np.allclose(mine_scaled, their_scores, rtol=1e-5, atol=0))
        their = dict(zip(their_docs, their_scores, strict=True))
        for h in ours:
            if h.doc_id in their:
                # bm25s's "lucene" variant drops the constant (k1 + 1) numerator factor, as Lucene 8+ does.
                mine_scaled = h.score / (k1 + 1)
                worst = max(worst, abs(mine_scaled - their[h.doc_id]) / max(1e-9, abs(their[h.doc_id])))
    print(f"  top-10 overlap with bm25s: mean {np.mean(overlaps):.4f}, min {min(overlaps):.2f}; "
          f"identical ranking {rank_equal}/{len(queries)}, identical up to ties {tie_equal}/{len(queries)}; "
          f"max rel score diff {worst:.2e} (after dividing ours by k1 + 1)")


def scale_run(big: list[IndexedChunk], base: int, queries: list[list[str]], batch: int, cache: Path) -> None:
    print(f"\n== {len(big)} chunks (tldr x{len(big) // base}) ==")
    index, secs = build(big, batch)
    print(f"  add, batches of {batch}: {len(big) / secs:,.0f} chunks/s ({secs:.2f} s)")
    edits = [IndexedChunk(10**9 + i, 10**9 + i, 0, c.tf, c.length) for i, c in enumerate(big[:100])]
    t0 = time.perf_counter()
    for c in edits:  # one file saved at a time, as under the watcher
        index.add([c])
    add_ms = 1e3 * (time.perf_counter() - t0) / len(edits)
    t0 = time.perf_counter()
    for c in edits:
        index.remove([c.chunk_id])
    remove_ms = 1e3 * (time.perf_counter() - t0) / len(edits)
    delta = index.statistics()["delta_postings"]
    print(f"  incremental (delta {delta} postings): add one chunk {add_ms:.2f} ms, "
          f"remove one chunk {remove_ms:.3f} ms")
    line("qmdd search (limit 10)", time_queries(lambda q: index.search(q, limit=10), queries))
    half = index.collection_chunks(0) | index.collection_chunks(1)
    line("qmdd search, allowed = 1/2", time_queries(
        lambda q: index.search(q, limit=10, allowed=half), queries))
    narrow = BitMap(range(1, len(big), 97))
    line("qmdd search, allowed = 1/97", time_queries(
        lambda q: index.search(q, limit=10, allowed=narrow), queries))
    line("qmdd search, explain", time_queries(
        lambda q: index.search(q, limit=10, explain=True), queries))
    line("qmdd search (limit 100)", time_queries(lambda q: index.search(q, limit=100), queries))
    t0 = time.perf_counter()
    index.remove(range(1, len(big), 10))
    print(f"  remove 10%: {1e3 * (time.perf_counter() - t0):.1f} ms")
    line("qmdd search, 10% dead", time_queries(lambda q: index.search(q, limit=10), queries))
    t0 = time.perf_counter()
    index.remove(range(2, len(big), 5))
    print(f"  remove 20% more (compacts): {1e3 * (time.perf_counter() - t0):.0f} ms, "
          f"dead postings left {index.statistics()['dead_postings']}")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        path = Path(tmp) / "bm25.snap"
        t0 = time.perf_counter()
        index.save(path, {"bench": "1"})
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded, _ = BM25Index.load(path)
        load_s = time.perf_counter() - t0
        print(f"  snapshot {path.stat().st_size / 2**20:.1f} MiB: save {save_s:.3f} s "
              f"(includes compaction), load {load_s:.3f} s")
    stats = loaded.statistics()
    print(f"  index: {stats['terms']} terms, {stats['postings']} postings, "
          f"~{stats['approx_bytes'] / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--scales", default="20000,200000", help="comma-separated replicated corpus sizes")
    parser.add_argument("--batch", type=int, default=5000, help="chunks per add() call")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-bm25s", action="store_true")
    parser.add_argument("--k1", type=float, default=1.2)
    parser.add_argument("--b", type=float, default=0.75)
    args = parser.parse_args()

    pages = extract(args.tarball, args.cache)
    texts = [p.read_text(encoding="utf-8") for p in pages]
    t0 = time.perf_counter()
    tokens = [tokenize(t) for t in texts]
    tok_s = time.perf_counter() - t0
    chunks = [IndexedChunk(i + 1, i, 0, dict(Counter(toks)), len(toks)) for i, toks in enumerate(tokens)]
    n_post = sum(len(c.tf) for c in chunks)
    print(f"tldr English pages: {len(chunks)} chunks, {n_post} postings "
          f"({n_post / len(chunks):.1f} distinct terms/chunk); tokenizing {len(chunks) / tok_s:.0f} pages/s")
    queries = sample_queries(texts, args.queries, random.Random(args.seed))
    print(f"{len(queries)} queries, {statistics.mean(map(len, queries)):.2f} terms on average")

    print(f"\n== {len(chunks)} chunks (tldr as is) ==")
    secs = min(build(chunks, len(chunks))[1] for _ in range(3))
    print(f"  add, one batch (best of 3): {len(chunks) / secs:,.0f} chunks/s ({secs:.3f} s)")
    index, secs = build(chunks, 100)
    print(f"  add, batches of 100: {len(chunks) / secs:,.0f} chunks/s")
    line("qmdd search (limit 10)", time_queries(lambda q: index.search(q, limit=10), queries))
    if not args.no_bm25s:
        compare_bm25s(tokens, index, queries, args.k1, args.b)

    for target in (int(s) for s in args.scales.split(",") if s):
        scale_run(replicate(chunks, target), len(chunks), queries, args.batch, args.cache)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\npeak RSS: {rss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
