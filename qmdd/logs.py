"""The daemon's log: lines on stderr, each with the trace id of the request that caused it, as text or
JSON (`log_format`); journald's priorities under systemd; size-based rotation of the log file.

qmdctl starts the daemon with stderr on the log file (data dir, qmdd.log). Rotation happens here, where
the lines are written: past `log_max_bytes` the file is renamed to qmdd.log.1 (older ones shift up to
`log_backups`) and a fresh one is put on stderr itself (dup2), so anything else written there, a
thread's traceback or a library's warning, follows it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from qmdd.tracing import trace_id_var
from qmdd.transports import systemd

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s"


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = trace_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, trace_id, message, and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "trace_id": getattr(record, "trace_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RotatingStderr(logging.StreamHandler):
    """Writes to stderr; rotates `log_file` when stderr is that file and it grew past `max_bytes`."""

    def __init__(self, log_file: Path, max_bytes: int, backups: int) -> None:
        super().__init__(sys.stderr)
        self.log_file = log_file
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotations = 0

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.max_bytes > 0:
            try:
                self._rotate_if_full()
            except OSError as exc:  # a full or read-only disk: keep logging into the file as it is
                self.max_bytes = 0
                sys.stderr.write(f"qmdd: cannot rotate {self.log_file}: {exc}; rotation is off\n")

    def _rotate_if_full(self) -> None:
        stderr = os.fstat(2)
        if stderr.st_size <= self.max_bytes:
            return
        try:
            ours = os.stat(self.log_file, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (ours.st_dev, ours.st_ino) != (stderr.st_dev, stderr.st_ino):
            return  # stderr is a terminal, the journal, or a file someone else chose: not ours to rotate
        for n in range(self.backups - 1, 0, -1):
            older = self.log_file.with_name(f"{self.log_file.name}.{n}")
            if older.exists():
                os.replace(older, self.log_file.with_name(f"{self.log_file.name}.{n + 1}"))
        os.replace(self.log_file, self.log_file.with_name(f"{self.log_file.name}.1"))
        fresh = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        | os.O_CLOEXEC, 0o600)
        try:
            self.flush()
            sys.stdout.flush()
            for fd in (1, 2):  # stdout too when it shares the file (OpenTelemetry's console spans)
                if fd == 2 or (os.fstat(1).st_dev, os.fstat(1).st_ino) == (stderr.st_dev, stderr.st_ino):
                    os.dup2(fresh, fd)
        finally:
            os.close(fresh)
        self.rotations += 1


def setup_logging(level: str, log_format: str = "text", *, log_file: Path | None = None, max_bytes: int = 0,
                  backups: int = 1) -> None:
    handler: logging.Handler = (RotatingStderr(log_file, max_bytes, backups) if log_file is not None
                                else logging.StreamHandler(sys.stderr))
    handler.addFilter(_TraceFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif systemd.stderr_is_journal():
        handler.setFormatter(systemd.JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
