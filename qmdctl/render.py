"""Output for people (text) and programs (json, ndjson, csv, md, files), and typed errors.

Stdlib only on the hot path; rich is imported lazily, and only for text on a terminal.

Nothing from a file name, title, snippet, body, context or error message reaches a terminal raw: every
write goes through `Output._emit`, which shows a character that would make a terminal act instead of print
(see `terminal_safe`) as a visible escape such as `\\x1b`. Text and md are read by people, so they are always
escaped, redirected or not; stderr (errors, hints, warnings) too. csv and files are read by programs: exact
when redirected, escaped only when stdout is a terminal (as `ls` does). JSON and NDJSON are exact values
always; characters JSON leaves raw that a terminal would act on are written as `\\u` escapes of the same
value.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence

from qmdd.protocol.errors import QmddError

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any, TextIO

NDJSON_VERSION = 1

# What a terminal acts on instead of printing: C0 controls but newline and tab (ESC opens the sequences that
# clear the screen, set the window title, write the clipboard or plant links; CR overwrites the line), DEL,
# C1 controls (U+009B is a one-character CSI to some terminals), the bidi overrides and isolates that
# reorder what is shown, and lone surrogates (a file name that is not UTF-8), which cannot even be encoded.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Of those, what json.dumps(ensure_ascii=False) leaves raw (it escapes the C0 controls itself).
_UNSAFE_IN_JSON = re.compile(r"[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_HUMAN_FORMATS = ("text", "md")


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal would act on shown as a visible escape (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_visible_escape, text)


def _visible_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON of `value`, readable UTF-8, with no character a terminal acts on: those are `\\u` escapes, which
    decode to the same value."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def human_size(size: float) -> str:
    """1536 → "1.5 KB": bytes for people (status, cleanup, ls)."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def number_lines(text: str, first_line: int) -> str:
    """Prefix each line with its 1-based number, as `get --line-numbers` and `search --line-numbers` show."""
    return "\n".join(f"{first_line + i}: {line}" for i, line in enumerate(text.split("\n")))


class Output:
    """Where and how a command writes its results (a plain class: dataclasses cost import time)."""

    def __init__(self, fmt: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._seq = 0
        self._stdout_is_terminal: bool | None = None
        self._style_marker: str | None = None
        self.meta: dict[str, Any] = {}
        """The payload of the NDJSON `metadata` record, which always comes first; commands may add to it
        until the first record is written."""

    @property
    def tty(self) -> bool:
        return self.out.isatty() and os.environ.get("NO_COLOR") is None

    def write(self, text: str) -> None:
        self._emit(self.out, text)

    def line(self, text: str = "") -> None:
        self._emit(self.out, text + "\n")

    def err_line(self, text: str) -> None:
        """A line for people on stderr (errors, hints), escaped as text is."""
        self._emit(self.err, text + "\n")

    def _emit(self, stream: TextIO, text: str) -> None:
        """The one place text is written: escaped unless it is csv or files for a program (see the module
        docstring), then with `style`'s markers turned into its colour codes."""
        if stream is self.err or self.fmt in _HUMAN_FORMATS or self._out_is_terminal():
            text = terminal_safe(text)
            if self._style_marker is not None:
                text = text.replace(self._style_marker, "\x1b[")
        stream.write(text)

    def _out_is_terminal(self) -> bool:
        if self._stdout_is_terminal is None:
            self._stdout_is_terminal = self.out.isatty()
        return self._stdout_is_terminal

    def warn(self, text: str, payload: dict[str, Any] | None = None) -> None:
        """A warning beside the results: on stderr, or in NDJSON's metadata `warnings` while it is unsent."""
        if self.fmt == "ndjson" and self._seq == 0:
            self.meta.setdefault("warnings", []).append(payload or {"message": text})
        else:
            self.err_line(text)

    def json(self, value: Any) -> None:
        self.out.write(json_text(value, indent=2) + "\n")

    def start(self) -> None:
        """NDJSON: write the metadata record now if nothing was written yet (e.g. a command with no results)."""
        if self.fmt == "ndjson" and self._seq == 0:
            self._write_record("metadata", self.meta)

    def record(self, kind: str, payload: Any) -> None:
        """One NDJSON record, after the metadata record (written first, once); `metadata` adds to it."""
        if kind == "metadata":
            self.meta.update(payload)
            self.start()
            return
        self.start()
        self._write_record(kind, payload)

    def next_seq(self) -> int:
        """Take the next NDJSON sequence number (for a record written elsewhere, e.g. an error on stderr)."""
        self._seq += 1
        return self._seq - 1

    def _write_record(self, kind: str, payload: Any) -> None:
        """{"type", "seq", "payload"}; written and flushed at once (streaming)."""
        self.out.write(json_text({"type": kind, "seq": self._seq, "payload": payload}) + "\n")
        self.out.flush()
        self._seq += 1

    def csv(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        self.write(buf.getvalue())

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """A generic list of records in the chosen format (used by list-like commands)."""
        if self.fmt == "json":
            self.json(list(rows))
        elif self.fmt == "ndjson":
            for row in rows:
                self.record("result", row)
        elif self.fmt == "csv":
            self.csv(columns, ([_cell(r.get(c)) for c in columns] for r in rows))
        elif self.fmt == "md":
            self.line("| " + " | ".join(columns) + " |")
            self.line("|" + "---|" * len(columns))
            for r in rows:
                self.line("| " + " | ".join(one_line(str(_cell(r.get(c)))).replace("|", "\\|") for c in columns) + " |")
        elif self.fmt == "xml":
            self.line('<?xml version="1.0" encoding="UTF-8"?>\n<items>')
            for r in rows:
                fields = "".join(f"<{c}>{xml_escape(str(_cell(r.get(c))))}</{c}>" for c in columns)
                self.line(f"  <item>{fields}</item>")
            self.line("</items>")
        elif self.fmt == "files":
            for r in rows:
                self.line(files_field(str(r.get("file") or r.get("uri") or r.get(columns[0]))))
        else:
            cells = [[one_line(str(_cell(r.get(c)))) for c in columns] for r in rows]
            widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
            self.line("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
            for line in cells:
                self.line("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))

    def value(self, value: Any, text: Callable[[Any], None],
              rows: Callable[[Any], tuple[list[dict[str, Any]], list[str]]] | None = None) -> None:
        """A single result: JSON forms for programs, `text` for people; csv, md, xml and files get a table:
        `rows(value)` (records and columns), or else the value flattened to dotted-key/value pairs."""
        if self.fmt == "json":
            self.json(value)
        elif self.fmt == "ndjson":
            self.record("result", value)
        elif self.fmt in ("csv", "md", "xml", "files"):
            records, columns = rows(value) if rows else (_flattened(value), ["key", "value"])
            self.table(records, columns)
        else:
            text(value)

    def style(self, text: str, style: str) -> str:
        """ANSI colour on a terminal only (no rich import for a few colours).

        The codes are written by `_emit`, after it has escaped every ESC in the line: here they are a marker
        made of a random token, which text from a file or the daemon cannot know, so cannot forge."""
        if not self.tty:
            return text
        if self._style_marker is None:
            self._style_marker = f"\ue000{os.urandom(8).hex()}\ue001"
        codes = {"bold": "1", "dim": "2", "green": "32", "yellow": "33", "red": "31", "cyan": "36",
                 "magenta": "35"}
        return f"{self._style_marker}{codes[style]}m{text}{self._style_marker}0m"


def _flattened(value: Any, prefix: str = "") -> list[dict[str, Any]]:
    """{"a": {"b": 1}, "c": [2]} → rows a.b=1, c.0=2: a nested answer as key/value records."""
    if isinstance(value, dict) and value:
        return [row for k, v in value.items() for row in _flattened(v, f"{prefix}{k}.")]
    if isinstance(value, list) and value:
        return [row for i, v in enumerate(value) for row in _flattened(v, f"{prefix}{i}.")]
    return [{"key": prefix[:-1], "value": value}]


_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
# Characters XML 1.0 cannot carry at all (C0 controls but tab and newline, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile(r"[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_escape(text: str) -> str:
    """Text for an XML element or attribute; what XML cannot carry is shown as a visible `\\x1b` escape."""
    text = _NOT_XML.sub(_visible_escape, text)
    return re.sub(r"[&<>\"']", lambda m: _XML_ESCAPES[m.group()], text)


def one_line(text: str) -> str:
    """A name or label on its line of text or md output, a line break in it (a file name may have one)
    written as `\\n` (`\\r`): it cannot start what reads as another result or row."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def labelled_context(label: str, text: str) -> str:
    """`label` and a context on text or md output. Contexts that apply at several levels come as one
    text, blank-line separated (qmd's): each on its own line, indented under the first, so that none
    reads as a line of qmdctl's own (a label, another result), and a line break within one as `\n`."""
    parts = [one_line(part.strip()) for part in text.split("\n\n") if part.strip()]
    return label + ("\n" + " " * len(label)).join(parts)


def files_field(text: str, quoted: bool = False) -> str:
    """A field of the `files` format, which must stay one record per line: CSV quoting (qmd's rule: a
    field with a comma, quote or line break is quoted, quotes doubled), and a line break inside a field
    written as the two characters `\\n` (`\\r`), so a file name or context with one cannot split the record."""
    if quoted or any(c in text for c in ',"\n\r'):
        text = '"' + text.replace('"', '""').replace("\r", "\\r").replace("\n", "\\n") + '"'
    return text


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def problem_details(err: QmddError, instance: str | None = None, trace_id: str | None = None) -> dict[str, Any]:
    """RFC 7807 problem details with qmdd's extensions; `instance` (the command that failed) and `trace_id`
    are always there (qmdctl always knows both)."""
    spec = err.code.spec
    doc: dict[str, Any] = {"type": f"urn:qmdd:error:{err.code}", "title": spec.title, "status": spec.status,
                           "detail": err.message, "instance": instance, "code": str(err.code),
                           "recovery_hints": hints_for(err, instance), "trace_id": trace_id,
                           "exit_code": spec.exit_code}
    if err.details:
        doc["details"] = err.details
    return doc


def hints_for(err: QmddError, command: str | None) -> list[str]:
    """The error's hints, the catalogue's `qmdctl COMMAND` naming the command that failed."""
    if not command:
        return list(err.hints)
    return [hint.replace("`qmdctl COMMAND ", f"`qmdctl {command} ") for hint in err.hints]


def report_error(output: Output, err: QmddError, command: str, trace_id: str, *, brief: bool = False) -> int:
    """An error goes to stderr in every format, so stdout holds results only (`… --json | jq '.[]'` never
    parses an error as a result): problem details as JSON for json, an NDJSON `error` record for ndjson (the
    metadata record still opens stdout's stream), text lines otherwise. Returns the exit status.
    `brief`: one of several (multi-get's misses): JSON on one line, text without hints and trace id."""
    if output.fmt == "json":
        output.err.write(json_text(problem_details(err, command, trace_id), indent=None if brief else 2) + "\n")
    elif output.fmt == "ndjson":
        output.start()
        output.err.write(json_text({"type": "error", "seq": output.next_seq(),
                                    "payload": problem_details(err, command, trace_id)}) + "\n")
    else:
        output.err_line(f"error: {err.code}: {err.message}")
        for candidate in err.details.get("candidates", ()):
            output.err_line(f"  candidate: {candidate}")
        if brief:
            return err.code.spec.exit_code
        for hint in hints_for(err, command):
            output.err_line(f"  hint: {hint}")
        output.err_line(f"  trace id: {trace_id} ({f'qmdctl {command}'.rstrip()}, exit {err.code.spec.exit_code})")
    return err.code.spec.exit_code
