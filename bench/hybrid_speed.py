"""Latency of the semantic paths against a real daemon: `search`, `vsearch` and `query` (no rerank).

(a) idle: tldr English pages, embedded for real (`embed`), then p50/p95 of each method over ~200
    queries, as RPC round trips on one warm connection (the three methods interleaved per query).
(b) busy: the same queries while a second collection (other tldr languages) is embedded by a
    concurrent `embed` from its own connection; only samples taken while that embed runs count.
    Reports the ratio to idle and the embed's own rate under query load.
(c) scale: the three markdown archives indexed up to ~100k chunks; vectors filled WITHOUT the model
    (daemon stopped): a few hundred chunks are embedded for real as seeds, every other chunk gets a
    seed's vector plus noise (unit norm, float16), written to SQLite's `embeddings` under the
    daemon's fingerprint. The restarted daemon rebuilds its vector index from SQLite (rebuild time
    from the start and from its log); then vsearch/query p50/p95 (the query embedding is real) and
    the daemon's peak RSS (VmHWM).

    python bench/hybrid_speed.py [--parts a,b,c] [--queries 200] [--busy-files 4000]
                                 [--scale-chunks 100000] [--seeds 512]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import bench_daemon
from speed import CACHE, extract, pct, rss_kib, sample_queries, tldr_english

import qmdctl.client as qmdctl_client
from qmdctl.client import Client, call_collecting
from qmdd.protocol.errors import QmddError

METHODS = ("search", "vsearch", "query")


def params(method: str, query: str, limit: int) -> dict[str, Any]:
    p: dict[str, Any] = {"query": query, "limit": limit}
    if method == "query":
        p["rerank"] = False
    return p


def measure(client: Client, queries: list[str], limit: int, methods: tuple[str, ...] = METHODS,
            keep: Callable[[], bool] | None = None) -> dict[str, list[float]]:
    """Round-trip seconds per method; the methods take turns per query so all see the same load.
    With `keep`, stop as soon as it turns false (a sample taken across that moment is dropped)."""
    out: dict[str, list[float]] = {m: [] for m in methods}
    for q in queries:
        for m in methods:
            if keep is not None and not keep():
                return out
            t0 = time.perf_counter()
            call_collecting(client, m, params(m, q, limit), "results")
            elapsed = time.perf_counter() - t0
            if keep is None or keep():
                out[m].append(elapsed)
    return out


def row(name: str, values: list[float]) -> str:
    if not values:
        return f"  {name:<9}{'-':>9}{'-':>9}{'-':>9}{0:>6}"
    return (f"  {name:<9}{statistics.median(values) * 1000:>9.2f}{pct(values, 0.95) * 1000:>9.2f}"
            f"{len(values) / sum(values):>9.0f}{len(values):>6}")


def print_table(title: str, lat: dict[str, list[float]], base: dict[str, list[float]] | None = None) -> None:
    print(title)
    extra = f"{'p50 x':>8}{'p95 x':>8}" if base else ""
    print(f"  {'method':<9}{'p50 ms':>9}{'p95 ms':>9}{'QPS':>9}{'n':>6}{extra}")
    for m, values in lat.items():
        line = row(m, values)
        if base and values and base.get(m):
            line += (f"{statistics.median(values) / statistics.median(base[m]):>8.2f}"
                     f"{pct(values, 0.95) / pct(base[m], 0.95):>8.2f}")
        print(line)
    print(flush=True)


def embed(client: Client, collections: list[str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = client.call("embed", {"collections": collections} if collections else {})
    result["wall_s"] = time.perf_counter() - t0
    return result


def vm_hwm_mib(pid: int) -> float:
    return rss_kib(pid)[1] / 1024


# --- (a) and (b) ---------------------------------------------------------------------------------

def busy_corpus(tldr_all: Path, dest: Path, limit: int) -> int:
    """Non-English tldr pages (distinct texts, so each needs the model), copied into `dest`."""
    pages = sorted(p for p in (tldr_all / "tldr").glob("pages.*/*/*.md"))
    random.Random(3).shuffle(pages)
    for page in pages[:limit]:
        target = dest / page.parent.parent.name / page.parent.name / page.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
    return min(limit, len(pages))


def idle_and_busy(args: argparse.Namespace, parts: set[str]) -> None:
    tldr = extract("tldr.tar.gz", tldr_english, CACHE / "tldr-en")
    with bench_daemon("qmdd-hybrid-", QMDD_LOG_LEVEL="warning") as (client, home):
        if args.pages:  # a quick run on the first pages only
            subset = home / "tldr-subset"
            for page in sorted(tldr.rglob("*.md"))[:args.pages]:
                target = subset / page.relative_to(tldr)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(page, target)
            tldr = subset
        client.connect()
        pid = int(client.server["pid"])
        t0 = time.perf_counter()
        summary = client.call("collection.add", {"path": str(tldr), "name": "tldr"})["update"][0]
        print(f"(a) tldr English: {summary['files']} files, {summary['chunks_added']} chunks indexed in "
              f"{time.perf_counter() - t0:.1f}s")
        e = embed(client)
        print(f"    embed: {e['embedded']} chunks ({e['texts_embedded']} distinct texts) in {e['seconds']:.1f}s = "
              f"{e['chunks_per_s'] or 0:.1f} chunks/s (RPC wall {e['wall_s']:.1f}s)")
        idle_embed_rate = e["chunks_per_s"]
        queries = sample_queries(tldr, args.queries)
        measure(client, queries[:20], args.limit)  # warm-up (connection, caches, the query path)
        idle = measure(client, queries, args.limit)
        print_table(f"(a) idle, {len(queries)} queries, limit {args.limit}, RPC round trip on one connection:", idle)

        if "b" in parts:
            tldr_all = extract("tldr.tar.gz", lambda n: n.endswith(".md"), CACHE / "tldr-all")
            root = home / "busy"
            files = busy_corpus(tldr_all, root, args.busy_files)
            t0 = time.perf_counter()
            s = client.call("collection.add", {"path": str(root), "name": "busy"})["update"][0]
            print(f"(b) busy corpus: {files} non-English tldr pages, {s['chunks_added']} chunks indexed in "
                  f"{time.perf_counter() - t0:.1f}s")
            started = threading.Event()
            done = threading.Event()
            outcome: dict[str, Any] = {}
            progress: list[tuple[float, int]] = []

            def on_item(kind: str, payload: Any) -> None:
                if kind == "progress" and isinstance(payload, dict):
                    progress.append((time.perf_counter(), int(payload.get("done") or 0)))
                    started.set()  # the first item comes once the model is loaded and the run begins

            def embed_thread() -> None:
                other = Client(client.paths, environ=client.environ)
                try:
                    outcome["result"] = other.call("embed", {"collections": ["busy"]}, on_item)
                except BaseException as exc:  # reported below
                    outcome["error"] = exc
                finally:
                    other.close()
                    done.set()
                    started.set()

            thread = threading.Thread(target=embed_thread, daemon=True)
            t_embed = time.perf_counter()
            thread.start()
            started.wait()
            time.sleep(0.5)  # let the first bulk batches reach the embedder
            t_measure = time.perf_counter()
            busy: dict[str, list[float]] = {m: [] for m in METHODS}
            deadline = t_measure + args.busy_seconds

            def embedding() -> bool:
                return not done.is_set() and time.perf_counter() < deadline

            while embedding():  # passes over the queries until the embed ends or time is up
                part = measure(client, queries, args.limit, keep=embedding)
                for m in METHODS:
                    busy[m].extend(part[m])
            t_stop = time.perf_counter()
            thread.join()
            if "error" in outcome:
                print(f"    concurrent embed FAILED: {outcome['error']!r}")
            else:
                r = outcome["result"]
                print(f"    concurrent embed: {r['embedded']} chunks in {r['seconds']:.1f}s = "
                      f"{r['chunks_per_s'] or 0:.1f} chunks/s overall "
                      f"(idle embed in (a): {idle_embed_rate or 0:.1f} chunks/s)")
            # The embed's rate while the queries ran, from its progress items.
            during = [(t, d) for t, d in progress if t_measure <= t <= t_stop]
            if len(during) >= 2:
                rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0])
                print(f"    embed rate while queries ran: {rate:.1f} chunks/s over {during[-1][0] - during[0][0]:.1f}s")
            n = sum(len(v) for v in busy.values())
            print(f"    measured {n} requests over {t_stop - t_measure:.1f}s (embed started "
                  f"{t_measure - t_embed:.1f}s before the first){'' if done.is_set() else '; embed still running'}")
            print_table("(b) during a concurrent `embed` (ratio to idle):", busy, idle)
            after = measure(client, queries[:50], args.limit)
            print_table("    after the embed finished (50 queries, sanity):", after, idle)
        print(f"daemon peak RSS (VmHWM): {vm_hwm_mib(pid):.0f} MiB\n")


# --- (c) -----------------------------------------------------------------------------------------

def wait_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon {pid} did not exit within {timeout:.0f}s")
        try:  # a zombie (our child, not yet reaped) still has a /proc entry
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return
        except (OSError, IndexError):
            return
        time.sleep(0.05)


def seed_vectors(db: Path, model_dir: Path, count: int, threads: int) -> tuple[np.ndarray, dict[str, int], float]:
    """Embed `count` random chunks for real (the model's input text, as `embed` builds it)."""
    from qmdd.chunking import embedding_text
    from qmdd.models.runtime import LoadedModel
    from qmdd.store.db import connect

    conn = connect(db, readonly=True)
    rows = conn.execute("SELECT k.hash, d.title, k.heading, k.text FROM chunks k JOIN documents d ON d.id = k.doc_id"
                        " ORDER BY random() LIMIT ?", (count,)).fetchall()
    conn.close()
    texts: dict[str, str] = {}
    for h, title, heading, text in rows:
        texts.setdefault(h, embedding_text(title, tuple(heading.split("\x1f")) if heading else (), text))
    model = LoadedModel(model_dir, device="cpu", compute_type="int8", threads=threads, workers=1)
    t0 = time.perf_counter()
    ids = model.token_ids(list(texts.values()))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    vectors = np.zeros((len(ids), model.dims), dtype=np.float32)
    start = 0
    while start < len(order):  # batches of ~2k padded tokens, similar lengths together
        end = start + 1
        while end < len(order) and (end - start + 1) * len(ids[order[end]]) <= 2048:
            end += 1
        part = order[start:end]
        vectors[part] = model.embed_ids([ids[i] for i in part])
        start = end
    return vectors, {h: i for i, h in enumerate(texts)}, time.perf_counter() - t0


def fill_vectors(db: Path, fingerprint: str, seeds: np.ndarray, seed_of: dict[str, int], limit: int,
                 noise: float) -> tuple[int, int, float]:
    """Give every chunk (the first `limit` by id) a vector under `fingerprint`: the real one for the
    seed chunks, else the seed of its document (chosen per document, so a document's chunks stay
    near each other) plus gaussian noise, unit norm. Returns (chunks covered, rows written, s)."""
    from qmdd.store.db import connect, transaction

    t0 = time.perf_counter()
    conn = connect(db)
    rows = conn.execute("SELECT k.hash, k.doc_id FROM chunks k ORDER BY k.id LIMIT ?", (limit,)).fetchall()
    have = {h for (h,) in conn.execute("SELECT hash FROM embeddings WHERE fingerprint = ?", (fingerprint,))}
    rng = np.random.default_rng(11)
    doc_seed: dict[int, int] = {}
    pending: dict[str, int] = {}
    for h, doc_id in rows:
        if h in have or h in pending:
            continue
        pending[h] = seed_of[h] if h in seed_of else doc_seed.setdefault(doc_id, int(rng.integers(len(seeds))))
    hashes = list(pending)
    written = 0
    for start in range(0, len(hashes), 20000):
        part = hashes[start:start + 20000]
        base = seeds[[pending[h] for h in part]]
        jitter = rng.normal(0.0, noise, size=base.shape).astype(np.float32)
        real = np.asarray([h in seed_of for h in part])
        jitter[real] = 0.0
        vectors = base + jitter
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        blobs = vectors.astype(np.float16)
        with transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO embeddings (hash, fingerprint, vector) VALUES (?, ?, ?)",
                             [(h, fingerprint, blobs[i].tobytes()) for i, h in enumerate(part)])
        written += len(part)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return len(rows), written, time.perf_counter() - t0


def vectors_ready_line(log: Path, after: int) -> str | None:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")[after:]
    except OSError:
        return None
    found = re.findall(r"vectors ready: .*", text)
    return found[-1] if found else None


def scale(args: argparse.Namespace) -> None:
    from qmdd.models.registry import ModelRegistry
    from qmdd.models.runtime import cpu_threads

    tldr_en = extract("tldr.tar.gz", tldr_english, CACHE / "tldr-en")
    archives = [("tldr", lambda: extract("tldr.tar.gz", lambda n: n.endswith(".md"), CACHE / "tldr-all")),
                ("cpp", lambda: extract("cpp-docs.tar.gz", lambda n: n.endswith(".md"), CACHE / "cpp-docs")),
                ("leetcode", lambda: extract("doocs-leetcode.tar.gz", lambda n: n.endswith(".md"),
                                             CACHE / "doocs-leetcode"))]
    with bench_daemon("qmdd-scale-", QMDD_LOG_LEVEL="info") as (client, _):
        client.connect()
        pid = int(client.server["pid"])
        chunks = 0
        t0 = time.perf_counter()
        for name, root in archives:
            s = client.call("collection.add", {"path": str(root()), "name": name, "masks": ["**/*.md"]})["update"][0]
            chunks = sum(c["chunks"] for c in client.call("status")["collections"])
            print(f"(c) + {name}: {s['files']} files; {chunks} chunks in all")
            if chunks >= args.scale_chunks:
                break
        status = client.call("status")
        fingerprint = status["model"]["fingerprint"]
        print(f"    indexed in {time.perf_counter() - t0:.1f}s; fingerprint {fingerprint}; daemon peak RSS "
              f"{vm_hwm_mib(pid):.0f} MiB")
        if not fingerprint:
            raise SystemExit("the daemon reports no model fingerprint: is the model package installed?")
        paths = client.paths
        client.call("shutdown")
        client.close()
        wait_gone(pid)

        t0 = time.perf_counter()
        folder = ModelRegistry(paths).converted_dir(status["model"]["embedding"])
        seeds, seed_of, seed_s = seed_vectors(paths.database, folder, args.seeds, cpu_threads())
        print(f"    {len(seeds)} seed chunks embedded for real in {seed_s:.1f}s; synthetic vectors: seed of the "
              f"document + N(0, {args.noise}) per dimension, unit norm (cosine to seed ~"
              f"{1 / np.sqrt(1 + seeds.shape[1] * args.noise ** 2):.2f})")
        covered, written, fill_s = fill_vectors(paths.database, fingerprint, seeds, seed_of, args.scale_chunks,
                                                args.noise)
        print(f"    vectors for {covered} chunks ({written} distinct texts) written to SQLite in {fill_s:.1f}s")

        log_offset = paths.log_file.stat().st_size if paths.log_file.exists() else 0
        t0 = time.perf_counter()
        qmdctl_client.start_daemon(paths, client.environ, timeout_s=60.0)
        start_s = time.perf_counter() - t0
        client.connect(autostart=False)
        pid = int(client.server["pid"])
        # The daemon answers at once; its vector index is rebuilt from SQLite in the background.
        status = client.call("status")
        while not status["actors"].get("vectors", {}).get("ready"):
            time.sleep(0.05)
            status = client.call("status")
        ready_s = time.perf_counter() - t0
        vec = status["actors"]["vectors"]
        print(f"    restart until the daemon answers: {start_s:.2f}s, until its vector index is ready: {ready_s:.2f}s; "
              f"vector index: {vec.get('vectors')} vectors, loaded_from={vec.get('loaded_from')}")
        print(f"    daemon log: {vectors_ready_line(paths.log_file, log_offset) or '(no vectors-ready line)'}")
        print(f"    model: {status['model'].get('embedded')} of {status['model'].get('chunks')} chunks embedded")

        queries = sample_queries(tldr_en, args.queries)
        t0 = time.perf_counter()
        call_collecting(client, "vsearch", params("vsearch", queries[0], args.limit), "results")
        loaded = "loaded" if status["model"].get("loaded") else "not loaded"
        print(f"    first vsearch after the restart: {(time.perf_counter() - t0) * 1000:.0f} ms (model {loaded} at "
              "the first status; a daemon that preloads it may still be loading)")
        measure(client, queries[:20], args.limit)
        lat = measure(client, queries, args.limit)
        print_table(f"(c) at {vec.get('vectors')} vectors / {status['model'].get('chunks')} chunks, "
                    f"{len(queries)} queries, limit {args.limit}:", lat)
        rss, peak = rss_kib(pid)
        print(f"    daemon after restart: RSS {rss / 1024:.0f} MiB, peak (VmHWM) {peak / 1024:.0f} MiB; "
              f"vector snapshot {status['index_bytes'].get('vector_snapshot', 0) / 2**20:.0f} MiB\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="a,b,c", help="a (idle), b (busy: needs a), c (scale)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--limit", type=int, default=5, help="results per query (qmdctl's default)")
    parser.add_argument("--pages", type=int, default=0, help="(a) on the first N tldr pages only (0: all)")
    parser.add_argument("--busy-files", type=int, default=4000, help="pages embedded concurrently in (b)")
    parser.add_argument("--busy-seconds", type=float, default=60.0, help="longest measurement under load in (b)")
    parser.add_argument("--scale-chunks", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=512, help="chunks embedded for real in (c)")
    parser.add_argument("--noise", type=float, default=0.04, help="per-dimension noise of synthetic vectors")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    try:
        if parts & {"a", "b"}:
            idle_and_busy(args, parts)
        if "c" in parts:
            scale(args)
    except QmddError as exc:
        print(f"daemon error: {exc}\n  hints: {exc.hints}\n  details: {exc.details}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
