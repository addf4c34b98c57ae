"""`qmdctl status`, `update` and `cleanup`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from qmdctl.render import human_size, one_line

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation
    from qmdctl.render import Output


def status(inv: Invocation) -> int:
    answer = inv.client.call("status")
    inv.output.value(answer, lambda s: _status_text(inv.output, s), _status_rows)
    return 0


def _status_rows(s: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """status as a table (csv, md, xml, files): a row per collection."""
    rows = [{"name": c["name"], "uri": f"qmd://{c['name']}/", "root": c["root"], "masks": c["masks"],
             "documents": c["documents"], "chunks": c["chunks"],
             "embedded": (c.get("vectors") or {}).get("embedded"), "watch": (c.get("watch") or {}).get("state")}
            for c in s["collections"]]
    return rows, ["name", "uri", "root", "masks", "documents", "chunks", "embedded", "watch"]


def _status_text(out: Output, s: dict[str, Any]) -> None:
    state = out.style(s["state"], "green" if s["state"] == "ok" else "red")
    out.line(f"{out.style('qmdd status', 'bold')}  {state}  pid {s['pid']}, up {s['uptime_s']:.0f}s, v{s['version']}")
    if s.get("degraded_reason"):
        out.line(out.style(f"Degraded: {s['degraded_reason']}", "red"))
    out.line(f"Socket:  {s['socket']}\nData:    {s['data_dir']}  (log: {s['log_file']})")
    sizes = s["index_bytes"]
    out.line(f"Index:   {human_size(sum(sizes.values()))}  (sqlite {human_size(sizes['database'] + sizes['wal'])}, "
             f"bm25 {human_size(sizes['bm25_snapshot'])})")
    out.line(f"\n{out.style('Collections', 'bold')} ({len(s['collections'])})")
    for c in s["collections"]:
        out.line(f"  {out.style(c['name'], 'cyan')} (qmd://{c['name']}/)  {c['documents']} files, "
                 f"{c['chunks']} chunks")
        out.line(f"    {c['root']}  masks: {', '.join(c['masks'])}")
        if c.get("vectors"):
            out.line(f"    {_vectors_text(c['name'], c['vectors'])}")
        if c.get("watch"):
            out.line(f"    {_watch_text(out, c['watch'], s)}")
    out.line(f"\n{out.style('Actors', 'bold')}")
    for name, a in s["actors"].items():
        extra = ", ".join(f"{k}={v}" for k, v in a.items() if k not in ("status", "restarts", "queue_depth",
                                                                          "last_crash", "last_error"))
        out.line(f"  {name:<8} {a['status']:<10} restarts={a['restarts']} queue={a['queue_depth']}  {extra}")
        if a.get("last_crash"):
            out.line(out.style(f"           last crash: {a['last_crash']}", "red"))
    rpc = s["rpc"]
    out.line(f"\nRPC: {rpc['requests']} requests, {rpc['open_connections']} open connections, "
             f"errors {rpc['errors'] or 0}")
    _model_text(out, s.get("model") or {})
    if s.get("auto_embed"):
        run = s["auto_embed"].get("manual")
        if run:
            started = _ago(max(0.0, s["time"] - run["since"]))
            out.line(f"  embed run{' -f' if run['force'] else ''} on {', '.join(run['collections'])}: "
                     f"{run['done']:,} of {run['total']:,} chunks, started {started} ago")
        out.line(f"  background embedder: {_auto_embed_text(s['auto_embed'], s['time'])}")
    if s["problems"]:
        out.line(f"\n{out.style('Skipped files', 'yellow')} ({len(s['problems'])} shown)")
        for p in s["problems"][:20]:
            where = one_line(f"qmd://{p['collection']}/{p['path']}")
            out.line(f"  {where}: {p['code']}: {one_line(p['message'])}")


def _watch_text(out: Output, w: dict[str, Any], s: dict[str, Any]) -> str:
    colour = {"watching": "green", "missing": "red", "refused": "red", "polling": "yellow"}.get(w["state"], "dim")
    text = f"watch: {out.style(w['state'], colour)}"
    change = w.get("last_change")
    if change:
        # Against the daemon's clock (status carries it): the two processes may disagree a little.
        text += f", last change {_ago(max(0.0, s['time'] - change['at']))} ago: {change['path']} ({change['kind']})"
    elif w["state"] not in ("off", "unknown"):
        text += ", no change seen yet"
    if w.get("last_error"):
        text += out.style(f"; last error: {w['last_error']}", "red")
    return text


def _vectors_text(name: str, v: dict[str, Any]) -> str:
    text = f"vectors: {v['embedded']}/{v['chunks']} chunks embedded"
    if v["auto_embed"]:
        return text + ", kept embedded"
    return text + (f" (`qmdctl embed -c {name}` embeds it and keeps it embedded)" if v["chunks"] else "")


def _auto_embed_text(a: dict[str, Any], now: float) -> str:
    if a["state"] in ("embedding", "paused"):
        text = (f"{'embedding' if a['state'] == 'embedding' else 'paused on'} collection {a['collection']}, "
                f"{a['done']} of {a['total']} chunks")
        if a["state"] == "paused":
            text += " (a manual `qmdctl embed` goes first)"
    elif a["state"] == "off":
        text = "off (auto_embed or the watcher is turned off)"
    else:
        text = "idle"
    last = a.get("last_run")
    if last:
        text += (f"; last: {last['collection']}, {last['embedded']} chunk(s) in {last['seconds']:.1f}s, "
                 f"{_ago(max(0.0, now - last['finished_at']))} ago")
    if a.get("last_error"):
        text += f"; last error: {a['last_error']}"
    return text


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def progress_reporter(out: Output) -> tuple[Callable[[str, Any], None], Callable[[], None]]:
    """A callback for streamed progress items, and a function to close the display."""
    if out.fmt == "ndjson":
        return (lambda kind, payload: out.record(kind, payload)), (lambda: None)
    if out.fmt != "text" or not sys.stderr.isatty():
        return (lambda kind, payload: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # On stderr, the terminal checked above: rich's default console is stdout, which may be redirected.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    bar.start()
    tasks: dict[str, Any] = {}

    def on_item(kind: str, payload: Any) -> None:
        if kind != "progress":
            return
        name = str(payload.get("collection") or payload.get("phase"))
        if name not in tasks:
            label = "embedding" if payload.get("phase") == "embed" else f"indexing {name}"
            tasks[name] = bar.add_task(label, total=payload.get("total") or None)
        bar.update(tasks[name], completed=payload.get("done", 0), total=payload.get("total") or None)

    return on_item, bar.stop


def print_summaries(out: Output, summaries: list[dict[str, Any]]) -> None:
    def text(rows: list[dict[str, Any]]) -> None:
        for s in rows:
            if "error" in s:
                out.line(out.style(f"{s['collection']}: {s['error']['code']}: {s['error']['message']}", "red"))
                continue
            if "pull" in s:
                out.line(f"{out.style(s['collection'], 'cyan')}: git pull {s['pull']['status']}"
                         + (f": {s['pull']['message']}" if s["pull"]["message"] else ""))
            # qmd's line, word for word (scripts grep it), then the files skipped; the parts add up to `files`.
            out.line(f"{out.style(s['collection'], 'cyan')}: {s['files']} files in {s['seconds']:.2f}s")
            out.line(f"Indexed: {s['new']} new, {s['updated']} updated, {s['unchanged']} unchanged, "
                     f"{s['removed']} removed" + (f", {s['skipped']} skipped" if s["skipped"] else ""))
            for p in s["problems"][:10]:  # what is not a file (a folder, a symlink to one) is not counted above
                what = "skipped" if p.get("file", True) else "left out"
                out.line(out.style(f"  {what} {one_line(p['path'])}: {p['code']}: {one_line(p['message'])}", "yellow"))
            if s["problems_total"] > 10:
                out.line(out.style(f"  … and {s['problems_total'] - 10} more (qmdctl status)", "yellow"))

    if out.fmt == "ndjson":
        for s in summaries:
            out.record("result", s)
    elif out.fmt in ("csv", "md", "xml", "files"):
        out.table(summaries, ["collection", "files", "new", "updated", "unchanged", "removed", "skipped", "seconds"])
    else:
        out.value(summaries, text)


def update(inv: Invocation) -> int:
    params = {"collections": inv.args["collection"]}
    pulls = _pull(inv, params) if inv.args.get("pull") else {}
    on_item, close = progress_reporter(inv.output)
    try:
        summaries = inv.client.call("update", params, on_item)
    finally:
        close()
    for s in summaries:
        if s["collection"] in pulls:
            s["pull"] = pulls[s["collection"]]
    print_summaries(inv.output, summaries)
    status = failed_exit_code(summaries)
    if status == 0 and inv.output.fmt == "text":
        inv.output.line(inv.output.style("✓ All collections updated.", "green"))
    return status


def _pull(inv: Invocation, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`update --pull`: git pull in each selected collection's work tree first; a failed pull is a
    warning, and the collection is rescanned all the same (as it is)."""
    if inv.dry_run:
        from qmdctl.agent import DryRun

        raise DryRun({"method": "update", "params": params,
                      "before": "run `git pull --ff-only` in each selected collection's git work tree"})
    from qmdctl.gitpull import pull_collections

    reports = pull_collections(inv.client.call("collection.list"), params["collections"])
    for r in reports:
        if r["status"] == "failed":
            inv.output.warn(f"warning: {r['collection']}: git pull failed, rescanning as it is: {r['message']}",
                            {"message": "git pull failed", **r})
    return {r["collection"]: {k: v for k, v in r.items() if k != "collection"} for r in reports}


def failed_exit_code(summaries: list[dict[str, Any]]) -> int:
    """The exit code of the first collection that could not be scanned (0 when all were)."""
    from qmdd.protocol.errors import QmddError

    for s in summaries:
        if "error" in s:
            return QmddError.from_wire(s["error"]).code.spec.exit_code
    return 0


def metrics(inv: Invocation) -> int:
    answer = inv.client.call("metrics")
    inv.output.value(answer, lambda a: inv.output.line(a["text"].rstrip("\n")))
    return 0


def cleanup(inv: Invocation) -> int:
    answer = inv.client.call("cleanup")
    inv.output.value(answer, lambda a: inv.output.line(
        f"database {human_size(a['database_bytes_before'])} → {human_size(a['database_bytes_after'])}; "
        f"bm25 repaired: +{a['bm25_repaired']['added']} -{a['bm25_repaired']['removed']} chunks; "
        f"{a['embeddings_purged']} stale vector(s) purged"))
    return 0


def _model_text(out: Output, m: dict[str, Any]) -> None:
    if not m:
        return
    if "error" in m:
        out.line(f"\n{out.style('Models', 'bold')}  unavailable: {m['error']['message']}")
        return
    loaded = ", ".join(f"{role}={v['name']} ({v['load_s']}s)" for role, v in m["loaded"].items()) or "none yet"
    out.line(f"\n{out.style('Models', 'bold')}  {m['device']}/{m['compute_type']}, {m['workers']} worker(s) x "
             f"{m['threads']} thread(s); loaded: {loaded}")
    out.line(f"  embedding: {m['embedding']}   reranker: {m['reranker'] or 'none'}")
    if "chunks" in m:
        out.line(f"  vectors: {m['embedded']}/{m['chunks']} chunks embedded"
                 + ("" if m["embedded"] >= m["chunks"] else "  (run `qmdctl embed`)"))
    b = m["batching"]
    out.line(f"  batches: {b['batches']['query']} query, {b['batches']['bulk']} bulk; mean {b['mean_batch_texts']} "
             f"texts; padding +{b['padding_overhead'] * 100:.0f}%; inference {b['inference_s']}s")


def embed(inv: Invocation) -> int:
    args = inv.args
    # qmd's flags, in the daemon's units: --max-batch-mb in MB, --timeout in minutes.
    params = {"collections": args["collection"], "force": bool(args.get("force")),
              "max_chunks_per_page": args.get("max_docs_per_batch"),
              "max_page_bytes": args["max_batch_mb"] * 1024 * 1024 if args.get("max_batch_mb") else None,
              "timeout_s": args["timeout"] * 60 if args.get("timeout") else None}
    on_item, close = progress_reporter(inv.output)
    try:
        answer = inv.client.call("embed", params, on_item)
    finally:
        close()
    inv.output.value(answer, lambda a: inv.output.line(_embed_text(a)))
    return 0


def _embed_text(a: dict[str, Any]) -> str:
    rate = f" ({a['chunks_per_s']} chunks/s)" if a["chunks_per_s"] else ""
    if a.get("force"):
        text = f"{a['model']}: re-embedded {a['embedded']} chunk(s) in {a['seconds']:.1f}s{rate}; {a['chunks']} in all"
    else:
        text = (f"{a['model']}: embedded {a['embedded']} chunk(s) in {a['seconds']:.1f}s{rate}; "
                f"{a['already_embedded']} already had vectors; {a['chunks']} in all")
    if a.get("removed_meanwhile"):
        text += f"; {a['removed_meanwhile']} left the index while it ran (files removed or changed)"
    if a.get("complete") is False:
        text += f"\nstopped before the end (timeout); `qmdctl embed{' -f' if a.get('force') else ''}` goes on"
    return text
