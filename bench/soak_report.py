"""The soak's report: per-method latency stats, failures, the `Report` of a whole run and its text
rendering, and the small measures it needs (`pct`, the daemon's `peak_rss_mib`). Used by bench/soak.py."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHOD_SHARES = {"search": 0.5, "query": 0.3, "get": 0.2}
SHOWN_FAILURES = 8


@dataclass
class MethodStats:
    latencies_s: list[float] = field(default_factory=list)
    not_found: int = 0
    """`get` answered NOT_FOUND for a path the editor or the unfinished big update may have left missing."""
    errors: int = 0


@dataclass
class Failure:
    at_s: float
    """Seconds since the load started."""
    source: str
    """The method, or `editor`, `update`, `monitor`, `final`."""
    detail: str
    error: str

    def __str__(self) -> str:
        return f"{self.at_s:7.2f}s {self.source} {self.detail}: {self.error}"


@dataclass
class Report:
    files: int
    embed_files: int
    clients: int
    duration_s: float
    methods: dict[str, MethodStats] = field(default_factory=lambda: {m: MethodStats() for m in (*METHOD_SHARES,
                                                                                                  "status")})
    failures: list[Failure] = field(default_factory=list)
    requests_per_client: list[int] = field(default_factory=list)
    embed: dict[str, Any] | None = None
    update_s: float | None = None
    update_summary: dict[str, Any] | None = None
    rescans_s: list[float] = field(default_factory=list)
    """Durations of the periodic `update` of everything after the big one."""
    edits: Counter[str] = field(default_factory=Counter)
    daemon_pid: int = 0
    daemon_alive: bool = True
    """The daemon that answered the first request kept running, and no other took its place."""
    peak_rss_mib: float = 0.0
    watch: dict[str, dict[str, Any]] = field(default_factory=dict)
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)
    settle_s: float | None = None
    final_update: list[dict[str, Any]] = field(default_factory=list)
    on_disk: dict[str, int] = field(default_factory=dict)
    indexed: dict[str, int] = field(default_factory=dict)
    mismatches: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per collection, up to a few paths `missing` from the index and indexed but `extra` (not on disk)."""
    consistency_rc: int | None = None
    consistency: dict[str, Any] | None = None
    log_warnings: list[str] = field(default_factory=list)
    """WARNING lines of the daemon's log (reported; errors, tracebacks and a fatal exit are failures)."""

    @property
    def errors(self) -> int:
        return len(self.failures)

    @property
    def actor_restarts(self) -> int:
        return sum(int(a.get("restarts") or 0) for a in self.actors.values())

    @property
    def watcher_missed(self) -> int:
        """Files the final `update` still had to change: the watcher had not followed them."""
        return sum(int(s["indexed"]) + int(s["removed"]) for s in self.final_update)

    @property
    def consistent(self) -> bool:
        return not self.mismatches and self.on_disk == self.indexed and self.consistency_rc == 0

    @property
    def ok(self) -> bool:
        return (self.errors == 0 and self.daemon_alive and self.actor_restarts == 0 and self.consistent
                and self.update_s is not None and all(n > 0 for n in self.requests_per_client))

    def render(self) -> str:
        wall = self.duration_s
        lines = [f"soak: {self.clients} clients x {wall:.0f}s; big update of {self.files} files; "
                 f"{self.embed_files} embedded files in `small`",
                 f"  {'method':<8}{'count':>8}{'errors':>8}{'404 ok':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
                 f"{'max ms':>9}{'req/s':>8}"]
        for name, stats in self.methods.items():
            values = stats.latencies_s
            if values:
                lines.append(f"  {name:<8}{len(values):>8}{stats.errors:>8}{stats.not_found:>8}"
                             f"{pct(values, 0.50) * 1000:>9.1f}{pct(values, 0.95) * 1000:>9.1f}"
                             f"{pct(values, 0.99) * 1000:>9.1f}{max(values) * 1000:>9.1f}{len(values) / wall:>8.1f}")
            else:
                lines.append(f"  {name:<8}{0:>8}{stats.errors:>8}{stats.not_found:>8}")
        total = sum(len(s.latencies_s) for n, s in self.methods.items() if n != "status")
        per_client = self.requests_per_client or [0]
        lines.append(f"  all clients: {total} requests, {total / wall:.1f} req/s; per client min "
                     f"{min(per_client)} / median {statistics.median(per_client):.0f} / max {max(per_client)}")
        if self.embed:
            lines.append(f"embed of `small` before the load: {self.embed['embedded']} chunks in "
                         f"{self.embed['seconds']:.1f}s")
        if self.update_s is None:
            lines.append("big update: DID NOT COMPLETE")
        else:
            s = self.update_summary or {}
            lines.append(f"big update: {s.get('files')} files, {s.get('indexed')} indexed, {s.get('chunks_added')} "
                         f"chunks in {self.update_s:.1f}s (indexer's own time {s.get('seconds')}s), under load")
        if self.rescans_s:
            lines.append(f"periodic rescans of everything: {len(self.rescans_s)}, median "
                         f"{statistics.median(self.rescans_s):.2f}s, max {max(self.rescans_s):.2f}s")
        lines.append("edits: " + ", ".join(f"{k} {v}" for k, v in sorted(self.edits.items())))
        for name, w in self.watch.items():
            lines.append(f"watch {name}: state {w.get('state')}, events {w.get('events')}, batches "
                         f"{w.get('batches')}, rescans {w.get('rescans')}, pending {w.get('pending')}, "
                         f"last error {w.get('last_error')}")
        for name, a in self.actors.items():
            lines.append(f"actor {name}: {a.get('status')}, restarts {a.get('restarts')}, queue "
                         f"{a.get('queue_depth')}, last crash {a.get('last_crash')}")
        lines.append(f"daemon pid {self.daemon_pid}: {'alive throughout' if self.daemon_alive else 'DIED'}; "
                     f"peak RSS {self.peak_rss_mib:.0f} MiB")
        if self.settle_s is not None:
            lines.append(f"after the load: watcher settled in {self.settle_s:.1f}s; the final update changed "
                         f"{self.watcher_missed} file(s) the watcher had not followed")
        for name in self.on_disk:
            mark = "" if self.on_disk[name] == self.indexed.get(name) else "  MISMATCH"
            lines.append(f"final {name}: {self.on_disk[name]} files on disk, {self.indexed.get(name)} indexed{mark}")
            for kind, paths in self.mismatches.get(name, {}).items():
                lines.append(f"    {kind}: {', '.join(paths)}")
        if self.consistency is not None or self.consistency_rc is not None:
            c = self.consistency or {}
            found = [f"{f['code']} ({f.get('count')})" for f in c.get("problems", [])]
            notices = [f"{f['code']} ({f.get('count')})" for f in c.get("notices", [])]
            lines.append(f"qmdd.consistency strict: exit {self.consistency_rc}; problems: {', '.join(found) or 'none'}"
                         f"; notices: {', '.join(notices) or 'none'}")
            counts = c.get("counts", {})
            if counts.get("embedded_chunks"):  # the watcher's new chunks are embedded in the background
                lines.append(f"  vectors at shutdown: {counts['embedded_chunks']} of {counts.get('chunks')} chunks")
        lines.append(f"daemon log: {len(self.log_warnings)} warning(s)")
        lines.extend(f"  {line[:300]}" for line in self.log_warnings[:SHOWN_FAILURES])
        lines.append(f"errors: {self.errors}")
        lines.extend(f"  {f}" for f in self.failures[:SHOWN_FAILURES])
        if self.errors > SHOWN_FAILURES:
            lines.append(f"  ... and {self.errors - SHOWN_FAILURES} more; by source: "
                         + ", ".join(f"{k} {v}" for k, v in Counter(f.source for f in self.failures).items()))
        lines.append("RESULT: " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of `pid`, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None

