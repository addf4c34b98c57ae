"""`qmdctl get`, `multi-get` and `ls`, with qmd's output for each format."""

from __future__ import annotations

import os
import time

from qmdctl.client import call_collecting
from qmdctl.fullpath import show_full_paths
from qmdctl.render import files_field, human_size, labelled_context, number_lines, one_line, report_error, xml_escape
from qmdd.protocol.errors import QmddError

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.invocation import Invocation


def _numbered(inv: Invocation) -> bool:
    return not inv.args["no_line_numbers"]


def _numbered_body(body: str, first_line: int) -> str:
    """The body's lines, numbered; a body ends each line with its newline, so the last "\\n" ends the last
    line and opens no other ("" is no line, "\\n" one empty line)."""
    return number_lines(body.removesuffix("\n"), first_line) if body else ""


def _ident(entry: dict[str, Any], sep: str = "  ") -> str:
    """The file, then its docid when it has one (not under --full-path)."""
    return one_line(entry["file"]) + (f"{sep}{entry['docid']}" if entry.get("docid") else "")


def get(inv: Invocation) -> int:
    args = inv.args
    doc = inv.client.call("get", {"target": args["target"], "from_line": args["from_line"],
                                  "max_lines": args["lines"], "cwd": os.getcwd()})
    show_full_paths(inv, [doc])
    out = inv.output
    if out.fmt in ("json", "ndjson"):
        out.value(doc, lambda _: None)
    elif out.fmt == "files":
        out.line(_files_record(doc))
    elif out.fmt == "csv":
        out.csv(["docid", "file", "title", "context", "from_line", "body"],
                [[doc.get("docid"), doc["file"], doc["title"], doc["context"], doc["from_line"], doc["body"]]])
    elif out.fmt == "md":
        out.line(f"## {one_line(doc['file'])}\n")
        if doc.get("docid"):
            out.line(f"**docid:** `{doc['docid']}`  \n**Title:** {one_line(doc['title'])}")
        else:
            out.line(f"**Title:** {one_line(doc['title'])}")
        if doc["context"]:
            out.line(labelled_context("**Context:** ", doc["context"]))
        out.line(f"\n````markdown\n{doc['body'].removesuffix(chr(10))}\n````")
    elif out.fmt == "xml":
        out.line('<?xml version="1.0" encoding="UTF-8"?>')
        out.line(_xml_document(doc, "    "))
    else:
        out.line(out.style(_ident(doc), "cyan"))
        if doc["context"]:
            out.line(labelled_context("Folder Context: ", doc["context"]))
        out.line("---\n")
        body = doc["body"]
        out.line(_numbered_body(body, doc["from_line"]) if _numbered(inv) else body.removesuffix("\n"))
        if args["lines"] is not None and doc["lines_after"]:
            out.line(out.style(f"[... {doc['lines_after']} more lines]", "dim"))
    return 0


def _files_record(e: dict[str, Any]) -> str:
    """qmd's headerless CSV record of a document (get, multi-get): docid,file[,"context"][,[SKIPPED]], one
    line each (render.files_field); no docid under --full-path."""
    fields = [e["docid"]] if e.get("docid") else []
    fields.append(files_field(e["file"]))
    if e.get("context"):
        fields.append(files_field(e["context"], quoted=True))
    if e.get("skipped"):
        fields.append("[SKIPPED]")
    return ",".join(fields)


def _xml_document(e: dict[str, Any], indent: str = "    ") -> str:
    """qmd's <document> element of multi-get's xml."""
    docid = f' docid="{xml_escape(e["docid"])}"' if e.get("docid") else ""
    parts = [f"<document{docid}>", f"{indent}<file>{xml_escape(e['file'])}</file>",
             f"{indent}<title>{xml_escape(e['title'])}</title>"]
    if e.get("context"):
        parts.append(f"{indent}<context>{xml_escape(e['context'])}</context>")
    if e.get("skipped"):
        parts += [f"{indent}<skipped>true</skipped>", f"{indent}<reason>{xml_escape(e['reason'])}</reason>"]
    else:
        parts.append(f"{indent}<body>{xml_escape(e['body'])}</body>")
    return "\n".join(parts) + f"\n{indent[:-2]}</document>"


def multi_get(inv: Invocation) -> int:
    """Prints what was found and reports each name that was not (stderr); exit 0 when anything was found,
    as qmd; NOT_FOUND when nothing was."""
    args = inv.args
    out = inv.output
    entries: list[dict[str, Any]] = []
    # Streamed NDJSON records cannot be rewritten afterwards: --full-path collects them first.
    stream = out.fmt == "ndjson" and not args["full_path"]

    def on_item(kind: str, entry: Any) -> None:
        if kind == "missing":
            # A name that meant nothing, on stderr as qmd reports it, while the others are printed.
            report_error(out, QmddError.from_wire(entry), inv.command.name, inv.trace_id, brief=True)
        elif kind == "result":
            if stream:
                out.record("result", entry)
            else:
                entries.append(entry)

    inv.client.call("multi_get", {"patterns": args["patterns"], "max_bytes": args["max_bytes"],
                                  "max_lines": args["lines"], "cwd": os.getcwd()}, on_item)
    show_full_paths(inv, entries)
    if out.fmt == "ndjson":
        for e in entries:
            out.record("result", e)
    elif out.fmt == "json":
        out.json(entries)
    elif out.fmt == "csv":
        out.csv(["docid", "file", "title", "context", "skipped", "body"],
                ([e.get("docid"), e["file"], e["title"], e["context"], "true" if e.get("skipped") else "false",
                  e["reason"] if e.get("skipped") else e["body"]] for e in entries))
    elif out.fmt == "files":
        for e in entries:
            out.line(_files_record(e))
    elif out.fmt == "md":
        for e in entries:
            out.line(f"## {one_line(e['file'])}\n")
            if e.get("docid"):
                out.line(f"**docid:** `{e['docid']}`\n")
            out.line(f"**Title:** {one_line(e['title'])}\n")
            if e.get("context"):
                out.line(labelled_context("**Context:** ", e["context"]) + "\n")
            body = e.get("body", "").removesuffix("\n")
            out.line(f"> {e['reason']}\n" if e.get("skipped") else f"````markdown\n{body}\n````\n")
    elif out.fmt == "xml":
        out.line('<?xml version="1.0" encoding="UTF-8"?>\n<documents>')
        for e in entries:
            out.line("  " + _xml_document(e))
        out.line("</documents>")
    else:
        for e in entries:
            _multi_get_text(inv, e)
    return 0


def _multi_get_text(inv: Invocation, e: dict[str, Any]) -> None:
    """qmd's block per document; -l's truncation marker stands on its own line, unnumbered."""
    out = inv.output
    out.line("\n" + "=" * 60)
    out.line(f"File: {out.style(one_line(e['file']), 'cyan')}"
             + (f"  {out.style(e['docid'], 'dim')}" if e.get("docid") else ""))
    out.line("=" * 60 + "\n")
    if e.get("skipped"):
        out.line(out.style(f"[SKIPPED: {e['reason']}]", "yellow"))
        return
    if e.get("context"):
        out.line(labelled_context("Folder Context: ", e["context"]) + "\n---\n")
    body, marker = e["body"], ""
    if e.get("lines_after"):
        marker = f"[... truncated {e['lines_after']} more lines]"
        body = body.removesuffix("\n\n" + marker) + "\n"
    out.line(_numbered_body(body, 1) if _numbered(inv) else body.removesuffix("\n"))
    if marker:
        out.line(out.style(marker, "dim"))


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
        if not files:
            out.line(f"No files found in collection: {answer['collection']}")
        for f in files:
            out.line(f"{human_size(f['size']):>9}  {_when(f['mtime'])}  {one_line(f['file'])}")
    else:
        out.table(files, ["file", "docid", "size", "mtime", "title"])
    return 0
