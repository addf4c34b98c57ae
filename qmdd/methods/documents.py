"""Reading documents: get, multi_get, ls. Reads from disk happen here, always confined to indexed roots."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio

from qmdd.actors.collection_rules import filesystem_error
from qmdd.decoding import Undecodable, decode_text, line_count
from qmdd.methods.call import Call, MethodHandler, stream_long_list
from qmdd.methods.collections import list_collections
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.safefiles import ConfinedRoot, EscapesRoot
from qmdd.search.pipeline import ContextIndex, cpu_limiter
from qmdd.search.targets import Glob, docid_prefix, is_glob, resolve_target, spellings, split_line_suffix
from qmdd.store import documents as docs
from qmdd.store import lookups
from qmdd.store.contexts import list_contexts
from qmdd.store.documents import CollectionRow, DocRow

T = TypeVar("T")
# What a name that means nothing gets: multi_get reports it and goes on with the others.
_MISSES = (ErrorCode.NOT_FOUND, ErrorCode.COLLECTION_NOT_FOUND)


def methods(s: Services) -> dict[str, MethodHandler]:
    return {"get": partial(get, s), "multi_get": partial(multi_get, s), "ls": partial(ls, s)}


def read_text(doc: DocRow, max_bytes: int) -> str:
    """Read a document from disk, never outside its collection root (whatever is swapped in meanwhile),
    never from a root that is not the one added, never blocking on a FIFO."""
    try:
        root = ConfinedRoot(doc.root, doc.root_key)
    except OSError as exc:
        raise filesystem_error(exc, f"root of collection {doc.collection!r} ({doc.root})") from None
    try:
        with root:
            data = root.read(doc.path, max_bytes)
    except EscapesRoot as exc:
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"{doc.uri}: {exc}",
                        hints=("A symlink leading outside the collection is never followed.",)) from None
    except (FileNotFoundError, NotADirectoryError):
        raise QmddError(ErrorCode.NOT_FOUND, f"{doc.uri} was deleted since it was indexed",
                        hints=("Run `qmdctl update`.",)) from None
    except OSError as exc:
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"{doc.uri}: {exc.strerror or exc}") from None
    decoded = decode_text(data)  # as the indexer decoded it: the same text, whatever the encoding
    if isinstance(decoded, Undecodable):
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"{doc.uri} is no longer text: {decoded.message}")
    return decoded.text


def check_lines(from_line: int | None, max_lines: int | None) -> None:
    """Lines are numbered from 1, and a slice holds one or more: every door (a flag, `path:10:5`, REST's
    query parameters, MCP's arguments) refuses the rest alike."""
    if from_line is not None and from_line < 1:
        raise QmddError(ErrorCode.INVALID_INPUT, f"the first line is 1, not {from_line}",
                        hints=("Lines are numbered from 1: `path:1` is the first.",))
    if max_lines is not None and max_lines < 1:
        raise QmddError(ErrorCode.INVALID_INPUT, f"a slice holds 1 line or more, not {max_lines}",
                        hints=("Leave the line count out for the rest of the file.",))


def slice_lines(text: str, from_line: int | None, max_lines: int | None) -> tuple[str, int, int]:
    """(body, first line number, lines left after the slice). The body is those lines as the file has
    them, each with its newline: a slice whose last line is empty ends in "\n\n", one that is all of a
    file is the file, and "" is no line at all while "\n" is one empty line."""
    lines = text.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    start = max(from_line or 1, 1)
    end = len(lines) if max_lines is None else min(len(lines), start - 1 + max(max_lines, 0))
    chosen = lines[start - 1:end]
    newline_after_last = end < len(lines) or ends_with_newline
    body = "\n".join(chosen) + ("\n" if chosen and newline_after_last else "")
    return body, start, max(len(lines) - end, 0)


async def read(s: Services, doc: DocRow) -> str:
    return await trio.to_thread.run_sync(read_text, doc, s.config.max_file_bytes, limiter=s.files)


async def attach_bodies(s: Services, answer: dict[str, Any], rows: list[DocRow]) -> None:
    """`--full` search results: each hit's whole document as `body`."""
    for result, doc in zip(answer["results"], rows, strict=True):
        try:
            result["body"] = await read(s, doc)
        except QmddError as exc:  # one vanished or unreadable hit must not fail the search
            result["body"] = ""
            result["error"] = exc.to_wire()


def first_spelling(target: str, attempt: Callable[[str], T]) -> T:
    """`attempt` on the target as written, then percent-decoded when it is a qmd:// URI with escapes
    (see `spellings`): the first that finds something; when none does, the error of the last."""
    *literal, last = spellings(target)
    for spelling in literal:
        try:
            return attempt(spelling)
        except QmddError as exc:
            if exc.code not in _MISSES:
                raise
    return attempt(last)


def find_document(s: Services, target: str, cwd: str | None) -> DocRow:
    """The one document a target names: a #docid prefix, a qmd:// URI (percent-encoded or not) or path
    (relative to `cwd`), or a unique path suffix inside the collection named (or anywhere, when none is)."""
    return first_spelling(target, lambda spelling: _find_document(s, spelling, cwd))


def _find_document(s: Services, target: str, cwd: str | None) -> DocRow:
    conn = s.reader
    prefix = docid_prefix(target)
    if prefix:
        found = lookups.docs_with_docid_prefix(conn, prefix, limit=6)
        if not found:
            raise QmddError(ErrorCode.NOT_FOUND, f"no document with docid #{prefix}")
        if len({d.hash for d in found}) > 1:
            raise QmddError(ErrorCode.NOT_FOUND, f"docid #{prefix} is ambiguous",
                            hints=("Give more hex digits of the docid, or the path.",),
                            details={"candidates": [d.uri for d in found]})
        return found[0]
    resolved = resolve_target(target, docs.list_collections(conn), cwd)
    collection = resolved.collection
    if collection is not None:
        doc = lookups.doc_at_path(conn, collection.id, resolved.path)
        if doc is not None:
            return doc
        if resolved.exact:
            raise QmddError(ErrorCode.NOT_FOUND, f"no document {target.strip()!r} is indexed",
                            hints=(f"`qmdctl ls qmd://{collection.name}/` lists what the collection holds.",))
    # Last resort, as qmd does: a unique path suffix (e.g. just the file name), never outside the
    # collection the target named.
    suffix = (resolved.path if collection else target).strip("/")
    if suffix:
        found = lookups.docs_with_path_suffix(conn, suffix, collection.id if collection else None, limit=6)
        if len(found) == 1:
            return found[0]
        if found:
            raise QmddError(ErrorCode.NOT_FOUND, f"{target!r} is ambiguous",
                            hints=("Name it as qmd://collection/path.",),
                            details={"candidates": [d.uri for d in found]})
    raise QmddError(ErrorCode.NOT_FOUND, f"no indexed document matches {target!r}")


async def get(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    target, from_line, count = split_line_suffix(params["target"])
    from_line = params["from_line"] if params["from_line"] is not None else from_line
    count = params["max_lines"] if params["max_lines"] is not None else count
    check_lines(from_line, count)
    doc = find_document(s, target, params["cwd"])
    text = await read(s, doc)
    body, first, remaining = slice_lines(text, from_line, count)
    if from_line is not None and from_line > 1 and not body:
        lines = line_count(text)
        raise QmddError(ErrorCode.INVALID_INPUT, f"line {from_line} is past the end of {doc.uri} ({lines} lines)",
                        hints=(f"Ask for a line from 1 to {lines}; `lines_after` in an answer counts what is left.",),
                        details={"lines": lines})
    context = ContextIndex(list_contexts(s.reader)).for_path(doc.collection_id, doc.path)
    return {"file": doc.uri, "docid": doc.docid, "title": doc.title, "context": context,
            "collection": doc.collection, "path": doc.path, "from_line": first,
            "lines_after": remaining, "body": body}


async def _wanted(s: Services, patterns: list[str], cwd: str | None) -> tuple[list[DocRow], list[QmddError]]:
    """The documents the patterns name (globs, or comma-separated targets), each once, in order; and,
    as qmd reports them, what names nothing (a missing file, a glob that matches none)."""
    wanted: dict[int, DocRow] = {}
    misses: list[QmddError] = []
    for pattern in patterns:
        for part in ([pattern] if is_glob(pattern) else [p for p in pattern.split(",") if p.strip()]):
            if is_glob(part):
                glob = Glob(part.strip())
                # Matching many documents is CPU work: in a thread, or other clients would wait.
                matches = await trio.to_thread.run_sync(lookups.docs_matching, s.reader, glob.literal_prefix,
                                                        glob.selects, limiter=cpu_limiter())
                if not matches:
                    misses.append(QmddError(ErrorCode.NOT_FOUND, f"No files matched pattern: {part.strip()}",
                                            hints=("`qmdctl ls` lists the collections and their files.",)))
            else:
                try:
                    matches = [find_document(s, part.strip(), cwd)]
                except QmddError as exc:
                    if exc.code not in _MISSES:
                        raise
                    misses.append(exc)
                    continue
            for doc in matches:
                wanted.setdefault(doc.id, doc)
    return list(wanted.values()), misses


def _nothing_found(patterns: list[str], misses: list[QmddError]) -> QmddError:
    if len(misses) == 1:
        return misses[0]
    return QmddError(ErrorCode.NOT_FOUND, f"nothing matches {', '.join(patterns)}",
                     hints=("`qmdctl ls` lists the collections and their files.",),
                     details={"missing": [miss.message for miss in misses]})


async def multi_get(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    """Streams a `missing` item (an error object) for each name that means nothing, then a `result` item
    per document; fails with NOT_FOUND only when no document at all is found."""
    if not any(pattern.replace(",", "").strip() for pattern in params["patterns"]):
        raise QmddError(ErrorCode.INVALID_INPUT, "the pattern is empty: it names no file",
                        hints=("Name files by a glob (notes/2026-*.md) or as a comma-separated list of paths.",))
    max_bytes, max_lines, max_files = params["max_bytes"], params["max_lines"], params["max_files"]
    check_lines(None, max_lines)
    if max_files is not None and max_files < 1:
        raise QmddError(ErrorCode.INVALID_INPUT, f"max_files must be 1 or more, got {max_files}")
    matched, misses = await _wanted(s, params["patterns"], params["cwd"])
    if not matched:
        raise _nothing_found(params["patterns"], misses)
    wanted = matched[:max_files]  # the rest are counted, not read
    more = len(matched) - len(wanted)
    for miss in misses:
        await call.emit("missing", miss.to_wire())
    contexts = ContextIndex(list_contexts(s.reader))
    sent = skipped = 0
    for doc in wanted:
        entry: dict[str, Any] = {"file": doc.uri, "docid": doc.docid, "title": doc.title,
                                 "context": contexts.for_path(doc.collection_id, doc.path)}
        if doc.size > max_bytes:
            entry.update(skipped=True, reason=f"File too large ({_sizes(doc.size, max_bytes)}). "
                         f"Use 'qmdctl get {doc.uri}' to retrieve.")
            skipped += 1
        else:
            try:
                text = await read(s, doc)
            except QmddError as exc:
                entry.update(skipped=True, reason=exc.message)
                skipped += 1
            else:
                body, _, remaining = slice_lines(text, None, max_lines)
                if remaining and max_lines is not None:
                    # qmd's marker, in the body as qmd has it; `lines_after` lets a reader show it apart.
                    body = body.removesuffix("\n") + f"\n\n[... truncated {remaining} more lines]"
                    entry["lines_after"] = remaining
                entry["body"] = body
                sent += 1
        await call.emit("result", entry)
    return {"documents": sent, "skipped": skipped, "missing": len(misses), "more": more}


def _listing_target(target: str, collections: list[CollectionRow], cwd: str | None
                    ) -> tuple[CollectionRow, str, bool]:
    """(collection, path, whether the path is a prefix) that `ls` lists. As qmd: qmd://c/prefix, or
    c/prefix where c is always a collection name, the prefix kept as written (`2026_06` also takes
    `2026_06_01.md`; `dir/` only what is inside dir). Beyond qmd, a filesystem path (/..., ~..., ./...)
    inside a collection: that folder or file."""
    text = target.strip()
    if text.startswith(("/", "~", "./", "../")) or text in (".", ".."):
        resolved = resolve_target(text, collections, cwd)
        if resolved.collection is None:
            raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"{text!r} is not in any collection",
                            hints=("Run `qmdctl ls` to see available collections.",))
        return resolved.collection, resolved.path, False
    rest = text.split("//", 1)[1] if text.startswith(("qmd://", "//")) else text
    name, _, prefix = rest.lstrip("/").partition("/")
    by_name = {c.name: c for c in collections}
    if name not in by_name:
        raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"Collection not found: {name}",
                        hints=("Run `qmdctl ls` to see available collections.",))
    return by_name[name], prefix.lstrip("/"), True


def _listing(s: Services, target: str, cwd: str | None, after: str | None = None, limit: int | None = None
             ) -> tuple[CollectionRow, str, list[DocRow]]:
    """What `ls` lists; with `limit`, one page of it: the first `limit` paths after `after` (a page is one
    index range, so paging through a big collection never reads it whole)."""
    collection, path, is_prefix = _listing_target(target, docs.list_collections(s.reader), cwd)
    if is_prefix:
        found = lookups.docs_with_path_prefix(s.reader, collection.id, path, after or "",
                                              -1 if limit is None else limit)
    else:
        found = lookups.docs_under(s.reader, collection.id, path)
    if path and not found and after is None:
        raise QmddError(ErrorCode.NOT_FOUND, f"No files found under qmd://{collection.name}/{path}",
                        hints=(f"`qmdctl ls {collection.name}` lists the whole collection.",))
    return collection, path, found


async def ls(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if not params["target"]:
        return {"collections": await list_collections(s)}
    collection, prefix, found = first_spelling(
        params["target"], lambda t: _listing(s, t, params["cwd"], params["after"], params["limit"]))
    answer = {"collection": collection.name, "prefix": prefix,
              "files": [{"file": d.uri, "path": d.path, "size": d.size, "mtime": d.mtime_ns / 1e9,
                         "docid": d.docid, "title": d.title} for d in found]}
    await stream_long_list(call, answer, "files")
    return answer


def _sizes(size: int, limit: int) -> str:
    """qmd's "(12KB > 10KB)", in bytes below a KB, where qmd said "(0KB > 0KB)"."""
    return f"{size // 1024}KB > {limit // 1024}KB" if limit >= 1024 else f"{size:,} bytes > {limit:,} bytes"
