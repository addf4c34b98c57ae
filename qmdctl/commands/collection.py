"""`qmdctl collection add|list|remove|rename`."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from qmdctl.commands.admin import print_summaries, progress_reporter
from qmdd.protocol.errors import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation
    from qmdctl.render import Output


def default_name(path: str) -> str:
    """A collection name from a folder's name, within the daemon's name rule: each run of characters the
    rule refuses ("My Notes", "a:b") becomes one '-', and a leading '-' or '.' goes ("~/.notes" → "notes")."""
    name = re.sub(r"[^\w.-]+", "-", os.path.basename(path.rstrip("/"))).lstrip("-.")[:100].rstrip("-")
    return name or "root"


def add(inv: Invocation) -> int:
    args = inv.args
    path = os.path.realpath(os.path.expanduser(args["path"]))
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
        print_summaries(out, added.get("update", []))
        # qmd's words (scripts grep them), then where and what.
        out.line(f"{out.style('✓', 'green')} Collection '{added['name']}' created successfully")
        out.line(f"  qmd://{added['name']}/ at {added['root']}  masks: {', '.join(added['masks'])}")
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


def show(inv: Invocation) -> int:
    """qmd's `collection show NAME`: the collection's line of `collection list`, and its contexts."""
    name = inv.args["name"]
    found = [c for c in inv.client.call("collection.list") if c["name"] == name]
    if not found:
        raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"Collection not found: {name}")
    c = found[0]
    c["contexts"] = [x for x in inv.client.call("context.list") if x.get("collection") == name]
    out = inv.output
    out.value(c, lambda _: _show_text(out, c))
    return 0


def _show_text(out: Output, c: dict[str, Any]) -> None:
    out.line(f"Collection: {c['name']}")
    out.line(f"  Path:     {c['root']}")
    out.line(f"  Pattern:  {', '.join(c['masks'])}")
    if c["excludes"]:
        out.line(f"  Ignore:   {', '.join(c['excludes'])}")
    out.line(f"  Files:    {c['documents']}  ({c['chunks']} chunks)")
    out.line(f"  Updated:  {_ago(c['updated_at'])}")
    if c["contexts"]:
        out.line(f"  Contexts: {len(c['contexts'])}")


def remove(inv: Invocation) -> int:
    answer = inv.client.call("collection.remove", {"name": inv.args["name"]})
    inv.output.value(answer, lambda a: inv.output.line(
        f"{inv.output.style('✓', 'green')} Removed collection '{a['name']}'\n  Deleted {a['chunks_removed']} chunks"))
    return 0


def rename(inv: Invocation) -> int:
    answer = inv.client.call("collection.rename", {"old": inv.args["old"], "new": inv.args["new"]})
    inv.output.value(answer, lambda a: inv.output.line(
        f"{inv.output.style('✓', 'green')} Renamed collection '{inv.args['old']}' to '{a['name']}'"))
    return 0
