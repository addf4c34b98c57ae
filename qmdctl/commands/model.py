"""`qmdctl model list|import|use`."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from qmdctl.invocation import Invocation


def list_(inv: Invocation) -> int:
    answer = inv.client.call("model.list")
    out = inv.output
    if out.fmt in ("csv", "md", "files", "ndjson"):
        out.table(answer["models"], ["name", "kind", "pooling", "max_length", "installed", "in_use", "source"])
        return 0

    def text(a: dict) -> None:
        out.line(f"device {a['device']}/{a['compute_type']}; vectors fingerprint {a['fingerprint']}")
        for m in a["models"]:
            use = f"  [{', '.join(m['in_use'])}]" if m["in_use"] else ""
            state = "" if m["installed"] else out.style("  not installed: " + m.get("install", ""), "yellow")
            shape = f"{m['pooling']}, {m['max_length']} tokens" if m["max_length"] else "a remote server's model"
            out.line(f"  {out.style(m['name'], 'cyan')} {m['kind']} ({shape}) "
                     f"from {m['source']}{out.style(use, 'green')}{state}")

    out.value(answer, text)
    return 0


def import_(inv: Invocation) -> int:
    args = inv.args
    answer = inv.client.call("model.import", {
        "path": os.path.realpath(os.path.expanduser(args["path"])), "name": args["name"], "kind": args["kind"],
        "pooling": args["pooling"], "max_length": args["max_length"]})
    inv.output.value(answer, lambda a: inv.output.line(
        f"imported {a['name']}: {a['kind']}, {a['pooling']} pooling, {a['max_length']} tokens. {a['hint']}"))
    return 0


def use(inv: Invocation) -> int:
    answer = inv.client.call("model.use", {"name": inv.args["name"], "role": inv.args["role"]})

    def text(a: dict) -> None:
        chosen = a["selection"]
        inv.output.line(f"embedding: {chosen['embedding']}   reranker: {chosen['reranker'] or 'none'}")
        if a.get("hint"):
            inv.output.line(a["hint"])

    inv.output.value(answer, text)
    return 0
