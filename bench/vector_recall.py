"""Recall and latency of the vector index (qmdd.search.vectorindex) against exact kNN, old vs new.

For each size N: N chunks of 384-dim embedding-like unit vectors, a fraction of them (--duplicates)
carrying a copy of another chunk's vector, in three collections: 1% of the chunks, 10%, the rest.
200 queries (fresh draws from the same distribution) are answered unfiltered and filtered to the 10%
and 1% collections, for k = 10 and 100, by
- old: what qmdd did before issue 13: usearch keyed by chunk id (duplicates are separate nodes),
  asked for k (ef 96); under a filter, brute force below max(5000, 4k) allowed chunks, else asked for
  4k and widened 4x until k allowed chunks are found;
- new: VectorIndex.search.
Ground truth is numpy brute force over the stored float16 vectors with the float32 query. Recall is
tie-aware: a hit counts when its true similarity reaches the k-th best (less 1e-5), so which of two
byte-identical vectors is returned does not matter. Prints recall@k, median and p95 latency, build
time and peak RSS.

    python bench/vector_recall.py [--sizes 100000,1000000] [--duplicates 0.3] [--queries 200]
                                  [--floors 256,512]

The vectors imitate all-MiniLM-L6-v2 embeddings of tldr's English pages (9,425 chunks): a shared
direction, a power-law spectrum and small clusters. Measured there vs here (9,425 vectors): principal
components for 50/80/90% of the variance 39/118/173 vs 38/155/237; mean cosine to the 1st/10th/100th
neighbour 0.73/0.53/0.38 vs 0.71/0.53/0.37; HNSW recall@10 asking the graph for 10, 32 or 100 is
0.974/0.993/0.997 on perturbed real vectors and 0.895/0.977/0.994 for these queries, so these are
harder than real ones.

Measured (2-core VM, 30% duplicates, 200 queries, CANDIDATE_FLOOR 256; old / new):

    N     filter  recall@10       recall@100      p50 ms @10    p50 ms @100   build s
    100k  all     0.881 / 0.995   0.762 / 0.994   0.41 / 1.69   0.46 / 2.70   12.5 / 20.2
    100k  10%     0.848 / 1.000   0.973 / 1.000   0.94 / 2.66   9.06 / 4.87
    100k  1%      1.000 / 1.000   1.000 / 1.000   0.65 / 0.95   0.66 / 1.31
    1M    all     0.531 / 0.885   0.508 / 0.929   0.74 / 3.53   1.08 / 6.91   900 / 588
    1M    10%     0.603 / 0.954   0.835 / 1.000   2.55 / 22.3   16.1 / 56.2
    1M    1%      0.872 / 1.000   0.975 / 1.000   18.6 / 4.78   212 / 3.77

With CANDIDATE_FLOOR 512: 100k all 0.998 / 0.997 at 4.5 / 3.7 ms; 1M all 0.918 / 0.946 at 6.6 /
6.9 ms. Brute force over 700k float16 vectors costs ~70 ms (usearch, exact), over 20k ~1.3 ms.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pyroaring import BitMap
from usearch.index import Index

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qmdd.search import vectorindex
from qmdd.search.vectorindex import VectorIndex

DIM = 384
KS = (10, 100)
COLLECTION_SHARES = {1: 0.01, 2: 0.10}  # collection id -> share of the chunks; the rest are in 0
FILTERS: dict[str, list[int] | None] = {"all": None, "10%": [2], "1%": [1]}


def embedding_like(n: int, seed: int, *, clusters: int) -> np.ndarray:
    base = np.random.default_rng(97)  # the distribution: the same for data and queries
    rotation, _ = np.linalg.qr(base.standard_normal((DIM, DIM)))
    scale = np.arange(1, DIM + 1) ** -0.4
    scale /= np.linalg.norm(scale)
    shared = base.standard_normal(DIM)
    shared /= np.linalg.norm(shared)
    centres = np.random.default_rng(98).standard_normal((clusters, DIM)) * scale
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        x = (centres[rng.integers(0, clusters, m)] + 0.85 * rng.standard_normal((m, DIM)) * scale) @ rotation
        x += 0.55 * shared
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def corpus(n: int, duplicates: float) -> tuple[np.ndarray, np.ndarray]:
    """float16 vectors of chunks 0..n-1 (copies shuffled among them) and each chunk's collection."""
    distinct = max(1, round(n * (1 - duplicates)))
    rows = embedding_like(distinct, 1, clusters=max(1, n // 10)).astype(np.float16)
    rng = np.random.default_rng(2)
    source = np.concatenate([np.arange(distinct), rng.integers(0, distinct, n - distinct)])
    vectors = rows[rng.permutation(source)]
    draw = rng.random(n)
    collections = np.zeros(n, dtype=np.int64)
    collections[draw < COLLECTION_SHARES[1]] = 1
    collections[(draw >= COLLECTION_SHARES[1]) & (draw < COLLECTION_SHARES[1] + COLLECTION_SHARES[2])] = 2
    return vectors, collections


def ground_truth(vectors: np.ndarray, collections: np.ndarray, queries: np.ndarray,
                 k: int) -> dict[str, list[np.ndarray]]:
    """Per filter and query: the true similarity of the k-th best allowed chunk."""
    best = {name: np.full((len(queries), 0), -np.inf, dtype=np.float32) for name in FILTERS}
    for start in range(0, len(vectors), 100_000):
        block = vectors[start:start + 100_000].astype(np.float32)
        sims = queries @ block.T / np.linalg.norm(block, axis=1)
        for name, wanted in FILTERS.items():
            masked = sims if wanted is None else np.where(np.isin(collections[start:start + 100_000], wanted),
                                                            sims, -np.inf)
            merged = np.concatenate([best[name], masked], axis=1)
            keep = min(k, merged.shape[1])
            best[name] = -np.sort(-np.partition(merged, merged.shape[1] - keep, axis=1)[:, -keep:], axis=1)
    return {name: list(tops) for name, tops in best.items()}


class OldIndex:
    """The search qmdd had before issue 13, on the graph it built then."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.index = Index(ndim=DIM, metric="cos", dtype="f16", connectivity=16, expansion_add=64,
                           expansion_search=96)
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=0)
        self.size = len(vectors)

    def search(self, query: np.ndarray, limit: int, allowed: BitMap | None) -> list[int]:
        if allowed is not None and len(allowed) <= max(5000, limit * 4):
            keys = np.asarray(allowed.to_array(), dtype=np.uint64)
            matrix = np.asarray(self.index.get(keys, dtype="f32")).reshape(len(keys), -1)
            return keys[np.argsort(-(matrix @ query))[:limit]].tolist()
        count = limit if allowed is None else limit * 4
        while True:
            found = self.index.search(query, min(count, self.size), threads=1).keys.tolist()
            hits = [k for k in found if allowed is None or k in allowed]
            if len(hits) >= limit or count >= self.size:
                return hits[:limit]
            count *= 4


def measure(search: Callable[[np.ndarray, int, BitMap | None], list[int]], vectors: np.ndarray,
            queries: np.ndarray, kth: list[np.ndarray], k: int, allowed: BitMap | None) -> tuple[float, list[float]]:
    recalls, times = [], []
    for query, tops in zip(queries, kth, strict=True):
        t0 = time.perf_counter()
        hits = search(query, k, allowed)
        times.append(time.perf_counter() - t0)
        assert allowed is None or (all(h in allowed for h in hits) and len(set(hits)) == len(hits))
        rows = vectors[hits].astype(np.float32)
        true = rows @ query / np.linalg.norm(rows, axis=1) if hits else np.zeros(0)
        recalls.append(min(k, int(np.sum(true >= tops[min(k, len(tops)) - 1] - 1e-5))) / min(k, len(tops)))
    return float(np.mean(recalls)), times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int, duplicates: float, queries: np.ndarray, floors: list[int]) -> None:
    t0 = time.perf_counter()
    vectors, collections = corpus(n, duplicates)
    print(f"\nN = {n:,} chunks, {duplicates:.0%} carrying another's vector; data made in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    old = OldIndex(vectors)
    old_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = VectorIndex(DIM)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        new.add(range(start, stop), collections[start:stop].tolist(), vectors[start:stop], threads=0)
    new_build = time.perf_counter() - t0
    print(f"  build: old {old_build:.1f}s ({len(old.index):,} nodes), new {new_build:.1f}s "
          f"({new.statistics()['distinct_vectors']:,} nodes); peak RSS {peak_rss_mib():,.0f} MiB", flush=True)
    truth = ground_truth(vectors, collections, queries, max(KS))
    for floor in floors:
        vectorindex.CANDIDATE_FLOOR = floor
        print(f"  new: CANDIDATE_FLOOR {floor}\n  {'filter':<7}{'k':>4}  {'recall old':>10} {'new':>6}"
              f"   {'p50 ms old':>10} {'new':>6}   {'p95 ms old':>10} {'new':>6}")
        for name, wanted in FILTERS.items():
            allowed = new.allowed_keys(wanted, None)
            for k in KS:
                results = {}
                for label, search in (("old", old.search),
                                      ("new", lambda q, lim, a: [h.chunk_id for h in new.search(q, lim, a)])):
                    for query in queries[:10]:  # warm caches
                        search(query, k, allowed)
                    results[label] = measure(search, vectors, queries, truth[name], k, allowed)
                (r_old, t_old), (r_new, t_new) = results["old"], results["new"]
                print(f"  {name:<7}{k:>4}  {r_old:>10.4f} {r_new:>6.4f}   {1e3 * statistics.median(t_old):>10.2f} "
                      f"{1e3 * statistics.median(t_new):>6.2f}   {1e3 * percentile(t_old, 0.95):>10.2f} "
                      f"{1e3 * percentile(t_new, 0.95):>6.2f}", flush=True)
    print(f"  peak RSS {peak_rss_mib():,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--duplicates", type=float, default=0.3, help="share of chunks that copy another's vector")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--floors", default=str(vectorindex.CANDIDATE_FLOOR),
                        help="CANDIDATE_FLOOR values to try, comma-separated (one build serves them all)")
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        queries = embedding_like(args.queries, 3, clusters=max(1, n // 10))
        run(n, args.duplicates, queries, [int(f) for f in args.floors.split(",")])


if __name__ == "__main__":
    main()
