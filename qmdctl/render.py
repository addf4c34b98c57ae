"""Output for people (text) and programs (json, ndjson, csv, md, files), and typed errors.

Stdlib only on the hot path; rich is imported lazily, and only for text on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from qmdd.protocol import QmddError

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from typing import Any, TextIO

NDJSON_VERSION = 1


class Output:
    """Where and how a command writes its results (a plain class: dataclasses cost import time)."""

    def __init__(self, fmt: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._seq = 0
        self.meta: dict[str, Any] = {}
        """The payload of the NDJSON `metadata` record, which always comes first; commands may add to it
        until the first record is written."""

    @property
    def tty(self) -> bool:
        return self.out.isatty() and os.environ.get("NO_COLOR") is None

    def write(self, text: str) -> None:
        self.out.write(text)

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def warn(self, text: str, payload: dict[str, Any] | None = None) -> None:
        """A warning beside the results: on stderr, or in NDJSON's metadata `warnings` while it is unsent."""
        if self.fmt == "ndjson" and self._seq == 0:
            self.meta.setdefault("warnings", []).append(payload or {"message": text})
        else:
            self.err.write(text + "\n")

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")

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

    def _write_record(self, kind: str, payload: Any) -> None:
        """{"type", "seq", "payload"}; written and flushed at once (streaming)."""
        self.out.write(json.dumps({"type": kind, "seq": self._seq, "payload": payload}, ensure_ascii=False) + "\n")
        self.out.flush()
        self._seq += 1

    def csv(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        self.out.write(buf.getvalue())

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
                self.line("| " + " | ".join(str(_cell(r.get(c))).replace("|", "\\|") for c in columns) + " |")
        elif self.fmt == "files":
            for r in rows:
                self.line(str(r.get("file") or r.get("uri") or r.get(columns[0])))
        else:
            widths = [max([len(c), *(len(str(_cell(r.get(c)))) for r in rows)]) for c in columns]
            self.line("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
            for r in rows:
                self.line("  ".join(str(_cell(r.get(c))).ljust(w) for c, w in zip(columns, widths, strict=True)))

    def value(self, value: Any, text: Callable[[Any], None]) -> None:
        """A single result: JSON forms for programs, `text` for people."""
        if self.fmt == "json":
            self.json(value)
        elif self.fmt == "ndjson":
            self.record("result", value)
        else:
            text(value)

    def style(self, text: str, style: str) -> str:
        """ANSI colour on a terminal only (no rich import for a few colours)."""
        if not self.tty:
            return text
        codes = {"bold": "1", "dim": "2", "green": "32", "yellow": "33", "red": "31", "cyan": "36",
                 "magenta": "35"}
        return f"\x1b[{codes[style]}m{text}\x1b[0m"


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
                           "recovery_hints": list(err.hints), "trace_id": trace_id, "exit_code": spec.exit_code}
    if err.details:
        doc["details"] = err.details
    return doc


def report_error(output: Output, err: QmddError, command: str, trace_id: str) -> int:
    if output.fmt == "json":
        output.json(problem_details(err, command, trace_id))
    elif output.fmt == "ndjson":
        output.record("error", problem_details(err, command, trace_id))
    else:
        output.err.write(f"error: {err.code}: {err.message}\n")
        for candidate in err.details.get("candidates", ()):
            output.err.write(f"  candidate: {candidate}\n")
        for hint in err.hints:
            output.err.write(f"  hint: {hint}\n")
        output.err.write(f"  trace id: {trace_id} (qmdctl {command}, exit {err.code.spec.exit_code})\n")
    return err.code.spec.exit_code
