"""What plugins cost, on one real daemon over the tldr English pages (result cache off).

Prints:
- `search` p50/p95 at limits 100 and 1,000, without a plugin and with the path-boost scorer (which then
  re-scores 100 or 1,000 hits), interleaved in one run; and with the drop-drafts filter at limit 25 (which
  widens the engine's list to 100: its cost is mostly the wider list's snippets).
- the plugin's fuel and time per call (from `plugin info`);
- indexing the pages without a transform and with strip-comments attached (a fresh daemon each, same
  files), and the transform's fuel and time per document (documents go to it in groups).

    python bench/plugin_speed.py [--queries 300]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

from common import bench_daemon, sample_queries
from speed import CACHE, extract, tldr_english

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def install(client, name: str) -> None:  # type: ignore[no-untyped-def]
    wat = PLUGINS / f"{name}.wat"
    client.call("plugin.install", {"module": wat.read_bytes(), "source": wat.name, "default_name": name,
                                   "manifest": wat.with_suffix(".toml").read_text()})


def latencies(client, queries: list[str], limit: int, plugins: list[str] | None) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for q in queries:
        t0 = time.perf_counter()
        client.call("search", {"query": q, "limit": limit, "plugins": plugins})
        out.append(time.perf_counter() - t0)
    return out


def ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def index_seconds(tldr: Path, transform: bool) -> tuple[float, dict[str, float]]:
    """Seconds from `collection add` to searchable, in a fresh daemon (with strip-comments attached first
    when `transform`: `plugin attach` indexes the collection through it)."""
    with bench_daemon("qmdd-plugin-index-", QMDD_CACHE_ENTRIES="0", QMDD_WATCH="0") as (client, _):
        client.call("ping")
        if transform:
            install(client, "strip-comments")
        t0 = time.perf_counter()
        client.call("collection.add", {"path": str(tldr), "name": "tldr", "update": not transform})
        if transform:
            client.call("plugin.attach", {"name": "strip-comments", "collection": "tldr"})
        seconds = time.perf_counter() - t0
        if not transform:
            return seconds, {}
        plugin = client.call("plugin.info", {"name": "strip-comments"})
        documents = client.call("collection.list")[0]["documents"]
        return seconds, {"calls": plugin["calls"], "fuel": plugin["fuel_used"] / documents,
                         "us": plugin["seconds"] / documents * 1e6, "failures": plugin["failures"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    tldr = extract("tldr.tar.gz", tldr_english, CACHE / "tldr-en")
    pages = sorted(tldr.rglob("*.md"))
    queries = list(dict.fromkeys(sample_queries(pages, args.queries * 3, 11)))[:args.queries]
    print(f"tldr English pages: {len(pages)}; {len(queries)} queries; result cache off")

    with bench_daemon("qmdd-plugin-bench-", QMDD_CACHE_ENTRIES="0", QMDD_WATCH="0") as (client, _):
        client.call("collection.add", {"path": str(tldr), "name": "tldr"})
        install(client, "path-boost")
        latencies(client, queries[:50], 25, ["path-boost"])  # warm both paths
        install(client, "drop-drafts")
        rows = []
        cases = (("scorer over   100", 100, "path-boost"), ("scorer over 1,000", 1000, "path-boost"),
                 ("filter, limit 25", 25, "drop-drafts"))
        for label, limit, plugin in cases:
            runs: dict[str, list[float]] = {"none": [], "plugin": []}
            for _ in range(3):  # interleaved, so drift hits both alike
                runs["none"] += latencies(client, queries, limit, None)
                runs["plugin"] += latencies(client, queries, limit, [plugin])
            rows.append((label, ms(runs["none"]), ms(runs["plugin"])))
        for label, base, with_plugin in rows:
            print(f"{label}: without p50 {base[0]:.2f} / p95 {base[1]:.2f} ms; with p50 {with_plugin[0]:.2f} / "
                  f"p95 {with_plugin[1]:.2f} ms  (+{with_plugin[0] - base[0]:.2f} ms p50)")
        info = client.call("plugin.info", {"name": "path-boost"})
        print(f"path-boost: {info['calls']} calls, {info['fuel_used'] / info['calls']:,.0f} fuel and "
              f"{info['seconds'] / info['calls'] * 1e6:,.0f} us per call on average, {info['failures']} failures")

    runs = [index_seconds(tldr, transform) for transform in (False, True, False, True)]
    plain = statistics.median([runs[0][0], runs[2][0]])
    transformed = statistics.median([runs[1][0], runs[3][0]])
    per_doc = runs[3][1]
    print(f"indexing {len(pages)} pages (mean of 2 runs each, interleaved): {plain:.2f} s without a transform, "
          f"{transformed:.2f} s with strip-comments (+{(transformed / plain - 1) * 100:.1f} %); "
          f"per document {per_doc['fuel']:,.0f} fuel, "
          f"{per_doc['us']:,.0f} us ({per_doc['calls']:.0f} calls, {per_doc['failures']:.0f} failures)")
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
