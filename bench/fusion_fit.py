"""Fit `query`'s fusion (keyword share, cosine floor) on dumped keyword and vector lists, honestly.

`dump` runs every query of the BEIR eval collections, and of the known-item sets whose indexes a
`known_items.py --home` run left behind, through the daemon's `search` and `vsearch` (top 100, copies
not collapsed) and its `query`, and writes the ranked lists with their scores as JSON, one file a set.
`fit` then replays the fusion offline with qmdd's own `fuse` and `calibrate_cosine` over a grid of
(keyword share, cosine floor) pairs and prints, per set, how far fused results are above or below the
better of the two inputs (nDCG@10 on graded sets, Hit@1 on known-item sets), the pair that does best
in the worst set, and leave-one-set-out cross-validation: the pair chosen without a set, scored on it.

    python bench/fusion_fit.py dump --out /tmp/lists [--eval adi,cisi,...] [--known-home /tmp/ki-home]
                                    [--queries 200 --sample-docs 1500] [--model NAME]
    python bench/fusion_fit.py fit /tmp/lists [--shares 0.6,0.7] [--floors 0.3,0.7] [--all-scripts]

--model dumps the eval collections with another embedding model (the known-item home keeps the one
its `known_items.py --model` run chose); --queries/--sample-docs must be what that run used, or its
samples are rebuilt. --all-scripts: the model reads every script (multilingual-e5), so the vector
list keeps its weight on Chinese queries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import bench_daemon
from eval_quality import load_collection, ndcg_at, write_corpus
from known_items import corpora, corpus_daemon, corpus_root, prepare

from qmdctl.client import Client, call_collecting
from qmdd.search.fusion import RankedList, calibrate_cosine, fuse, script_coverage

SHARES = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9)
FLOORS = (0.0, 0.2, 0.25, 0.3, 0.35, 0.4)
Row = dict[str, Any]


def lists_of(client: Client, collection: str, query: str) -> dict[str, list[tuple[str, float]]]:
    out = {}
    for method in ("search", "vsearch", "query"):
        params: dict[str, Any] = {"query": query, "limit": 100, "collections": [collection], "snippet_lines": 1,
                                  "collapse": False}
        if method == "query":
            params.update(rerank=False, candidates=100)
        answer = call_collecting(client, method, params, "results")
        out[method] = [(r["path"], r["score"]) for r in answer["results"]]
    return out


def dump_eval(names: list[str], data: Path, out: Path, model: str | None) -> None:
    with bench_daemon("fusionfit") as (client, home):
        if model:
            client.call("model.use", {"name": model, "role": "embedding", "dry_run": False})
        for name in names:
            corpus, queries, qrels = load_collection(data / name)
            root = home / "corpora" / name
            stems = write_corpus(corpus, root)
            client.call("collection.add", {"path": str(root), "name": name, "update": True})
            client.call("embed", {"collections": [name]})
            rows = []
            for qid, gains in qrels.items():
                if qid in queries:
                    found = lists_of(client, name, queries[qid])
                    rows.append({"text": queries[qid], "gains": gains,
                                 **{m: [(stems[p[:-3]], s) for p, s in hits] for m, hits in found.items()}})
            client.call("collection.remove", {"name": name})
            (out / f"eval-{name}.json").write_text(json.dumps(rows))
            print(f"{name}: {len(rows)} queries", flush=True)


def dump_known(home: Path, archives: Path, out: Path, args: argparse.Namespace, only: list[str] | None) -> None:
    """The known-item sets of every corpus (or those named) whose index `known_items.py --home HOME`
    built and embedded."""
    for corpus in corpora("es"):
        if only is not None and corpus.collection not in only:
            continue
        if not (home / "qmdd" / "data" / "indexes" / corpus.collection).exists():
            continue
        _, ksets = prepare(corpus, corpus_root(corpus.archive, None, archives, home), home, args)
        with corpus_daemon(home / "qmdd", corpus.collection) as client:
            for kset in ksets:
                rows = [{"text": item.query, "gains": dict.fromkeys(item.relevant, 1),
                         **lists_of(client, corpus.collection, item.query)} for item in kset.items]
                (out / f"known-{kset.name}.json").write_text(json.dumps(rows))
                print(f"{kset.name}: {len(rows)} queries", flush=True)


def hit_at_1(ranked: list[str], gains: dict[str, int]) -> float:
    return 1.0 if ranked and gains.get(ranked[0], 0) > 0 else 0.0


def metric_of(name: str) -> Any:
    return hit_at_1 if name.startswith("known-") else ndcg_at


def fused_ranking(row: Row, share: float, floor: float, latin_only: bool) -> list[str]:
    """What `query` ranks for this row with these parameters (qmdd.search.hybrid._ranked_lists)."""
    coverage = script_coverage(row["text"], latin_only)
    lists = [RankedList("lex:0", share, [d for d, _ in row["search"]], [s for _, s in row["search"]]),
             RankedList("vec:1", (1.0 - share) * coverage, [d for d, _ in row["vsearch"]],
                        [calibrate_cosine(s, floor) for _, s in row["vsearch"]])]
    return [f.key for f in fuse(lists)]


def fit(folder: Path, shares: tuple[float, ...], floors: tuple[float, ...], latin_only: bool) -> None:
    sets = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    better: dict[str, float] = {}
    print(f"{'set':<22}{'queries':>8}{'search':>8}{'vsearch':>8}{'query':>8}  (nDCG@10; known-*: Hit@1)")
    for name, rows in sets.items():
        metric = metric_of(name)
        got = {m: statistics.fmean(metric([d for d, _ in r[m]], r["gains"]) for r in rows)
               for m in ("search", "vsearch", "query")}
        better[name] = max(got["search"], got["vsearch"])
        print(f"{name:<22}{len(rows):>8}{got['search']:>8.3f}{got['vsearch']:>8.3f}{got['query']:>8.3f}")
    grid = list(itertools.product(shares, floors))
    delta = {(share, floor, name): statistics.fmean(metric_of(name)(fused_ranking(r, share, floor, latin_only),
                                                                    r["gains"])
                                                    for r in rows) - better[name]
             for share, floor in grid for name, rows in sets.items()}

    def choose(names: list[str]) -> tuple[float, float]:
        # Worst set first, to the third decimal (finer differences are noise at a few hundred queries).
        return max(grid, key=lambda p: (round(min(delta[(*p, n)] for n in names), 3),
                                        statistics.fmean(delta[(*p, n)] for n in names)))

    print("\nfused minus the better input, per set:")
    print(f"{'share':>6}{'floor':>6}{'worst':>8}  " + " ".join(f"{n[-10:]:>10}" for n in sets))
    for share, floor in grid:
        row = [delta[(share, floor, n)] for n in sets]
        print(f"{share:>6}{floor:>6}{min(row):>+8.3f}  " + " ".join(f"{d:>+10.3f}" for d in row))
    share, floor = choose(list(sets))
    print(f"\nbest in the worst set, fitted on all: share {share}, floor {floor}, "
          f"worst {min(delta[(share, floor, n)] for n in sets):+.3f}")
    print("leave one set out:")
    for held in sets:
        s, f = choose([n for n in sets if n != held])
        print(f"  without {held:<22} chose share {s}, floor {f}: on {held} {delta[(s, f, held)]:+.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dump = sub.add_parser("dump")
    dump.add_argument("--out", type=Path, required=True)
    dump.add_argument("--eval", default="adi,cacm,cisi,cranfield,lisa,medline,npl,drcd-retrieval")
    dump.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "eval")
    dump.add_argument("--known-home", type=Path, default=None, help="a known_items.py --home whose sets to dump")
    dump.add_argument("--known", default=None, help="only these known-item collections (tldr-en,tldr-es,...)")
    dump.add_argument("--archives", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "md")
    dump.add_argument("--seed", type=int, default=13)
    dump.add_argument("--queries", type=int, default=200)
    dump.add_argument("--sample-docs", type=int, default=1500)
    dump.add_argument("--model", default=None, help="embedding model for the eval collections")
    fitting = sub.add_parser("fit")
    fitting.add_argument("folder", type=Path)
    fitting.add_argument("--shares", default=",".join(map(str, SHARES)))
    fitting.add_argument("--floors", default=",".join(map(str, FLOORS)))
    fitting.add_argument("--all-scripts", action="store_true", help="the model reads every script")
    args = parser.parse_args()
    if args.command == "fit":
        fit(args.folder, tuple(map(float, args.shares.split(","))), tuple(map(float, args.floors.split(","))),
            latin_only=not args.all_scripts)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.eval:
        dump_eval([n for n in args.eval.split(",") if n], args.data, args.out, args.model)
    if args.known_home is not None:
        only = [c for c in args.known.split(",") if c] if args.known else None
        dump_known(args.known_home, args.archives, args.out, args, only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
