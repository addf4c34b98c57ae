"""`qmdctl collection add|list|remove|rename`."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from qmdctl.commands.admin import print_summaries, progress_reporter

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation


def default_name(path: str) -> str:
    """A collection name from a folder's name, within the daemon's name rule: each run of characters the
    rule refuses ("My Notes", "a:b") becomes one '-', and a leading '-' or '.' goes ("~/.notes" → "notes")."""
    name = re.sub(r"[^\w.-]+", "-", os.path.basename(path.rstrip("/"))).lstrip("-.")[:100].rstrip("-")
    return name or "root"


def add(inv: Invocation) -> int:
    args = inv.args
    path = os.path.realpath(os.path.expanduser(args["path"] or "."))
    name = args["name"] or default_name(path)
    on_item, close = progress_reporter(inv.output)
    try:
        added = inv.client.call("collection.add", {
            "path": path, "name": name, "masks": args["mask"], "excludes": args["exclude"],
            "update": not args["no_update"]}, on_item)
    finally:
        close()
    out = inv.output
    if out.fmt == "text":
        out.line(f"Added collection {out.style(added['name'], 'cyan')} (qmd://{added['name']}/) at "
                 f"{added['root']}  masks: {', '.join(added['masks'])}")
        print_summaries(out, added.get("update", []))
    else:
        out.value(added, lambda _: None)
    return 0


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    delta = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta // size:.0f}{unit} ago"
    return f"{delta:.0f}s ago"


def list_(inv: Invocation) -> int:
    rows: list[dict[str, Any]] = inv.client.call("collection.list")
    out = inv.output
    if out.fmt != "text":
        out.table(rows, ["name", "uri", "root", "masks", "excludes", "documents", "chunks", "updated_at"])
        return 0
    out.line(f"Collections ({len(rows)}):\n")
    for c in rows:
        out.line(f"{out.style(c['name'], 'cyan')} ({c['uri']})")
        out.line(f"  Path:     {c['root']}")
        out.line(f"  Pattern:  {', '.join(c['masks'])}")
        if c["excludes"]:
            out.line(f"  Ignore:   {', '.join(c['excludes'])}")
        out.line(f"  Files:    {c['documents']}  ({c['chunks']} chunks)")
        out.line(f"  Updated:  {_ago(c['updated_at'])}\n")
    return 0


def remove(inv: Invocation) -> int:
    answer = inv.client.call("collection.remove", {"name": inv.args["name"]})
    inv.output.value(answer, lambda a: inv.output.line(
        f"Removed collection {a['name']} ({a['chunks_removed']} chunks)"))
    return 0


def rename(inv: Invocation) -> int:
    answer = inv.client.call("collection.rename", {"old": inv.args["old"], "new": inv.args["new"]})
    inv.output.value(answer, lambda a: inv.output.line(f"Renamed {inv.args['old']} → {a['name']}"))
    return 0
