"""`qmdctl search`: qmd's output shapes, so scripts written for `qmd search` work unchanged."""

from __future__ import annotations

import json
import os

from qmdctl.client import call_collecting
from qmdctl.fullpath import show_full_paths
from qmdctl.render import files_field, labelled_context, number_lines, one_line, xml_escape

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation
    from qmdctl.render import Output

ALL_LIMIT = 100_000


def search(inv: Invocation) -> int:
    return _run(inv, "search", {})


def vsearch(inv: Invocation) -> int:
    return _run(inv, "vsearch", {})


def query(inv: Invocation) -> int:
    return _run(inv, "query", {"rerank": not inv.args["no_rerank"], "candidates": inv.args["candidates"],
                               "intent": inv.args["intent"]})


def _run(inv: Invocation, method: str, extra: dict[str, Any]) -> int:
    args = inv.args
    fmt = inv.output.fmt
    limit = args["limit"] or (ALL_LIMIT if args["all"] else (20 if fmt in ("json", "files") else 5))
    path = args["path"]
    if path is not None and (path in (".", "..") or path.startswith(("./", "../"))):
        path = os.path.abspath(path)  # a folder on disk, relative to where the user is
    params = {"query": " ".join(args["query"]), "limit": limit, "collections": args["collection"],
              "path_prefix": path, "min_score": args["min_score"], "explain": args["explain"],
              "full": args["full"], "plugins": args["plugin"], "plugin_strict": args["strict_plugins"],
              "collapse": not args["no_collapse"], **extra}
    answer = call_collecting(inv.client, method, params, "results")
    for warning in answer.get("warnings", ()):
        # Degraded, not failed (e.g. `query` before `embed`): say so where a human or a log sees it.
        hints = "".join(f"\n  hint: {h}" for h in warning.get("hints", ()))
        inv.output.warn(f"warning: {warning['code']}: {warning['message']}{hints}", warning)
    shaped = [qmd_shape(r, args["line_numbers"], args["full"]) for r in answer["results"]]
    show_full_paths(inv, shaped)
    render_results(inv.output, shaped, params["query"], min_score=args["min_score"])
    return 0


def qmd_shape(result: dict[str, Any], line_numbers: bool, full: bool) -> dict[str, Any]:
    """The JSON object `qmd search --json` prints for one hit (context only when there is one)."""
    shaped: dict[str, Any] = {"docid": result["docid"], "score": result["score"], "file": result["file"],
                              "line": result["line"], "title": result["title"]}
    if result.get("context"):
        shaped["context"] = result["context"]
    if full:
        text = number_lines(result["body"], 1) if line_numbers else result["body"]
    else:
        text = result["snippet"]
        header, _, body = text.partition("\n")
        if line_numbers and body:
            text = header + "\n" + number_lines(body, _snippet_first_line(header))
    shaped["body" if full else "snippet"] = text
    if "copies" in result:
        shaped["copies"] = result["copies"]
    if "explain" in result:
        shaped["explain"] = result["explain"]
    return shaped


def _snippet_first_line(header: str) -> int:
    """The start line in an `@@ -start,count @@` header."""
    try:
        return int(header.split("-", 1)[1].split(",", 1)[0])
    except (IndexError, ValueError):
        return 1


def render_results(out: Output, shaped: list[dict[str, Any]], query: str, *, min_score: float) -> None:
    """Hits shaped by `qmd_shape` in the output format; a hit without a docid (--full-path) is shown
    by its path alone, as qmd does."""
    if out.fmt == "json":
        out.json(shaped)
    elif out.fmt == "ndjson":
        out.record("metadata", {"query": query, "count": len(shaped)})
        for s in shaped:
            out.record("result", s)
    elif out.fmt == "csv":
        out.csv(["docid", "score", "file", "title", "context", "line", "snippet"],
                ([s.get("docid", ""), f"{s['score']:.4f}", s["file"], s["title"], s.get("context"), s["line"],
                  s.get("body", s.get("snippet"))] for s in shaped))
    elif out.fmt == "files":
        for s in shaped:
            # qmd's line: the context always quoted; fields that would split the record are quoted too.
            ctx = "," + files_field(s["context"], quoted=True) if s.get("context") else ""
            docid = f"{s['docid']}," if "docid" in s else ""
            out.line(f"{docid}{s['score']:.2f},{files_field(s['file'])}{ctx}")
    elif out.fmt == "xml":
        for s in shaped:
            title = f' title="{xml_escape(s["title"])}"' if s["title"] else ""
            context = f' context="{xml_escape(s["context"])}"' if s.get("context") else ""
            body = xml_escape(s.get("body", s.get("snippet", "")))
            docid = f' docid="{s["docid"]}"' if "docid" in s else ""
            out.line(f'<file{docid} name="{xml_escape(s["file"])}"{title}{context}>\n{body}\n</file>\n')
    elif out.fmt == "md":
        for s in shaped:
            docid = f"\n**docid:** `{s['docid']}`" if "docid" in s else ""
            out.line(f"---\n# {one_line(s['title'] or s['file'])}\n**file:** `{one_line(s['file'])}`{docid}")
            if s.get("context"):
                out.line(labelled_context("**context:** ", s["context"]))
            out.line(f"\n{s.get('body', s.get('snippet'))}\n")
    else:
        _render_text(out, shaped, min_score)


def _render_text(out: Output, shaped: list[dict[str, Any]], min_score: float) -> None:
    if not shaped:
        out.line("No results found above minimum score threshold." if min_score > 0 else "No results found.")
        return
    for i, s in enumerate(shaped):
        if i:
            out.line()
        docid = f" {out.style(s['docid'], 'dim')}" if "docid" in s else ""
        out.line(f"{out.style(one_line(s['file']) + ':' + str(s['line']), 'cyan')}{docid}")
        if s["title"]:
            out.line(f"Title: {out.style(one_line(s['title']), 'bold')}")
        if s.get("context"):
            out.line(labelled_context("Context: ", s["context"]))
        if s.get("copies"):
            more = f" (+{len(s['copies']) - 3} more)" if len(s["copies"]) > 3 else ""
            out.line(f"Copies: {', '.join(map(one_line, s['copies'][:3]))}{more}")
        pct = round(s["score"] * 100)
        colour = "green" if s["score"] >= 0.7 else "yellow" if s["score"] >= 0.4 else "dim"
        out.line(f"Score: {out.style(f'{pct:>3}%', colour)}")
        out.line()
        out.line(s.get("body", s.get("snippet", "")))
        if "explain" in s:
            out.line(out.style("Explain: " + json.dumps(s["explain"], ensure_ascii=False), "dim"))
