"""Retrieval quality of `search`, `vsearch` and `query` on the BEIR-layout test collections:
nDCG@10 and Recall@100 per method, beside the plain-BM25 reference nDCG@10.

Each corpus document becomes a markdown file (`# title` + text) in a temporary collection indexed by a
real daemon; every query goes through the daemon's RPC methods over one connection, exactly as
`qmdctl search` / `vsearch` / `query` do. When `vsearch` or `query` is evaluated the collection is
embedded (`embed`) right after it is added. Collections are evaluated one at a time and removed after.
`query` runs without the reranker (none is installed by default), with `--candidates` per list.

    python bench/eval_quality.py [--data ../shared/data/eval] [--collections cranfield,cisi]
                                 [--methods search,vsearch,query] [--model NAME] [--out results.json]

--model selects the embedding model (`qmdctl model use NAME`, e.g. multilingual-e5-small) before
anything is embedded; the default is the daemon's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import bench_daemon

from qmdctl.client import Client, call_collecting

# The plain BM25 reference nDCG@10 given in ../shared/data/README.md.
REFERENCE = {"cranfield": 0.352, "cisi": 0.368, "medline": 0.671, "cacm": 0.504, "npl": 0.445,
             "lisa": 0.432, "drcd-retrieval": 0.963}
METHODS = ("search", "vsearch", "query")
LIMIT = 100


def load_collection(folder: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = (d.get("title") or "", d.get("text") or "")
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels.tsv", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for qid, did, score in reader:
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def ndcg_at(ranked: list[str], gains: dict[str, int], k: int = 10) -> float:
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], gains: dict[str, int], k: int = 100) -> float:
    return len(set(ranked[:k]) & set(gains)) / len(gains) if gains else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def file_stem(n: int) -> str:
    """A letters-only name per document. The BEIR ids are numbers, and numbers in file names would
    be indexed as path terms and match numbers in queries: real notes have meaningful names instead."""
    letters = ""
    n += 26 * 27  # at least three letters
    while n:
        n, r = divmod(n, 26)
        letters = chr(ord("a") + r) + letters
    return "z" + letters


def write_corpus(corpus: dict[str, tuple[str, str]], root: Path) -> dict[str, str]:
    """Write one markdown file per document; returns file stem -> corpus id."""
    root.mkdir(parents=True)
    names = {}
    for n, (doc_id, (title, text)) in enumerate(corpus.items()):
        body = f"# {title.strip()}\n\n{text.strip()}\n" if title.strip() else f"{text.strip()}\n"
        names[file_stem(n)] = doc_id
        (root / f"{file_stem(n)}.md").write_text(body, encoding="utf-8")
    return names


def method_params(method: str, query: str, name: str, candidates: int) -> dict[str, Any]:
    params: dict[str, Any] = {"query": query, "limit": LIMIT, "collections": [name], "snippet_lines": 1}
    if method == "query":
        params.update(rerank=False, candidates=candidates)
    return params


def run_method(client: Client, method: str, name: str, names: dict[str, str], queries: dict[str, str],
               qrels: dict[str, dict[str, int]], candidates: int) -> dict[str, Any]:
    ndcgs, recalls, latencies = [], [], []
    for qid, gains in qrels.items():
        if qid not in queries:
            continue
        t0 = time.perf_counter()
        answer = call_collecting(client, method, method_params(method, queries[qid], name, candidates), "results")
        latencies.append(time.perf_counter() - t0)
        ranked = [names[r["path"][:-3]] for r in answer["results"]]
        ndcgs.append(ndcg_at(ranked, gains))
        recalls.append(recall_at(ranked, gains))
    return {"queries": len(ndcgs), "ndcg@10": statistics.fmean(ndcgs), "recall@100": statistics.fmean(recalls),
            "query_ms_p50": statistics.median(latencies) * 1000, "query_ms_p95": pct(latencies, 0.95) * 1000}


def evaluate(name: str, folder: Path, client: Client, work: Path, methods: list[str],
             candidates: int) -> dict[str, Any]:
    corpus, queries, qrels = load_collection(folder)
    root = work / name
    names = write_corpus(corpus, root)
    started = time.perf_counter()
    added = client.call("collection.add", {"path": str(root), "name": name, "update": True})
    out: dict[str, Any] = {"docs": len(corpus), "index_s": time.perf_counter() - started,
                           "chunks": sum(s.get("chunks_added", 0) for s in added.get("update", [])),
                           "reference_ndcg@10": REFERENCE.get(name), "methods": {}}
    try:
        if any(m in ("vsearch", "query") for m in methods):
            t0 = time.perf_counter()
            embedded = client.call("embed", {"collections": [name]})
            wall = time.perf_counter() - t0
            out["embed"] = {"embedded": embedded["embedded"], "texts_embedded": embedded.get("texts_embedded"),
                            "seconds": embedded["seconds"], "wall_s": round(wall, 3),
                            "chunks_per_s": embedded["chunks_per_s"]}
            print(f"  {name}: embedded {embedded['embedded']} chunks ({embedded.get('texts_embedded')} distinct "
                  f"texts) in {embedded['seconds']:.1f}s = {embedded['chunks_per_s'] or 0:.1f} chunks/s "
                  f"(RPC wall {wall:.1f}s)", flush=True)
        for method in methods:
            out["methods"][method] = run_method(client, method, name, names, queries, qrels, candidates)
    finally:
        # BM25 statistics span every collection of an index: evaluate each collection alone.
        client.call("collection.remove", {"name": name})
    out["queries"] = max((m["queries"] for m in out["methods"].values()), default=0)
    return out


def print_collection(name: str, r: dict[str, Any]) -> None:
    ref = r["reference_ndcg@10"]
    embed = r.get("embed")
    head = f"{name}: {r['docs']} docs, {r['chunks']} chunks, {r['queries']} queries; index {r['index_s']:.1f}s"
    if embed:
        head += f"; embed {embed['seconds']:.1f}s ({embed['chunks_per_s'] or 0:.1f} chunks/s)"
    print(head)
    print(f"  {'method':<10}{'nDCG@10':>9}{'Δref':>8}{'R@100':>8}{'q p50 ms':>10}{'q p95 ms':>10}")
    for method, m in r["methods"].items():
        delta = f"{m['ndcg@10'] - ref:+.3f}" if ref is not None else "-"
        print(f"  {method:<10}{m['ndcg@10']:>9.3f}{delta:>8}{m['recall@100']:>8.3f}"
              f"{m['query_ms_p50']:>10.2f}{m['query_ms_p95']:>10.2f}")
    print(f"  {'BM25 ref':<10}{ref:>9.3f}" if ref is not None else f"  {'BM25 ref':<10}{'-':>9}")
    verdict = query_beats_both(r)
    if verdict is not None:
        print(f"  query beats search and vsearch on nDCG@10: {'YES' if verdict else 'no'}")
    print(flush=True)


def query_beats_both(r: dict[str, Any]) -> bool | None:
    m = r["methods"]
    if not all(k in m for k in METHODS):
        return None
    return m["query"]["ndcg@10"] > max(m["search"]["ndcg@10"], m["vsearch"]["ndcg@10"])


def print_summary(results: dict[str, dict[str, Any]], methods: list[str]) -> None:
    cols = "".join(f"{m + ' nDCG':>14}{'R@100':>7}" for m in methods)
    print(f"{'collection':<16}{'ref':>7}{cols}{'  query>both':>12}")
    for name, r in results.items():
        ref = r["reference_ndcg@10"]
        row = "".join(f"{r['methods'][m]['ndcg@10']:>14.3f}{r['methods'][m]['recall@100']:>7.3f}" for m in methods)
        verdict = query_beats_both(r)
        mark = "-" if verdict is None else ("YES" if verdict else "no")
        ref_text = f"{ref:.3f}" if ref is not None else "-"
        print(f"{name:<16}{ref_text:>7}{row}{mark:>12}")
    with_ref = {n: r for n, r in results.items() if r["reference_ndcg@10"] is not None}
    for label, group in (("mean", results), (f"mean of {len(with_ref)} ref", with_ref)):
        if len(group) < 2 or (label != "mean" and len(group) == len(results)):
            continue
        means = "".join(f"{statistics.fmean(r['methods'][m]['ndcg@10'] for r in group.values()):>14.3f}"
                        f"{statistics.fmean(r['methods'][m]['recall@100'] for r in group.values()):>7.3f}"
                        for m in methods)
        refs = [r["reference_ndcg@10"] for r in group.values() if r["reference_ndcg@10"] is not None]
        ref_mean = f"{statistics.fmean(refs):.3f}" if len(refs) == len(group) else "-"
        wins = [query_beats_both(r) for r in group.values()]
        tally = f"{sum(1 for w in wins if w)}/{len(wins)}" if None not in wins else "-"
        print(f"{label:<16}{ref_mean:>7}{means}{tally:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--collections", "--only", dest="only", default="",
                        help="comma-separated collection names (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of search,vsearch,query (default: all three)")
    parser.add_argument("--candidates", type=int, default=LIMIT,
                        help=f"`query` candidates per ranked list (default {LIMIT}; the daemon uses "
                             "max(candidates, limit) anyway)")
    parser.add_argument("--model", default=None, help="embedding model to use (default: the daemon's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    names = sorted(p.name for p in args.data.iterdir() if (p / "corpus.jsonl").exists())
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in names]
        if missing:
            parser.error(f"no such collection(s) in {args.data}: {missing}")
        names = [n for n in names if n in wanted]
    results: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {"methods": methods, "limit": LIMIT, "candidates": args.candidates, "rerank": False}
    with bench_daemon("qmdd-eval-", QMDD_LOG_LEVEL="warning") as (client, work):
        if any(m in ("vsearch", "query") for m in methods):
            # Load (and on a fresh home convert) the model once, outside the per-collection timings.
            t0 = time.perf_counter()
            if args.model:
                client.call("model.use", {"name": args.model, "role": "embedding", "dry_run": False})
            client.call("embed", {})
            model = client.call("status")["model"]
            report["model"] = {k: model.get(k) for k in ("embedding", "fingerprint", "device", "compute_type")}
            report["model_load_s"] = round(time.perf_counter() - t0, 2)
            print(f"model ready in {report['model_load_s']:.1f}s (convert + load): "
                  f"{model.get('fingerprint')} on {model.get('device')}", flush=True)
        for name in names:
            results[name] = evaluate(name, args.data / name, client, work, methods, args.candidates)
            print_collection(name, results[name])
            if args.out:  # written after every collection, so a long run that dies keeps what it did
                args.out.write_text(json.dumps({**report, "collections": results}, indent=1))
    print_summary(results, methods)
    if args.out:
        args.out.write_text(json.dumps({**report, "collections": results}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
