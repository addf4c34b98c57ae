"""`qmdctl get`, `multi-get` and `ls`."""

from __future__ import annotations

import os
import time

from qmdctl.client import call_collecting
from qmdctl.render import number_lines

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation


def _numbered(inv: Invocation) -> bool:
    return not inv.args["no_line_numbers"]


def get(inv: Invocation) -> int:
    args = inv.args
    doc = inv.client.call("get", {"target": args["target"], "from_line": args["from_line"],
                                  "max_lines": args["lines"], "cwd": os.getcwd()})
    out = inv.output
    if out.fmt in ("json", "ndjson"):
        out.value(doc, lambda _: None)
    elif out.fmt == "files":
        out.line(f"{doc['docid']} {doc['file']}")
    elif out.fmt == "csv":
        out.csv(["docid", "file", "title", "context", "from_line", "body"],
                [[doc["docid"], doc["file"], doc["title"], doc["context"], doc["from_line"], doc["body"]]])
    elif out.fmt == "md":
        out.line(f"## {doc['file']}\n\n**docid:** `{doc['docid']}`  \n**Title:** {doc['title']}")
        if doc["context"]:
            out.line(f"**Context:** {doc['context']}")
        out.line(f"\n````markdown\n{doc['body']}\n````")
    else:
        out.line(f"{out.style(doc['file'], 'cyan')}  {out.style(doc['docid'], 'dim')}")
        if doc["context"]:
            out.line(f"Folder Context: {doc['context']}")
        out.line("---\n")
        body = number_lines(doc["body"], doc["from_line"]) if _numbered(inv) and doc["body"] else doc["body"]
        out.line(body)
        if args["lines"] is not None and doc["lines_after"]:
            out.line(out.style(f"[... {doc['lines_after']} more lines]", "dim"))
    return 0


def multi_get(inv: Invocation) -> int:
    args = inv.args
    out = inv.output
    entries: list[dict[str, Any]] = []

    def on_item(kind: str, entry: Any) -> None:
        if kind != "result":
            return
        if out.fmt == "ndjson":
            out.record("result", entry)
        else:
            entries.append(entry)

    inv.client.call("multi_get", {"patterns": args["patterns"], "max_bytes": args["max_bytes"],
                                  "max_lines": args["lines"], "cwd": os.getcwd()}, on_item)
    if out.fmt == "json":
        out.json(entries)
    elif out.fmt == "csv":
        out.csv(["docid", "file", "title", "context", "skipped", "body"],
                ([e["docid"], e["file"], e["title"], e["context"], e.get("skipped", False),
                  e.get("body", e.get("reason"))] for e in entries))
    elif out.fmt == "files":
        for e in entries:
            out.line(f"{e['docid']} {e['file']}" + (",[SKIPPED]" if e.get("skipped") else ""))
    elif out.fmt == "md":
        for e in entries:
            out.line(f"## {e['file']}\n\n**docid:** `{e['docid']}`  \n**Title:** {e['title']}\n")
            out.line(f"> {e['reason']}\n" if e.get("skipped") else f"````markdown\n{e['body']}\n````\n")
    elif out.fmt == "text":
        for e in entries:
            out.line("=" * 60)
            out.line(f"File: {out.style(e['file'], 'cyan')}  {out.style(e['docid'], 'dim')}")
            out.line("=" * 60)
            if e.get("context"):
                out.line(f"Folder Context: {e['context']}\n---")
            if e.get("skipped"):
                out.line(out.style(f"[SKIPPED: {e['reason']}]", "yellow"))
            else:
                out.line(number_lines(e["body"], 1) if _numbered(inv) else e["body"])
            out.line()
    return 0


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _when(ts: float) -> str:
    fmt = "%b %d %H:%M" if time.time() - ts < 180 * 86400 else "%b %d  %Y"
    return time.strftime(fmt, time.localtime(ts))


def ls(inv: Invocation) -> int:
    out = inv.output
    answer = call_collecting(inv.client, "ls", {"target": inv.args["target"], "cwd": os.getcwd()}, "files")
    if "collections" in answer:
        rows = answer["collections"]
        if out.fmt == "text":
            out.line("Collections:")
            for c in rows:
                out.line(f"  {out.style(c['uri'], 'cyan')}  ({c['documents']} files)")
        else:
            out.table(rows, ["name", "uri", "documents", "chunks", "root"])
        return 0
    files = answer["files"]
    if out.fmt == "text":
        for f in files:
            out.line(f"{_human_size(f['size']):>9}  {_when(f['mtime'])}  {f['file']}")
    else:
        out.table(files, ["file", "docid", "size", "mtime", "title"])
    return 0
