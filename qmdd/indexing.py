"""One collection scan: walk, diff against SQLite by mtime+size, hash, chunk, write in batches.

Runs in a worker thread (blocking I/O and CPU). Each batch is one SQLite transaction that replaces
whole documents, so a kill -9 at any moment leaves every document either fully old or fully new;
the next scan picks up where this one stopped because unfinished files still differ by stat.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qmdd.chunking import ChunkerConfig, chunk_markdown, embedding_text, extract_title
from qmdd.safefiles import FileTooLarge, NotRegularFile, read_regular_file
from qmdd.store import documents as docs
from qmdd.store.documents import ChunkText, CollectionRow, ParsedFile
from qmdd.walk import FileStat, WalkConfig, walk_collection

MAX_REPORTED_PROBLEMS = 100
BatchSink = Callable[[list[ChunkText], list[int]], None]
ProgressSink = Callable[[dict[str, object]], None]


@dataclass(frozen=True)
class FileProblem:
    path: str
    code: str
    message: str


@dataclass
class ScanSummary:
    collection: str
    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    chunks_added: int = 0
    seconds: float = 0.0

    def to_wire(self) -> dict[str, object]:
        return {"collection": self.collection, "files": self.files, "indexed": self.indexed,
                "unchanged": self.unchanged, "removed": self.removed, "chunks_added": self.chunks_added,
                # Bounded, so a tree of a million unreadable files still fits in one reply frame;
                # `qmdctl status` lists the recorded problems.
                "problems": [{"path": p.path, "code": p.code, "message": p.message}
                             for p in self.problems[:MAX_REPORTED_PROBLEMS]],
                "problems_total": len(self.problems),
                "seconds": round(self.seconds, 3)}


def read_document(root: Path, st: FileStat, chunker: ChunkerConfig,
                  max_bytes: int) -> ParsedFile | FileProblem | None:
    """Read, hash and chunk one file. None when it vanished since the walk."""
    try:
        data = read_regular_file(root / st.relpath, max_bytes)
    except FileNotFoundError:
        return None
    except FileTooLarge as exc:
        return FileProblem(st.relpath, "too_large", str(exc))
    except NotRegularFile as exc:
        return FileProblem(st.relpath, "not_regular", str(exc))
    except OSError as exc:
        return FileProblem(st.relpath, "unreadable", exc.strerror or str(exc))
    if b"\x00" in data[:8192]:
        return FileProblem(st.relpath, "binary", "looks like a binary file (NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FileProblem(st.relpath, "invalid_utf8", f"not valid UTF-8 at byte {exc.start}")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    chunks = chunk_markdown(text, chunker)
    title = extract_title(text, PurePosixPath(st.relpath).stem)
    return ParsedFile(
        path=st.relpath, size=len(data), mtime_ns=st.mtime_ns,
        hash=hashlib.sha256(data).hexdigest(),
        title=title,
        lines=text.count("\n") + (0 if text.endswith("\n") or not text else 1),
        chunks=chunks,
        chunk_hashes=[hashlib.sha256(embedding_text(title, c.heading_path, c.text).encode()).hexdigest()
                      for c in chunks])


def scan_collection(conn: sqlite3.Connection, collection: CollectionRow, config: WalkConfig, *,
                    batch_files: int, chunker: ChunkerConfig, on_batch: BatchSink,
                    on_progress: ProgressSink, checkpoint: Callable[[], None] = lambda: None) -> ScanSummary:
    """`checkpoint` is called between files; it raises to abandon the scan (trio cancellation)."""
    started = time.monotonic()
    summary = ScanSummary(collection.name)
    root = Path(collection.root)
    walk = walk_collection(root, config)
    summary.problems.extend(FileProblem(p.relpath, p.code, p.message) for p in walk.problems)
    summary.files = len(walk.files)
    states = docs.doc_states(conn, collection.id)
    seen = {f.relpath for f in walk.files}
    pending_removals = [path for path in states if path not in seen]
    candidates = [f for f in walk.files
                  if (s := states.get(f.relpath)) is None or s.size != f.size or s.mtime_ns != f.mtime_ns]
    summary.unchanged = summary.files - len(candidates)

    parsed: list[ParsedFile] = []
    touched: list[tuple[str, int, int]] = []

    def flush() -> None:
        if not (parsed or touched or pending_removals):
            return  # a no-change rescan writes nothing (but its problem list, below)
        added, removed = docs.write_batch(conn, collection.id, parsed, touched, pending_removals)
        summary.chunks_added += len(added)
        summary.removed += len(pending_removals)
        if added or removed:
            on_batch(added, removed)
        parsed.clear()
        touched.clear()
        pending_removals.clear()

    done = 0
    for st in candidates:
        checkpoint()
        old = states.get(st.relpath)
        result = read_document(root, st, chunker, config.max_file_bytes)
        if result is None:
            if old is not None:
                pending_removals.append(st.relpath)
        elif isinstance(result, FileProblem):
            summary.problems.append(result)
            if old is not None:  # never keep serving content we can no longer read
                pending_removals.append(st.relpath)
        elif old is not None and old.hash == result.hash:
            touched.append((st.relpath, st.size, st.mtime_ns))
            summary.unchanged += 1
        else:
            parsed.append(result)
            summary.indexed += 1
        done += 1
        if len(parsed) + len(touched) + len(pending_removals) >= batch_files:
            flush()
            on_progress({"collection": collection.name, "done": done, "total": len(candidates)})
    flush()
    docs.replace_problems(conn, collection.id, [(p.path, p.code, p.message) for p in summary.problems])
    summary.seconds = time.monotonic() - started
    on_progress({"collection": collection.name, "done": done, "total": len(candidates)})
    return summary
