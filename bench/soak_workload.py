"""The soak's workload: the tldr corpus (`extract_pages`, `sample_queries`, `markdown_on_disk`) and `Soak`,
the state shared by the client, editor, update and monitor threads that load the daemon. Used by bench/soak.py."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import sample_queries as common_sample_queries
from bench.soak_report import METHOD_SHARES, Failure, MethodStats, Report, peak_rss_mib
from qmdctl.client import Client, call_collecting
from qmdd.paths import resolve_paths
from qmdd.protocol.errors import ErrorCode, QmddError

PAGE = re.compile(r"^tldr/pages[^/]*/[^/]+/[^/]+\.md$")
REPLY_TIMEOUT_S = 120.0
"""A client waiting this long for a frame counts an error (TIMEOUT): the daemon is stuck, not slow."""


# --- the corpus --------------------------------------------------------------------------------------


def extract_pages(archive: Path, count: int, skip: int, dest: Path, seed: int) -> list[str]:
    """`count` tldr pages (all languages), after skipping `skip`, in a fixed random order, extracted
    under `dest`; their paths relative to it."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and PAGE.match(m.name)), key=lambda m: m.name)
        random.Random(seed).shuffle(members)
        chosen = members[skip:skip + count]
        if len(chosen) < count:
            raise SystemExit(f"{archive.name} has only {len(members) - skip} pages left for {count}")
        # In archive order: a gzip stream seeks backwards only by decompressing again from its start.
        tar.extractall(dest, members=sorted(chosen, key=lambda m: m.offset), filter="data")
    return [m.name for m in chosen]


def sample_queries(root: Path, paths: list[str], n: int, seed: int) -> list[str]:
    return common_sample_queries((root / rel for rel in paths[:2000]), n, seed)


def markdown_on_disk(root: Path) -> set[str]:
    """The files a collection with the default mask selects: *.md, no hidden part (the editor's temp files)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*.md")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


# --- the load --------------------------------------------------------------------------------------


class Soak:
    """The state the threads share. Lists and sets are only appended to / added to, which the GIL makes
    safe to read from other threads; the report's counters are per-thread until joined."""

    def __init__(self, home: Path, environ: dict[str, str], report: Report, seed: int) -> None:
        self.home = home
        self.environ = environ
        self.paths = resolve_paths(environ)
        self.report = report
        self.seed = seed
        self.trees = {"small": home / "small", "big": home / "big"}
        self.stop = threading.Event()
        self.started = 0.0
        self.update_done_at: float | None = None
        self.volatile: set[tuple[str, str]] = set()
        """(collection, path) that may be missing for a moment or for good: created, deleted or renamed
        by the editor. Added before the editor touches the file."""
        self.stable: dict[str, list[str]] = {}
        self.edited: dict[str, list[str]] = {}
        self.churn: dict[str, list[str]] = {}
        self.created: list[tuple[str, str]] = []
        self.queries: list[str] = []
        self.lock = threading.Lock()

    def client(self) -> Client:
        client = Client(self.paths, environ=self.environ, reply_timeout=REPLY_TIMEOUT_S)
        client.connect(autostart=False)
        return client

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, source: str, detail: str, error: BaseException | str) -> None:
        text = f"{error.code}: {error.message}" if isinstance(error, QmddError) else (
            error if isinstance(error, str) else f"{type(error).__name__}: {error}")
        with self.lock:
            self.report.failures.append(Failure(round(self.elapsed(), 2), source, detail, text))

    def split_pools(self, name: str, paths: list[str]) -> None:
        """2% of a tree is saved and appended to (never missing), 2% deleted and renamed; the rest untouched.
        Hidden pages (tldr's `..md`, the page of `.`) stay on disk but out of the pools: no collection selects
        them, so `get` of one is rightly NOT_FOUND."""
        rng = random.Random(f"{self.seed}-{name}")
        shuffled = [p for p in paths if not Path(p).name.startswith(".")]
        rng.shuffle(shuffled)
        share = max(5, len(paths) // 50)
        self.edited[name] = shuffled[:share]
        self.churn[name] = shuffled[share:2 * share]
        self.stable[name] = shuffled[2 * share:]

    def may_be_missing(self, collection: str, path: str, sent_at: float) -> bool:
        if (collection, path) in self.volatile:
            return True
        return collection == "big" and (self.update_done_at is None or sent_at < self.update_done_at)

    # --- clients

    def run_client(self, number: int, deadline: float, results: dict[str, MethodStats], counts: list[int]) -> None:
        rng = random.Random(f"{self.seed}-client-{number}")
        methods, weights = list(METHOD_SHARES), list(METHOD_SHARES.values())
        seen: list[str] = []  # files from this client's last results: what an agent `get`s next
        try:
            client = self.client()
        except Exception as exc:
            self.fail("connect", f"client {number}", exc)
            return
        with client:
            while time.monotonic() < deadline:
                method = rng.choices(methods, weights)[0]
                collection = path = ""
                if method == "get":
                    target, collection, path = self.pick_target(rng, seen)
                    params: dict[str, Any] = {"target": target}
                else:
                    # Mostly short answers, as agents ask; now and then a long list the daemon streams.
                    limit = 1000 if rng.random() < 0.02 else rng.choice((5, 10, 20))
                    params = {"query": rng.choice(self.queries), "limit": limit}
                sent_at = time.monotonic()
                try:
                    client.connect(autostart=False)  # a dead daemon must show, not be replaced by a fresh one
                    if method == "get":
                        client.call("get", params)
                    else:
                        answer = call_collecting(client, method, params, "results")
                        seen = [r["file"] for r in answer["results"]][:5] or seen
                except QmddError as exc:
                    took = time.monotonic() - sent_at
                    # `big` is added while the clients run: before that, its paths name no collection yet.
                    missing = exc.code == ErrorCode.NOT_FOUND or (
                        exc.code == ErrorCode.COLLECTION_NOT_FOUND and collection == "big")
                    if method == "get" and missing and self.may_be_missing(collection, path, sent_at):
                        results[method].not_found += 1
                        results[method].latencies_s.append(took)
                        counts[number] += 1
                    else:
                        results[method].errors += 1
                        self.fail(method, json.dumps(params, ensure_ascii=False), exc)
                    continue
                except Exception as exc:
                    results[method].errors += 1
                    self.fail(method, json.dumps(params, ensure_ascii=False), exc)
                    continue
                results[method].latencies_s.append(time.monotonic() - sent_at)
                counts[number] += 1

    def pick_target(self, rng: random.Random, seen: list[str]) -> tuple[str, str, str]:
        """(target, collection, path): untouched files, saved files, churned ones, or a last result."""
        roll = rng.random()
        if roll < 0.15 and seen:
            uri = rng.choice(seen)
            collection, _, path = uri.removeprefix("qmd://").partition("/")
            return uri, collection, path
        collection = rng.choice(("small", "big"))
        if roll < 0.55:
            path = rng.choice(self.stable[collection])
        elif roll < 0.75:
            path = rng.choice(self.edited[collection])
        elif roll < 0.9 or not self.created:
            path = rng.choice(self.churn[collection])
        else:
            collection, path = rng.choice(self.created)
        return f"qmd://{collection}/{path}", collection, path

    # --- the editor

    def run_editor(self, deadline: float, rate: float, burst: int, burst_every: float) -> None:
        rng = random.Random(f"{self.seed}-editor")
        edits = self.report.edits
        present = {name: list(self.churn[name]) for name in self.trees}  # churn files that exist now
        bursts: list[tuple[str, Path, list[str]]] = []
        next_burst = time.monotonic() + burst_every / 2
        serial = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            serial += 1
            name = rng.choice(("small", "big"))
            root = self.trees[name]
            try:
                if burst and time.monotonic() >= next_burst:
                    next_burst += burst_every
                    self.checkout_burst(rng, serial, bursts, burst)
                    continue
                op = rng.choices(("save", "append", "create", "delete", "rename"), (35, 15, 20, 15, 15))[0]
                word = f"soakword{serial}"
                if op == "save":  # as VS Code, JetBrains and vim save: a temp file renamed over the note
                    note = root / rng.choice(self.edited[name])
                    temp = note.with_name(f".{note.name}.tmp")
                    temp.write_text(note.read_text(encoding="utf-8") + f"\nSaved with {word}.\n", encoding="utf-8")
                    os.replace(temp, note)
                elif op == "append":
                    with open(root / rng.choice(self.edited[name]), "a", encoding="utf-8") as f:
                        f.write(f"\nAppended {word}.\n")
                elif op == "create":
                    rel = f"soak/new{serial}.md"
                    self.volatile.add((name, rel))
                    (root / "soak").mkdir(exist_ok=True)
                    (root / rel).write_text(f"# New note {serial}\n\nA note with {word}.\n", encoding="utf-8")
                    self.created.append((name, rel))
                    present[name].append(rel)
                elif op in ("delete", "rename") and present[name]:
                    rel = present[name].pop(rng.randrange(len(present[name])))
                    self.volatile.add((name, rel))
                    if op == "delete":
                        (root / rel).unlink()
                    else:
                        new = f"{Path(rel).parent.as_posix()}/renamed{serial}.md"
                        self.volatile.add((name, new))
                        os.rename(root / rel, root / new)
                        self.created.append((name, new))
                        present[name].append(new)
                else:
                    continue
                edits[op] += 1
            except OSError as exc:
                self.fail("editor", f"{name} #{serial}", exc)
            time.sleep(rng.expovariate(rate) if rate > 0 else 1.0)

    def checkout_burst(self, rng: random.Random, serial: int, bursts: list[tuple[str, Path, list[str]]],
                       size: int) -> None:
        """Like `git checkout` of another branch: a folder of new files written as fast as Python can,
        or an earlier burst's folder removed at once."""
        if bursts and rng.random() < 0.4:
            name, folder, rels = bursts.pop(0)
            self.volatile.update((name, rel) for rel in rels)
            shutil.rmtree(folder)
            self.report.edits["burst deleted files"] += len(rels)
            return
        name = rng.choice(("small", "big"))
        folder = self.trees[name] / f"checkout{serial}"
        rels = [f"checkout{serial}/d{i % 8}/page{i}.md" for i in range(size)]
        self.volatile.update((name, rel) for rel in rels)
        for i, rel in enumerate(rels):
            (self.trees[name] / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.trees[name] / rel).write_text(f"# Page {i}\n\nburstword{serial} appears in page {i}.\n")
        self.created.extend((name, rel) for rel in rels)
        bursts.append((name, folder, rels))
        self.report.edits["burst files"] += size

    # --- the big update and the monitor

    def run_update(self, deadline: float, rescan_every: float) -> None:
        """The big update, then (as a cron'd `qmdctl update` would) a rescan of everything every
        `rescan_every` seconds, racing the watcher's own updates of the same files."""
        try:
            client = self.client()
        except Exception as exc:
            self.fail("update", "connect", exc)
            return
        with client:
            started = time.monotonic()
            try:
                answer = client.call("collection.add", {"path": str(self.trees["big"]), "name": "big",
                                                        "masks": None, "excludes": None, "update": True})
            except Exception as exc:
                self.fail("update", "collection.add big", exc)
                return
            self.update_done_at = time.monotonic()
            self.report.update_s = self.update_done_at - started
            self.report.update_summary = answer["update"][0]
            while rescan_every > 0 and not self.stop.wait(rescan_every) and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    client.connect(autostart=False)
                    client.call("update", {})
                except Exception as exc:
                    self.fail("update", "rescan", exc)
                else:
                    self.report.rescans_s.append(time.monotonic() - started)

    def run_monitor(self, status_stats: MethodStats) -> None:
        pid = self.report.daemon_pid
        next_status = 0.0
        try:
            client = self.client()
        except Exception as exc:
            self.fail("monitor", "connect", exc)
            return
        with client:
            while not self.stop.is_set():
                rss = peak_rss_mib(pid)
                if rss is None:
                    self.report.daemon_alive = False
                    self.fail("monitor", f"pid {pid}", "the daemon process is gone")
                    return
                self.report.peak_rss_mib = max(self.report.peak_rss_mib, rss)
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + 2.0
                    sent_at = time.monotonic()
                    try:
                        client.connect(autostart=False)
                        status = client.call("status")
                    except Exception as exc:
                        status_stats.errors += 1
                        self.fail("status", "", exc)
                    else:
                        status_stats.latencies_s.append(time.monotonic() - sent_at)
                        if status["pid"] != pid:
                            self.report.daemon_alive = False
                            self.fail("monitor", f"pid {pid}", f"another daemon (pid {status['pid']}) answers")
                        if status["state"] != "ok":
                            self.fail("monitor", "status", f"daemon {status['state']}: {status['degraded_reason']}")
                self.stop.wait(0.25)

