"""One collection scan: walk, diff against SQLite by mtime+size, hash, chunk, write in batches.

Runs in a worker thread (blocking I/O and CPU). Each batch is one SQLite transaction that replaces
whole documents, so a kill -9 at any moment leaves every document either fully old or fully new;
the next scan picks up where this one stopped because unfinished files still differ by stat.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qmdd.chunking import CHUNK_RULES, ChunkerConfig, chunk_markdown, embedding_text, extract_title
from qmdd.decoding import Undecodable, decode_text, line_count
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.safefiles import ConfinedRoot, EscapesRoot, FileTooLarge, NotRegularFile
from qmdd.store import documents as docs
from qmdd.store.documents import ChunkText, CollectionRow, DocState, ParsedFile
from qmdd.walk import BROKEN_LINK, IGNORE_FILES, FileStat, PathFilter, WalkConfig, admit_file, walk_collection

MAX_REPORTED_PROBLEMS = 100
LINKS_CHECKED = 100
"""Broken links looked at again per watcher change; any past these wait for the next full scan (`qmdctl
update`, a daemon start)."""
BatchSink = Callable[[list[ChunkText], list[int]], None]
ProgressSink = Callable[[dict[str, object]], None]
Transform = Callable[[list[tuple[str, str]]], list[tuple[str, bool]]]
"""[(path, text)] -> each document's new text, or None where the collection's transform plugins failed
on it (it is then indexed as it is). Applied before chunking, a group of documents per call."""
TRANSFORM_GROUP_FILES = 64
TRANSFORM_GROUP_BYTES = 1 << 20
"""Documents read ahead and transformed together: one plugin call each, not one per document."""


@dataclass(frozen=True)
class Transforms:
    """The transforms a scan applies, and their identity (`key`), which enters each transformed
    document's hash: a document indexed through other transforms never counts as unchanged."""

    apply: Transform | None = None
    key: str = ""


def document_hash(data: bytes, transform_key: str = "") -> str:
    """A document's fingerprint: its bytes, and the transforms that rewrote it ('' for none)."""
    digest = hashlib.sha256(data)
    if transform_key:
        digest.update(b"\0transforms:" + transform_key.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FileProblem:
    path: str
    code: str
    message: str
    file: bool = True  # False: a directory, an ignore file or an entry not told apart (not among `skipped`)


@dataclass
class ScanSummary:
    """What a scan did. Its parts add up: `files` (the selected files met) = `indexed` + `unchanged` +
    `skipped`, and `indexed` = `new` + `updated`. `problems` also holds what is not a file (a directory
    that cannot be listed, a symlink loop, an unreadable ignore file): more problems than skipped files."""

    collection: str
    files: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    removed: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    chunks_added: int = 0
    seconds: float = 0.0

    @property
    def indexed(self) -> int:
        return self.new + self.updated

    def to_wire(self) -> dict[str, object]:
        return {"collection": self.collection, "files": self.files, "indexed": self.indexed, "new": self.new,
                "updated": self.updated, "unchanged": self.unchanged, "skipped": self.skipped,
                "removed": self.removed, "chunks_added": self.chunks_added,
                # Bounded, so a tree of a million unreadable files still fits in one reply frame;
                # `qmdctl status` lists the recorded problems.
                "problems": [{"path": p.path, "code": p.code, "message": p.message, "file": p.file}
                             for p in self.problems[:MAX_REPORTED_PROBLEMS]],
                "problems_total": len(self.problems),
                "seconds": round(self.seconds, 3)}


def open_root(collection: CollectionRow) -> ConfinedRoot:
    """The collection's root, refused (RootChanged) if it is not the directory pinned at `collection add`."""
    return ConfinedRoot(collection.root, collection.root_key)


def read_document(root: ConfinedRoot, st: FileStat, chunker: ChunkerConfig,
                  max_bytes: int) -> ParsedFile | FileProblem | None:
    """Read, hash and chunk one file (no transforms). None when it vanished since the walk."""
    read = read_text(root, st, max_bytes)
    return read if read is None or isinstance(read, FileProblem) else parse_document(st, *read, chunker)


def read_text(root: ConfinedRoot, st: FileStat, max_bytes: int) -> tuple[bytes, str] | FileProblem | None:
    """One file's bytes and text. None when it vanished since the walk."""
    try:
        data = root.read(st.relpath, max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except EscapesRoot as exc:  # a symlink swapped in since the walk
        return FileProblem(st.relpath, "outside_root", str(exc))
    except FileTooLarge as exc:
        return FileProblem(st.relpath, "too_large", str(exc))
    except NotRegularFile as exc:
        return FileProblem(st.relpath, "not_regular", str(exc))
    except OSError as exc:
        return FileProblem(st.relpath, "unreadable", exc.strerror or str(exc))
    decoded = decode_text(data)
    if isinstance(decoded, Undecodable):
        return FileProblem(st.relpath, decoded.code, decoded.message)
    return data, decoded.text


def parse_document(st: FileStat, data: bytes, text: str, chunker: ChunkerConfig,
                   transform_key: str = "") -> ParsedFile:
    """Hash and chunk a document's text (already transformed when `transform_key` names the transforms)."""
    chunks = chunk_markdown(text, chunker)
    title = extract_title(text, PurePosixPath(st.relpath).stem)
    return ParsedFile(
        path=st.relpath, size=len(data), mtime_ns=st.mtime_ns,
        hash=document_hash(data, transform_key),
        title=title,
        lines=line_count(text),
        chunks=chunks,
        chunk_hashes=[hashlib.sha256(embedding_text(title, c.heading_path, c.text).encode()).hexdigest()
                      for c in chunks])


def _read_group(root: ConfinedRoot, group: list[FileStat], chunker: ChunkerConfig, max_bytes: int,
                transforms: Transforms) -> list[ParsedFile | FileProblem | None]:
    """Read a group of files, transform their texts in one call, and parse them."""
    reads = [read_text(root, st, max_bytes) for st in group]
    documents = [(st.relpath, r[1]) for st, r in zip(group, reads, strict=True) if isinstance(r, tuple)]
    assert transforms.apply is not None
    rewritten = iter(transforms.apply(documents) if documents else [])
    parsed: list[ParsedFile | FileProblem | None] = []
    for st, read in zip(group, reads, strict=True):
        if not isinstance(read, tuple):
            parsed.append(read)
            continue
        # A text some transform of the chain could not make is kept without the chain's key: not the
        # chain's output, so it is made again once the chain changes.
        text, complete = next(rewritten)
        parsed.append(parse_document(st, read[0], text, chunker, transforms.key if complete else ""))
    return parsed


def _groups(files: list[FileStat], transforms: Transforms) -> Iterator[list[FileStat]]:
    """One file at a time without transforms; with them, groups of up to TRANSFORM_GROUP_FILES files and
    about TRANSFORM_GROUP_BYTES (a larger file goes alone)."""
    if transforms.apply is None:
        yield from ([f] for f in files)
        return
    group: list[FileStat] = []
    size = 0
    for f in files:
        if group and (len(group) >= TRANSFORM_GROUP_FILES or size + f.size > TRANSFORM_GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(f)
        size += f.size
    if group:
        yield group


def scan_collection(conn: sqlite3.Connection, collection: CollectionRow, config: WalkConfig, *,
                    batch_files: int, chunker: ChunkerConfig, on_batch: BatchSink,
                    on_progress: ProgressSink, checkpoint: Callable[[], None] = lambda: None,
                    transforms: Transforms = Transforms()) -> ScanSummary:
    """`checkpoint` is called between files; it raises to abandon the scan (trio cancellation). When
    the transforms are not those the collection was indexed with, every file is read again; when the
    chunking rules are not, every document is cut again (its vectors are kept where a chunk's text is)."""
    started = time.monotonic()
    summary = ScanSummary(collection.name)
    with open_root(collection) as root:
        if collection.root_key is None:
            docs.pin_root(conn, collection.id, root.key)
        walk = walk_collection(root, config)
        summary.problems.extend(FileProblem(p.relpath, p.code, p.message, p.file) for p in walk.problems)
        summary.skipped = sum(p.file for p in walk.problems)
        summary.files = len(walk.files) + summary.skipped
        states = docs.doc_states(conn, collection.id)
        seen = {f.relpath for f in walk.files}
        removals = [path for path in states if path not in seen]
        writer = _BatchWriter(conn, collection, summary, batch_files, on_batch)
        rechunk = collection.chunk_rules != CHUNK_RULES
        reread = transforms.key != collection.transform_key or rechunk
        _index_files(writer, root, walk.files, states, removals, chunker, config.max_file_bytes, on_progress,
                     checkpoint, transforms, reread=reread, rechunk=rechunk)
        if reread:
            docs.set_indexed_with(conn, collection.id, transforms.key, CHUNK_RULES)
    docs.replace_problems(conn, collection.id, [(p.path, p.code, p.message) for p in summary.problems])
    summary.seconds = time.monotonic() - started
    return summary


def update_paths(conn: sqlite3.Connection, collection: CollectionRow, path_filter: PathFilter, relpaths: list[str],
                 *, max_file_bytes: int, batch_files: int, chunker: ChunkerConfig,
                 on_batch: BatchSink, transforms: Transforms = Transforms()) -> ScanSummary | None:
    """Bring just these paths up to date: the watcher's way, a stat per changed path instead of a walk.

    Returns None when only a walk can decide (a directory appeared, a symlink, an ignore file
    changed, the transforms changed): the caller rescans the collection, which costs a stat per file.
    """
    if transforms.key != collection.transform_key or collection.chunk_rules != CHUNK_RULES:
        return None
    with open_root(collection) as root:
        return _update_paths(conn, root, collection, path_filter, relpaths, max_file_bytes=max_file_bytes,
                             batch_files=batch_files, chunker=chunker, on_batch=on_batch, transforms=transforms)


def _update_paths(conn: sqlite3.Connection, root: ConfinedRoot, collection: CollectionRow, path_filter: PathFilter,
                  relpaths: list[str], *, max_file_bytes: int, batch_files: int, chunker: ChunkerConfig,
                  on_batch: BatchSink, transforms: Transforms) -> ScanSummary | None:
    started = time.monotonic()
    if _links_repaired(conn, root, collection.id) or _links_changed(conn, root, collection.id, relpaths):
        return None
    summary = ScanSummary(collection.name)
    present: list[FileStat] = []
    gone: list[str] = []
    for relpath in sorted(set(relpaths)):
        if relpath.rpartition("/")[2] in IGNORE_FILES:
            return None
        try:
            st = root.lstat(relpath)
        except (FileNotFoundError, NotADirectoryError):
            gone.append(relpath)  # a file, or a whole directory deleted or moved away
            continue
        except EscapesRoot:
            return None  # a directory on the way became a symlink: the walk decides (and reports) it
        except OSError as exc:
            summary.problems.append(FileProblem(relpath, "unreadable", exc.strerror or str(exc)))
            gone.append(relpath)
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return None
        if not path_filter.included(relpath):
            gone.append(relpath)  # renamed to an unselected name, or newly ignored
            continue
        admitted = admit_file(relpath, st, max_file_bytes)
        if isinstance(admitted, FileStat):
            present.append(admitted)
        else:
            summary.problems.append(FileProblem(admitted.relpath, admitted.code, admitted.message))
            summary.skipped += 1
            gone.append(relpath)
    states = docs.doc_states_for(conn, collection.id, [f.relpath for f in present])
    removals = docs.paths_under(conn, collection.id, gone)
    summary.files = len(present) + summary.skipped
    writer = _BatchWriter(conn, collection, summary, batch_files, on_batch)
    # Read again even where the stat is the one indexed: the watcher says the file changed, and a stat
    # misses a rewrite that kept its size and time (cp -p, rsync -t) or a file made unreadable (chmod).
    _index_files(writer, root, present, states, removals, chunker, max_file_bytes, lambda _: None, lambda: None,
                 transforms, reread=True)
    problems = [(p.path, p.code, p.message) for p in summary.problems]
    checked = [*(f.relpath for f in present), *gone]
    # Nothing to write for a change to a file that is not indexed (an editor's temp file): no
    # write, no WAL change, no event for a watcher of a tree that holds the index itself.
    if problems or summary.indexed or summary.removed or docs.has_problems(conn, collection.id, checked):
        docs.update_problems(conn, collection.id, checked, problems)
    summary.seconds = time.monotonic() - started
    return summary


def _links_repaired(conn: sqlite3.Connection, root: ConfinedRoot, collection_id: int) -> bool:
    """Whether a link the last scan found broken leads somewhere now: its target's creation is the
    change the watcher saw, the link itself did not change, and only a walk indexes a link. A stat per
    broken link (at most LINKS_CHECKED) a change."""
    for relpath in docs.problem_paths(conn, collection_id, BROKEN_LINK, LINKS_CHECKED):
        try:
            root.stat(relpath)
        except OSError:  # still broken, gone, or now leading outside the root (EscapesRoot): the walk reports it
            continue
        return True
    return False


def _links_changed(conn: sqlite3.Connection, root: ConfinedRoot, collection_id: int, relpaths: list[str]) -> bool:
    """Whether a symlink leads to one of these changed files, and so changed with it: the watcher sees
    the file's change, not the link's. A link holds what its file held, so only the documents with the
    same content are looked at (their copies, usually none), a stat or two each."""
    for relpath, size, mtime_ns in docs.same_content(conn, collection_id, relpaths):
        try:
            if not stat.S_ISLNK(root.lstat(relpath).st_mode):
                continue
            st = root.stat(relpath)
        except OSError:  # the link or its file gone: it is, or leads, nowhere now
            return True
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return True
    return False


class _BatchWriter:
    """Collects parsed, touched and removed files and writes them as one transaction per batch."""

    def __init__(self, conn: sqlite3.Connection, collection: CollectionRow, summary: ScanSummary,
                 batch_files: int, on_batch: BatchSink) -> None:
        self.conn = conn
        self.collection = collection
        self.summary = summary
        self.batch_files = batch_files
        self.on_batch = on_batch
        self.parsed: list[ParsedFile] = []
        self.touched: list[tuple[str, int, int]] = []
        self.removals: list[str] = []

    def full(self) -> bool:
        return len(self.parsed) + len(self.touched) + len(self.removals) >= self.batch_files

    def flush(self) -> None:
        if not (self.parsed or self.touched or self.removals):
            return  # a no-change rescan writes nothing (but its problem list)
        added, removed = docs.write_batch(self.conn, self.collection.id, self.parsed, self.touched, self.removals)
        self.summary.chunks_added += len(added)
        self.summary.removed += len(self.removals)
        if added or removed:
            self.on_batch(added, removed)
        self.parsed.clear()
        self.touched.clear()
        self.removals.clear()


def _index_files(writer: _BatchWriter, root: ConfinedRoot, files: list[FileStat], states: dict[str, DocState],
                 removals: list[str], chunker: ChunkerConfig, max_bytes: int, on_progress: ProgressSink,
                 checkpoint: Callable[[], None], transforms: Transforms, *, reread: bool = False,
                 rechunk: bool = False) -> None:
    """Read, hash and chunk the files whose stat differs from SQLite's (all of them when `reread`);
    write them (all, even with the same content, when `rechunk`: cut by other rules) and the removals."""
    summary = writer.summary
    writer.removals.extend(removals)
    candidates = files if reread else [
        f for f in files if (s := states.get(f.relpath)) is None or s.size != f.size or s.mtime_ns != f.mtime_ns]
    summary.unchanged = len(files) - len(candidates)
    done = 0
    for group in _groups(candidates, transforms):
        checkpoint()
        results = ([read_document(root, group[0], chunker, max_bytes)] if transforms.apply is None
                   else _read_group(root, group, chunker, max_bytes, transforms))
        for st, result in zip(group, results, strict=True):
            _take(writer, st, states.get(st.relpath), result, rechunk)
        done += len(group)
        if writer.full():
            writer.flush()
            on_progress({"collection": summary.collection, "done": done, "total": len(candidates)})
    writer.flush()
    on_progress({"collection": summary.collection, "done": done, "total": len(candidates)})


def _take(writer: _BatchWriter, st: FileStat, old: DocState | None, result: ParsedFile | FileProblem | None,
          rechunk: bool = False) -> None:
    """One read file into the batch: new or changed, touched (same content), a problem, or gone."""
    summary = writer.summary
    if result is None:
        summary.files -= 1  # gone since the walk: no longer a file of the collection
        if old is not None:
            writer.removals.append(st.relpath)
    elif isinstance(result, FileProblem):
        summary.problems.append(result)
        summary.skipped += 1
        if old is not None:  # never keep serving content we can no longer read
            writer.removals.append(st.relpath)
    elif old is not None and old.hash == result.hash and not rechunk:
        if (old.size, old.mtime_ns) != (st.size, st.mtime_ns):  # else nothing to write: a re-read, the same
            writer.touched.append((st.relpath, st.size, st.mtime_ns))
        summary.unchanged += 1
    elif old is not None:
        writer.parsed.append(result)
        summary.updated += 1
    else:
        writer.parsed.append(result)
        summary.new += 1


def walk_config(masks: Sequence[str], excludes: Sequence[str], max_file_bytes: int) -> WalkConfig:
    """The walker's configuration, with bad globs turned into a typed error instead of a crash."""
    try:
        return WalkConfig(masks=tuple(masks), excludes=tuple(excludes), max_file_bytes=max_file_bytes)
    except ValueError as exc:
        raise QmddError(ErrorCode.INVALID_INPUT, f"bad --mask or --exclude pattern: {exc}") from None


def selected_files(collection: CollectionRow, max_file_bytes: int) -> int | None:
    """How many files a scan of `collection` selects (None when its root cannot be walked now)."""
    try:
        return len(walk_collection(Path(collection.root),
                                   walk_config(collection.masks, collection.excludes, max_file_bytes)).files)
    except OSError:
        return None
