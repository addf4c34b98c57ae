"""Soak: many clients query a daemon for a while as a big update and a storm of file edits run under them.

A throw-away daemon (watcher on) gets two collections of real markdown (tldr pages, from ../shared/data/md):
`small` (`--embed-files` pages, indexed and embedded first, so `query` searches vectors too) and `big`
(`--files` pages, added while the load runs: its full index is the "big update"). Then, for `--duration`
seconds and all at once:

- `--clients` client threads, each on its own connection, send requests back to back: `search` 50%,
  `query` 30%, `get` 20%. Queries are 1-4 words from page titles and descriptions; `get` asks for known
  paths, some of them files the editor is deleting or renaming, and for paths from the client's last
  results;
- the big update (`collection.add` of `big`, which indexes it in full), then an `update` of everything
  every `--rescan-every` seconds, as a cron'd `qmdctl update` would run beside the watcher;
- an editor thread changes both trees the way people and tools do: saves (temp file renamed over the
  note), appends, new notes, deletes, renames, at `--edit-rate` operations/s, plus every `--burst-every`
  seconds a checkout-like burst that writes `--burst` new files into a fresh folder or deletes an
  earlier burst's folder. The watcher indexes all of it while the clients query;
- a monitor polls `status` (its latency is reported too) and the daemon's /proc entry.

An error is any failed request, save one: NOT_FOUND from `get` of a path that may legitimately be missing
(the editor created, deleted or renamed it, or it is in `big` and the big update had not finished when
the request was sent). Those are counted apart; a NOT_FOUND for any other path is an error.

Reported: per method count, errors, legitimate NOT_FOUNDs, p50/p95/p99/max latency (RPC round trip as a
client sees it, so it includes queueing behind the other clients on the same cores) and throughput; the
big update's duration; the edits made; watcher and actor statistics (restarts are crashes); the daemon's
peak RSS (VmHWM) and whether the same daemon process stayed up throughout. Afterwards the watcher is let
settle, an `update` runs to completion (what it still had to change is what the watcher missed), the
indexed paths are compared with the files on disk, the daemon is shut down (its log must show no error,
traceback or fatal exit) and its index goes through `python -m qmdd.consistency` (strict). Exit status 1
when anything failed.

    python bench/soak.py [--files 10000] [--embed-files 300] [--clients 32] [--duration 60]
                         [--edit-rate 20] [--burst 500] [--burst-every 15] [--rescan-every 10] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, not an installed qmdd

from bench.soak_report import METHOD_SHARES, MethodStats, Report, peak_rss_mib
from bench.soak_workload import Soak, extract_pages, markdown_on_disk, sample_queries
from qmdctl.client import Client, call_collecting

MD = Path(__file__).resolve().parents[2] / "shared" / "data" / "md"
CACHE = Path(__file__).resolve().parent / ".cache"


def wait_settled(client: Client, timeout: float) -> float:
    """Seconds until the watcher has nothing pending and the indexer nothing queued, twice in a row."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout:
        status = client.call("status")
        busy = sum(int(c["watch"].get("pending") or 0) for c in status["collections"])
        busy += int(status["actors"]["indexer"]["queue_depth"])
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 2:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"the watcher still had changes pending after {timeout:.0f}s")


def stop_daemon(client: Client, pid: int, timeout: float = 60.0) -> None:
    try:
        client.call("shutdown")
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while peak_rss_mib(pid) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")
        time.sleep(0.05)


def run_soak(*, files: int = 10_000, embed_files: int = 300, clients: int = 32, duration: float = 60.0,
             edit_rate: float = 20.0, burst: int = 500, burst_every: float = 15.0, rescan_every: float = 10.0,
             seed: int = 1,
             archive: str = "tldr", env: Mapping[str, str] | None = None, keep: bool = False,
             log: Callable[[str], None] = lambda _: None) -> Report:
    """Run the whole soak against a fresh daemon in a temp QMDD_HOME (removed after unless `keep`).
    `env` is the daemon's environment (default: ours); QMDD_HOME and QMDD_WATCH are set here."""
    home = Path(tempfile.mkdtemp(prefix="qmdd-soak-", dir="/tmp"))
    base = dict(os.environ if env is None else env)
    base.setdefault("QMDD_CACHE_DIR", str(CACHE / "soak-models"))  # converted once, not per run
    base.setdefault("QMDD_LOG_LEVEL", "warning")
    environ = {**base, "QMDD_HOME": str(home / "home"), "QMDD_WATCH": "1"}
    report = Report(files=files, embed_files=embed_files, clients=clients, duration_s=duration)
    soak = Soak(home, environ, report, seed)
    control = Client(soak.paths, environ=environ, reply_timeout=0)  # the setup's embed may take minutes
    try:
        source = MD / f"{archive}.tar.gz"
        big_paths = extract_pages(source, files, 0, soak.trees["big"], seed)
        small_paths = extract_pages(source, max(embed_files, 50), files, soak.trees["small"], seed)
        # The archive's top folder is the tree's only child: strip it, so collection paths are pages*/...
        for tree, paths in ((soak.trees["big"], big_paths), (soak.trees["small"], small_paths)):
            for child in (tree / "tldr").iterdir():
                child.rename(tree / child.name)
            (tree / "tldr").rmdir()
            paths[:] = [p.removeprefix("tldr/") for p in paths]
        soak.split_pools("big", big_paths)
        soak.split_pools("small", small_paths)
        soak.queries = sample_queries(soak.trees["big"], big_paths, 2000, seed)
        log(f"extracted {len(big_paths)} + {len(small_paths)} pages under {home}")

        control.connect()
        report.daemon_pid = int(control.server["pid"])
        control.call("collection.add", {"path": str(soak.trees["small"]), "name": "small", "masks": None,
                                        "excludes": None, "update": True})
        if embed_files:
            log(f"embedding `small` ({len(small_paths)} files)...")
            report.embed = control.call("embed", {"collections": ["small"]})
            log(f"  {report.embed['embedded']} chunks in {report.embed['seconds']:.1f}s")

        log(f"load: {clients} clients for {duration:.0f}s, big update of {files} files, editor at "
            f"{edit_rate:g} op/s, bursts of {burst} every {burst_every:g}s")
        soak.started = time.monotonic()
        deadline = soak.started + duration
        per_client = [{m: MethodStats() for m in METHOD_SHARES} for _ in range(clients)]
        counts = [0] * clients
        threads = [threading.Thread(target=soak.run_client, args=(i, deadline, per_client[i], counts),
                                    name=f"client-{i}", daemon=True) for i in range(clients)]
        updater = threading.Thread(target=soak.run_update, args=(deadline, rescan_every), name="update",
                                   daemon=True)
        editor = threading.Thread(target=soak.run_editor, args=(deadline, edit_rate, burst, burst_every),
                                  name="editor", daemon=True)
        monitor = threading.Thread(target=soak.run_monitor, args=(report.methods["status"],), name="monitor",
                                   daemon=True)
        for thread in (monitor, updater, editor, *threads):
            thread.start()
        for thread in (*threads, editor):
            thread.join()
        report.duration_s = time.monotonic() - soak.started
        if report.update_s is None and updater.is_alive():
            log("the big update outlasted the load; waiting for it")
        soak.stop.set()  # ends the periodic rescans and the monitor
        updater.join()
        monitor.join()
        report.requests_per_client = counts
        for results in per_client:
            for method, stats in results.items():
                merged = report.methods[method]
                merged.latencies_s.extend(stats.latencies_s)
                merged.not_found += stats.not_found
                merged.errors += stats.errors
        report.failures.sort(key=lambda f: f.at_s)

        check_final_state(soak, control, report, log)
        stop_daemon(control, report.daemon_pid)
        scan_daemon_log(soak, report)
        run_consistency(environ, report, log)
        return report
    finally:
        control.close()
        pid = report.daemon_pid
        if pid and peak_rss_mib(pid) is not None:  # an early failure: do not leave the daemon behind
            with Client(soak.paths, environ=environ) as last:
                stop_daemon(last, pid)
        if keep:
            log(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def check_final_state(soak: Soak, control: Client, report: Report, log: Callable[[str], None]) -> None:
    """Let the watcher settle, run `update` to completion, and compare the index with the trees."""
    try:
        control.connect(autostart=False)
        report.settle_s = wait_settled(control, 120.0)
        status = control.call("status")
        report.watch = {c["name"]: c["watch"] for c in status["collections"]}
        report.actors = status["actors"]
        report.peak_rss_mib = max(report.peak_rss_mib, peak_rss_mib(report.daemon_pid) or 0.0)
        log(f"watcher settled in {report.settle_s:.1f}s; final update...")
        report.final_update = control.call("update", {})
        for name, root in soak.trees.items():
            disk = markdown_on_disk(root)
            indexed = {f["path"] for f in call_collecting(control, "ls", {"target": name}, "files")["files"]}
            report.on_disk[name] = len(disk)
            report.indexed[name] = len(indexed)
            missing, extra = sorted(disk - indexed), sorted(indexed - disk)
            if missing or extra:
                report.mismatches[name] = {k: v[:5] for k, v in (("missing", missing), ("extra", extra)) if v}
    except Exception as exc:
        soak.fail("final", "settle, update and compare", exc)


def scan_daemon_log(soak: Soak, report: Report) -> None:
    """The daemon's own account: errors, tracebacks, and the line `qmdd: CODE: message` its main writes
    when it exits with an error (which a graceful shutdown must not)."""
    try:
        text = soak.paths.log_file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        soak.fail("daemon log", str(soak.paths.log_file), exc)
        return
    for line in text.splitlines():
        if " WARNING " in line:
            report.log_warnings.append(line)
        elif " ERROR " in line or " CRITICAL " in line or line.startswith(("qmdd: ", "Traceback")):
            soak.fail("daemon log", "", line)


def run_consistency(environ: dict[str, str], report: Report, log: Callable[[str], None]) -> None:
    """The offline check of the stopped daemon's index, as an operator runs it."""
    log("python -m qmdd.consistency --mode strict ...")
    proc = subprocess.run([sys.executable, "-m", "qmdd.consistency", "--mode", "strict", "--json"], env=environ,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    report.consistency_rc = proc.returncode
    try:
        report.consistency = json.loads(proc.stdout)
    except ValueError:
        report.consistency = {"output": (proc.stdout + proc.stderr)[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="pages in the big update (default 10000)")
    parser.add_argument("--embed-files", type=int, default=300,
                        help="pages of `small`, embedded before the load (0: no vectors; `small` still has 50)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--edit-rate", type=float, default=20.0, help="editor operations per second")
    parser.add_argument("--burst", type=int, default=500, help="files per checkout-like burst (0: none)")
    parser.add_argument("--burst-every", type=float, default=15.0, help="seconds between bursts")
    parser.add_argument("--rescan-every", type=float, default=10.0,
                        help="seconds between `update`s of everything after the big one (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp home (trees, index, daemon log)")
    args = parser.parse_args()
    report = run_soak(files=args.files, embed_files=args.embed_files, clients=args.clients, duration=args.duration,
                      edit_rate=args.edit_rate, burst=args.burst, burst_every=args.burst_every,
                      rescan_every=args.rescan_every, seed=args.seed,
                      keep=args.keep, log=lambda line: print(line, flush=True))
    print(report.render())
    if report.consistency and report.consistency_rc:
        print(json.dumps(report.consistency, indent=1)[:4000])
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
