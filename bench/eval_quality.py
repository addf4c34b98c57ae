"""Retrieval quality of `search` on the BEIR-layout test collections: nDCG@10 and Recall@100.

Each corpus document becomes a markdown file (`# title` + text) in a temporary collection indexed by a
real daemon; every query goes through the daemon's `search` method, exactly as `qmdctl search` does.

    python bench/eval_quality.py [--data ../shared/data/eval] [--only cranfield,cisi]
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

from common import bench_daemon

from qmdctl.client import Client

# The plain BM25 reference nDCG@10 given in ../shared/data/README.md.
REFERENCE = {"cranfield": 0.352, "cisi": 0.368, "medline": 0.671, "cacm": 0.504, "npl": 0.445,
             "lisa": 0.432, "drcd-retrieval": 0.963}


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


def evaluate(name: str, folder: Path, client: Client, work: Path) -> dict[str, float]:
    corpus, queries, qrels = load_collection(folder)
    root = work / name
    names = write_corpus(corpus, root)
    started = time.perf_counter()
    client.call("collection.add", {"path": str(root), "name": name, "update": True})
    index_s = time.perf_counter() - started
    ndcgs, recalls, latencies = [], [], []
    for qid, gains in qrels.items():
        if qid not in queries:
            continue
        t0 = time.perf_counter()
        answer = client.call("search", {"query": queries[qid], "limit": 100, "collections": [name],
                                        "snippet_lines": 1})
        latencies.append(time.perf_counter() - t0)
        ranked = [names[r["path"][:-3]] for r in answer["results"]]
        ndcgs.append(ndcg_at(ranked, gains))
        recalls.append(recall_at(ranked, gains))
    # BM25 statistics span every collection of an index: evaluate each collection alone.
    client.call("collection.remove", {"name": name})
    return {"docs": len(corpus), "queries": len(ndcgs), "ndcg@10": statistics.fmean(ndcgs),
            "recall@100": statistics.fmean(recalls), "index_s": index_s,
            "query_ms_p50": statistics.median(latencies) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--only", default="", help="comma-separated collection names")
    args = parser.parse_args()
    names = sorted(p.name for p in args.data.iterdir() if (p / "corpus.jsonl").exists())
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    with bench_daemon("qmdd-eval-") as (client, work):
        print(f"{'collection':<16}{'docs':>7}{'queries':>8}{'nDCG@10':>9}{'ref':>7}{'Δ':>7}{'R@100':>8}"
              f"{'index s':>9}{'q p50 ms':>10}")
        for name in names:
            r = evaluate(name, args.data / name, client, work)
            ref = REFERENCE.get(name)
            delta = f"{r['ndcg@10'] - ref:+.3f}" if ref else "-"
            print(f"{name:<16}{r['docs']:>7}{r['queries']:>8}{r['ndcg@10']:>9.3f}{ref or 0:>7.3f}{delta:>7}"
                  f"{r['recall@100']:>8.3f}{r['index_s']:>9.2f}{r['query_ms_p50']:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
