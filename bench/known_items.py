"""Known-item dev sets from the shared markdown corpora (issue 13): how often `search`, `vsearch` and
`query` put the one page a query was made from at the top. Hit@1, MRR@10, nDCG@10 (binary; the first
acceptable answer counts), Recall@100 (any answer in the top 100) and latency p50/p95 per set and method,
and whether `query` is within 0.005 of the better of `search` and `vsearch` on Hit@1 and on nDCG@10.

Sets (each --queries queries, drawn with --seed; how they are built: known_sets.py):
  tldr-names          English tldr pages/, query = the command's name ("git rebase", "tar")
  tldr-tasks          same collection, query = the page's first example description without the
                      command's own words ("Create an archive from files" for tar)
  tldr-LANG-tasks     the same over pages.LANG/ (--tldr-lang, default es: 2,365 pages)
  leetcode-en-titles  doocs-leetcode, query = a problem's English title without its number
  leetcode-zh-titles  same collection, query = the Chinese title (README.md)
  cpp-titles          cpp-docs docs/, query = a page's front-matter title
The answer is every page with the query's title (the same tldr command on common/ and linux/, a
title used twice in cpp-docs) and, for LeetCode, the problem's README in the other language. The
corpora are as they are: tldr and LeetCode paths hold the name or title, and paths are indexed.

Each corpus is its own collection in its own named index (QMDD_INDEX), so its own daemon and BM25
statistics: a corpus is never scored against the words of another. The daemon is a real one, queried
over RPC exactly as `qmdctl` does; `query` runs without reranking. LeetCode and cpp-docs are indexed as
a seeded sample of --sample-docs files (every answer included, linked into the work folder with their
relative paths) so that embedding them takes minutes; tldr folders are indexed whole.

The archives (--archives) are extracted into the work folder, unless --corpora names a folder where
they are already extracted. --home keeps the work folder (extracted corpora, samples, the daemons'
QMDD_HOME with index and vectors) between runs: a second run rescans and embeds only what changed,
and starts fresh daemons on the code in the tree. A change to chunking or indexing needs a new home.

    python bench/known_items.py [--home /tmp/ki-home] [--sets tldr-names,cpp-titles]
        [--methods search,vsearch,query] [--limit 100] [--candidates 100] [--show-misses 10]
        [--queries 200] [--sample-docs 1500] [--seed 13] [--tldr-lang es] [--model NAME] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from known_sets import (
    KnownSet,
    cpp_sets,
    first_relevant_rank,
    item_scores,
    leetcode_sets,
    markdown_files,
    percentile,
    sample_documents,
    tldr_sets,
)

from qmdctl.client import Client, call_collecting
from qmdd.paths import resolve_paths

METHODS = ("search", "vsearch", "query")
METRICS = ("hit@1", "mrr@10", "ndcg@10", "recall@100")
TOLERANCE = 0.005  # query passes when it is at most this far below the better of search and vsearch
DEFAULT_QUERIES = 200
DAEMON_DEFAULT_CANDIDATES = 100  # `query`'s own default (qmdd/protocol/wire.py)


@dataclass(frozen=True)
class Corpus:
    collection: str  # also the named index its daemon serves
    archive: str  # the archive's name in --archives, and its top folder
    folder: str  # the folder inside the archive the collection covers ("" for all of it)
    sampled: bool
    sets: tuple[str, ...]
    build: Callable[[Path, int, int], list[KnownSet]]  # (folder, queries per set, seed) -> the sets


def corpora(tldr_lang: str) -> tuple[Corpus, ...]:
    lang, lang_tasks = f"tldr-{tldr_lang}", f"tldr-{tldr_lang}-tasks"
    return (
        Corpus("tldr-en", "tldr", "pages", False, ("tldr-names", "tldr-tasks"),
               partial(tldr_sets, collection="tldr-en", names_set="tldr-names", tasks_set="tldr-tasks")),
        Corpus(lang, "tldr", f"pages.{tldr_lang}", False, (lang_tasks,),
               partial(tldr_sets, collection=lang, names_set=None, tasks_set=lang_tasks)),
        Corpus("leetcode", "doocs-leetcode", "", True, ("leetcode-en-titles", "leetcode-zh-titles"),
               partial(leetcode_sets, collection="leetcode")),
        Corpus("cpp-docs", "cpp-docs", "docs", True, ("cpp-titles",), partial(cpp_sets, collection="cpp-docs")),
    )


# The corpora on disk.


def corpus_root(archive: str, corpora_dir: Path | None, archives: Path, work: Path) -> Path:
    """The extracted archive's top folder: under --corpora (as DIR/NAME or DIR/NAME/NAME), or
    extracted into the work folder once (a marker says the extraction finished)."""
    if corpora_dir is not None:
        base = corpora_dir / archive
        return base / archive if (base / archive).is_dir() else base
    extracted = work / "extracted"
    done = extracted / f"{archive}.done"
    if not done.exists():
        shutil.rmtree(extracted / archive, ignore_errors=True)
        extracted.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with tarfile.open(archives / f"{archive}.tar.gz") as tar:
            tar.extractall(extracted, filter="data")
        done.touch()
        print(f"extracted {archive}.tar.gz in {time.perf_counter() - t0:.1f}s", flush=True)
    return extracted / archive


def materialize_sample(source: Path, files: list[str], dest: Path) -> None:
    """The sampled files under dest with their relative paths, hard-linked (copied across file
    systems); left as it is when the same sample is already there, so the index stays valid."""
    manifest = dest.parent / f"{dest.name}.files"
    wanted = "\n".join(files)
    if dest.is_dir() and manifest.exists() and manifest.read_text(encoding="utf-8") == wanted:
        return
    shutil.rmtree(dest, ignore_errors=True)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / rel, target)
        except OSError:
            shutil.copy2(source / rel, target)
    manifest.write_text(wanted, encoding="utf-8")


# The daemon.


@contextmanager
def corpus_daemon(qmdd_home: Path, index: str) -> Iterator[Client]:
    """A client of the daemon of one named index under qmdd_home (started on first call); stopped after."""
    environ = {**os.environ, "QMDD_HOME": str(qmdd_home), "QMDD_INDEX": index, "QMDD_LOG_LEVEL": "warning"}
    client = Client(resolve_paths(environ), environ=environ)
    try:
        yield client
    finally:
        try:
            client.call("shutdown")
        finally:
            client.close()


def ensure_collection(client: Client, name: str, root: Path) -> dict[str, Any]:
    """Add the collection, or rescan it when this index already has it over the same folder."""
    existing = {c["name"]: c for c in client.call("collection.list")}
    known = existing.get(name)
    if known is not None and os.path.realpath(known["root"]) != os.path.realpath(root):
        print(f"  {name}: was over {known['root']}, now {root}: indexing again", flush=True)
        client.call("collection.remove", {"name": name})
        known = None
    t0 = time.perf_counter()
    if known is None:
        summaries = client.call("collection.add", {"path": str(root), "name": name, "update": True})["update"]
    else:
        summaries = client.call("update", {"collections": [name]})
    seconds = time.perf_counter() - t0
    listed = {c["name"]: c for c in client.call("collection.list")}[name]
    return {"root": str(root), "documents": listed["documents"], "chunks": listed["chunks"],
            "reused": known is not None, "index_s": round(seconds, 2),
            "chunks_added": sum(s.get("chunks_added", 0) for s in summaries)}


def indexed_paths(client: Client, name: str) -> set[str]:
    return {f["path"] for f in call_collecting(client, "ls", {"target": name}, "files")["files"]}


def unindexed_answers(ksets: list[KnownSet], indexed: set[str]) -> int:
    """How many queries have no answer in the index (the daemon skipped a file the walk selected):
    such a query can only miss, so say it rather than let it pass for a ranking problem."""
    return sum(1 for k in ksets for item in k.items if not item.relevant & indexed)


def embed(client: Client, name: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    answer = client.call("embed", {"collections": [name]})
    return {"embedded": answer["embedded"], "seconds": answer["seconds"], "wall_s": round(time.perf_counter() - t0, 2),
            "chunks_per_s": answer["chunks_per_s"]}


def method_params(method: str, query: str, collection: str, limit: int, candidates: int) -> dict[str, Any]:
    params: dict[str, Any] = {"query": query, "limit": limit, "collections": [collection], "snippet_lines": 1}
    if method == "query":
        params.update(rerank=False, candidates=candidates)
    return params


def run_method(client: Client, kset: KnownSet, method: str, limit: int, candidates: int) -> dict[str, Any]:
    # One call first, untimed: the first vector query may still load the model.
    client.call(method, method_params(method, "warm up", kset.collection, 1, candidates))
    scores: dict[str, list[float]] = {m: [] for m in METRICS}
    latencies, ranks, tops = [], [], []
    for item in kset.items:
        t0 = time.perf_counter()
        answer = call_collecting(client, method, method_params(method, item.query, kset.collection, limit,
                                                               candidates), "results")
        latencies.append(time.perf_counter() - t0)
        results = [r for r in answer["results"] if r["collection"] == kset.collection]
        ranked = [r["path"] for r in results]
        for metric, value in item_scores(ranked, item.relevant, limit).items():
            scores[metric].append(value)
        ranks.append(first_relevant_rank(ranked, item.relevant))
        tops.append([results[0]["path"], round(results[0]["score"], 4)] if results else None)
    return {**{m: statistics.fmean(v) for m, v in scores.items()},
            "query_ms_p50": statistics.median(latencies) * 1000, "query_ms_p95": percentile(latencies, 0.95) * 1000,
            "ranks": ranks, "top1": tops}


def verdict(methods: dict[str, dict[str, Any]]) -> dict[str, bool] | None:
    """Whether query is within TOLERANCE of the better single method, on Hit@1 and on nDCG@10."""
    if not all(m in methods for m in METHODS):
        return None
    return {metric: methods["query"][metric] >= max(methods["search"][metric], methods["vsearch"][metric]) - TOLERANCE
            for metric in ("hit@1", "ndcg@10")}


# Reports.


def yes_no(value: bool) -> str:
    return "YES" if value else "no"


def print_set(kset: KnownSet, result: dict[str, Any], collection: dict[str, Any], show_misses: int) -> None:
    print(f"{kset.name} ({kset.collection}: {collection['documents']} docs, {collection['chunks']} chunks): "
          f"{result['queries']} queries, {result['mean_relevant']:.2f} relevant docs per query")
    print(f"  {'method':<10}{'Hit@1':>7}{'MRR@10':>8}{'nDCG@10':>9}{'R@100':>7}{'p50 ms':>9}{'p95 ms':>9}")
    for method, m in result["methods"].items():
        print(f"  {method:<10}{m['hit@1']:>7.3f}{m['mrr@10']:>8.3f}{m['ndcg@10']:>9.3f}{m['recall@100']:>7.3f}"
              f"{m['query_ms_p50']:>9.2f}{m['query_ms_p95']:>9.2f}")
    if result["verdict"] is not None:
        v = result["verdict"]
        print(f"  query >= max(search, vsearch) - {TOLERANCE}: Hit@1 {yes_no(v['hit@1'])}, "
              f"nDCG@10 {yes_no(v['ndcg@10'])}")
    if show_misses:
        for method, m in result["methods"].items():
            misses = [i for i, rank in enumerate(m["ranks"]) if rank != 1][:show_misses]
            for i in misses:
                item = kset.items[i]
                wanted = sorted(item.relevant)
                more = f" (+{len(wanted) - 1} more)" if len(wanted) > 1 else ""
                top = m["top1"][i]
                first = f"{top[0]} ({top[1]:.3f})" if top else "nothing"
                rank = m["ranks"][i] or "none"
                print(f"  {method} miss: {item.query!r} -> want {wanted[0]}{more} at rank {rank}; first: {first}")
    print(flush=True)


def print_summary(results: dict[str, dict[str, Any]], methods: list[str]) -> None:
    cols = "".join(f"{m + ' H@1':>13}{'nDCG':>7}" for m in methods)
    print(f"{'set':<20}{cols}{'query>=max H@1':>16}{'nDCG':>6}")
    for name, r in results.items():
        row = "".join(f"{r['methods'][m]['hit@1']:>13.3f}{r['methods'][m]['ndcg@10']:>7.3f}" for m in methods)
        v = r["verdict"]
        marks = f"{yes_no(v['hit@1']):>16}{yes_no(v['ndcg@10']):>6}" if v else f"{'-':>16}{'-':>6}"
        print(f"{name:<20}{row}{marks}")
    if len(results) > 1:
        means = "".join(f"{statistics.fmean(r['methods'][m]['hit@1'] for r in results.values()):>13.3f}"
                        f"{statistics.fmean(r['methods'][m]['ndcg@10'] for r in results.values()):>7.3f}"
                        for m in methods)
        verdicts = [r["verdict"] for r in results.values() if r["verdict"]]
        tally = "".join(f"{sum(v[k] for v in verdicts)}/{len(verdicts)}".rjust(w)
                        for k, w in (("hit@1", 16), ("ndcg@10", 6))) if verdicts else ""
        print(f"{'mean':<20}{means}{tally}")


# The run.


def prepare(corpus: Corpus, root: Path, work: Path, args: argparse.Namespace) -> tuple[Path, list[KnownSet]]:
    """The folder the collection covers and the corpus's sets (all of them, whichever are asked for).
    The sample holds the answers of every set at its default size or more, so a run with fewer
    --queries or other --sets finds the same sample, and its index and vectors, in a kept home."""
    folder = root / corpus.folder if corpus.folder else root
    t0 = time.perf_counter()
    # Fewer --queries are the first ones of the default draw, not a draw of their own.
    ksets = corpus.build(folder, max(args.queries, DEFAULT_QUERIES), args.seed)
    assert tuple(k.name for k in ksets) == corpus.sets, (corpus.sets, [k.name for k in ksets])
    if corpus.sampled:
        required = {path for k in ksets for item in k.items for path in item.relevant}
        files = sample_documents(markdown_files(folder), required, args.sample_docs, args.seed)
        sample = work / "collections" / corpus.collection
        materialize_sample(folder, files, sample)
        folder = sample
        print(f"{corpus.collection}: sample of {len(files)} files ({len(required)} answers)", flush=True)
    ksets = [replace(k, items=k.items[:args.queries]) for k in ksets]
    print(f"{corpus.collection}: sets built in {time.perf_counter() - t0:.1f}s: "
          + ", ".join(f"{k.name} {len(k.items)}" for k in ksets), flush=True)
    return folder, ksets


def evaluate_corpus(corpus: Corpus, wanted: list[str], root: Path, work: Path, methods: list[str],
                    args: argparse.Namespace, report: dict[str, Any]) -> None:
    folder, ksets = prepare(corpus, root, work, args)
    with corpus_daemon(work / "qmdd", corpus.collection) as client:
        collection = ensure_collection(client, corpus.collection, folder)
        print(f"  {corpus.collection}: {collection['documents']} docs, {collection['chunks']} chunks "
              f"({'rescanned' if collection['reused'] else 'indexed'} in {collection['index_s']:.1f}s)", flush=True)
        if any(m in ("vsearch", "query") for m in methods):
            if args.model:
                client.call("model.use", {"name": args.model, "role": "embedding", "dry_run": False})
            collection["embed"] = e = embed(client, corpus.collection)
            print(f"  {corpus.collection}: embedded {e['embedded']} chunks in {e['wall_s']:.1f}s "
                  f"({e['chunks_per_s'] or 0:.1f} chunks/s)", flush=True)
        report["collections"][corpus.collection] = collection
        missing = unindexed_answers(ksets, indexed_paths(client, corpus.collection))
        if missing:
            print(f"  WARNING {corpus.collection}: {missing} queries have no answer in the index", flush=True)
        for kset in ksets:
            if kset.name not in wanted:
                continue
            result: dict[str, Any] = {
                "collection": kset.collection, "queries": len(kset.items),
                "mean_relevant": statistics.fmean(len(i.relevant) for i in kset.items),
                "items": [{"query": i.query, "relevant": sorted(i.relevant)} for i in kset.items],
                "methods": {m: run_method(client, kset, m, args.limit, args.candidates) for m in methods}}
            result["verdict"] = verdict(result["methods"])
            report["sets"][kset.name] = result
            print_set(kset, result, collection, args.show_misses)
            if args.out:  # after every set, so a long run that dies keeps what it did
                args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")


def parse_list(text: str, allowed: list[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown or not chosen:
        parser.error(f"unknown {what} {unknown}; choose from {','.join(allowed)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archives", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "md",
                        help="folder of tldr.tar.gz, doocs-leetcode.tar.gz, cpp-docs.tar.gz")
    parser.add_argument("--corpora", type=Path, default=None,
                        help="folder where the archives are already extracted (DIR/tldr, DIR/cpp-docs ...)")
    parser.add_argument("--home", type=Path, default=None,
                        help="work folder kept between runs (default: a temporary one, removed after)")
    parser.add_argument("--tldr-lang", default="es", help="the translated tldr pages for tldr-LANG-tasks")
    parser.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of search,vsearch,query")
    parser.add_argument("--limit", type=int, default=100, help="results asked per query (default 100)")
    parser.add_argument("--candidates", type=int, default=DAEMON_DEFAULT_CANDIDATES,
                        help=f"`query`'s depth per ranked list (default {DAEMON_DEFAULT_CANDIDATES}, the daemon's)")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                        help=f"queries per set (default {DEFAULT_QUERIES})")
    parser.add_argument("--sample-docs", type=int, default=1500,
                        help="files indexed of LeetCode and of cpp-docs, answers included (default 1500)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--show-misses", type=int, default=0, metavar="N",
                        help="print each set's first N misses (Hit@1 = 0) per method")
    parser.add_argument("--model", default=None,
                        help="embedding model for vsearch/query (`model use`; default: the daemon's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers (and per-query ranks) as JSON")
    args = parser.parse_args()
    plan = corpora(args.tldr_lang)
    all_sets = [name for corpus in plan for name in corpus.sets]
    wanted = parse_list(args.sets, all_sets, "set(s)", parser) if args.sets else all_sets
    methods = parse_list(args.methods, list(METHODS), "method(s)", parser)
    report: dict[str, Any] = {"methods": methods, "limit": args.limit, "candidates": args.candidates, "rerank": False,
                              "seed": args.seed, "queries_per_set": args.queries, "sample_docs": args.sample_docs,
                              "collections": {}, "sets": {}}
    work = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="qmdd-known-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for corpus in plan:
            if any(name in wanted for name in corpus.sets):
                root = corpus_root(corpus.archive, args.corpora, args.archives, work)
                evaluate_corpus(corpus, wanted, root, work, methods, args, report)
    finally:
        if args.home is None:
            time.sleep(1)  # the last daemon lets go of its files
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report["sets"], methods)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
