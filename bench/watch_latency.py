"""How fresh is the index? Time from an editor's save to the change being searchable, through the watcher.

A real markdown tree (tldr, 38k files, from ../shared/data/md) is indexed once; then `--edits` saves are
made the way editors make them (write a temp file, rename it over the note: VS Code, JetBrains, vim's
default), each adding a word found nowhere else, and `search` is polled every 2 ms until it returns the
note. Then a `git checkout`-like burst (`--burst` new files in a few directories, written as fast as Python
can) is timed from its first file to its last being searchable, with the watcher's batch count.
qmd has no watch mode (its index changes only on `qmd update`), so there is no peer to run here.

    python bench/watch_latency.py [--archive tldr] [--edits 60] [--burst 5000]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_daemon
from qmdctl.client import Client, call_collecting

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "md"


def wait_searchable(client: Client, word: str, expect: int = 1, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = call_collecting(client, "search", {"query": word, "limit": max(expect, 5)}, "results")["results"]
        if len(found) >= expect:
            return time.monotonic()
        time.sleep(0.002)
    raise SystemExit(f"{word!r} never became searchable")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default="tldr")
    parser.add_argument("--edits", type=int, default=60)
    parser.add_argument("--burst", type=int, default=5000)
    args = parser.parse_args()

    with bench_daemon("qmdd-watch-", QMDD_WATCH="1") as (client, home):
        root = home / "tree"
        root.mkdir()
        with tarfile.open(SHARED / f"{args.archive}.tar.gz") as tar:
            tar.extractall(root, filter="data")
        started = time.monotonic()
        client.call("collection.add", {"path": str(root), "name": "tree", "masks": None, "excludes": None,
                                       "update": True})
        files = client.call("status")["collections"][0]["documents"]
        print(f"indexed {files} files of {args.archive} in {time.monotonic() - started:.1f}s")
        indexed = call_collecting(client, "ls", {"target": "tree"}, "files")["files"]
        notes = [root / f["path"] for f in indexed[:: max(1, files // args.edits)][: args.edits]]

        latencies = []
        for i, note in enumerate(notes):
            word = "fresh" + "".join(chr(ord("a") + int(d)) for d in f"{i:04d}") + "word"  # one token
            text = note.read_text(encoding="utf-8") + f"\n{word}\n"
            temp = note.with_name(f".{note.name}.tmp")
            temp.write_text(text, encoding="utf-8")
            saved = time.monotonic()
            os.replace(temp, note)
            latencies.append((wait_searchable(client, word) - saved) * 1000)
            time.sleep(0.1)  # a person, not a loop: each save on its own
        print(f"save → searchable over {len(latencies)} editor saves: median {statistics.median(latencies):.0f} ms, "
              f"p95 {pct(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms")

        before = client.call("status")["actors"]["indexer"]
        burst_root = root / "checkout"
        first = time.monotonic()
        for i in range(args.burst):
            folder = burst_root / f"dir{i % 16}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"page{i}.md").write_text(f"# Page {i}\n\nburstword appears in page {i}.\n")
        written = time.monotonic()
        wait_searchable(client, "burstword", expect=args.burst, timeout=120)
        done = time.monotonic()
        after = client.call("status")["actors"]["indexer"]
        jobs = (after["scans"] + after["path_updates"]) - (before["scans"] + before["path_updates"])
        watch = client.call("status")["collections"][0]["watch"]
        print(f"burst of {args.burst} new files: written in {written - first:.2f}s, all searchable "
              f"{done - written:.2f}s after the last write ({done - first:.2f}s in all); {jobs} indexer job(s), "
              f"watcher batches so far {watch['batches']}")
        daemon_rss = _daemon_peak_rss_mib(int(client.call("ping")["pid"]))
        print(f"daemon peak RSS {daemon_rss:.0f} MiB; bench peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _daemon_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
