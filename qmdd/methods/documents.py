"""Reading documents: get, multi_get, ls. Reads from disk happen here, always confined to indexed roots."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from qmdd.actors.indexer import filesystem_error
from qmdd.methods.call import Call, MethodHandler, stream_long_list
from qmdd.methods.collections import list_collections
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.safefiles import ConfinedRoot, EscapesRoot
from qmdd.search.pipeline import ContextIndex, cpu_limiter
from qmdd.search.targets import Glob, docid_prefix, is_glob, resolve_target, split_line_suffix
from qmdd.store import documents as docs
from qmdd.store import lookups
from qmdd.store.contexts import list_contexts
from qmdd.store.documents import DocRow


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
    try:
        return data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"{doc.uri} is no longer valid UTF-8") from None


def slice_lines(text: str, from_line: int | None, max_lines: int | None) -> tuple[str, int, int]:
    """(body, first line number, lines left after the slice)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    start = max(from_line or 1, 1)
    end = len(lines) if max_lines is None else min(len(lines), start - 1 + max(max_lines, 0))
    return "\n".join(lines[start - 1:end]), start, max(len(lines) - end, 0)


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


def find_document(s: Services, target: str, cwd: str | None) -> DocRow:
    """The one document a target names: a #docid prefix, a qmd:// URI or path (relative to `cwd`), or a
    unique path suffix inside the collection named (or anywhere, when none is)."""
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
    doc = find_document(s, target, params["cwd"])
    text = await read(s, doc)
    body, first, remaining = slice_lines(text, from_line, count)
    context = ContextIndex(list_contexts(s.reader)).for_path(doc.collection_id, doc.path)
    return {"file": doc.uri, "docid": doc.docid, "title": doc.title, "context": context,
            "collection": doc.collection, "path": doc.path, "from_line": first,
            "lines_after": remaining, "body": body}


async def _wanted(s: Services, patterns: list[str], cwd: str | None) -> list[DocRow]:
    """The documents the patterns name (globs, or comma-separated targets), each once, in order."""
    wanted: dict[int, DocRow] = {}
    for pattern in patterns:
        for part in ([pattern] if is_glob(pattern) else [p for p in pattern.split(",") if p.strip()]):
            if is_glob(part):
                glob = Glob(part.strip())
                # Matching many documents is CPU work: in a thread, or other clients would wait.
                matches = await trio.to_thread.run_sync(lookups.docs_matching, s.reader, glob.literal_prefix,
                                                        glob.selects, limiter=cpu_limiter())
            else:
                matches = [find_document(s, part.strip(), cwd)]
            for doc in matches:
                wanted.setdefault(doc.id, doc)
    return list(wanted.values())


async def multi_get(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    wanted = await _wanted(s, params["patterns"], params["cwd"])
    contexts = ContextIndex(list_contexts(s.reader))
    max_bytes, max_lines = params["max_bytes"], params["max_lines"]
    sent = skipped = 0
    for doc in wanted:
        entry: dict[str, Any] = {"file": doc.uri, "docid": doc.docid, "title": doc.title,
                                 "context": contexts.for_path(doc.collection_id, doc.path)}
        if doc.size > max_bytes:
            entry.update(skipped=True, reason=f"File too large ({doc.size // 1024}KB > {max_bytes // 1024}KB). "
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
                    body += f"\n\n[... truncated {remaining} more lines]"
                entry["body"] = body
                sent += 1
        await call.emit("result", entry)
    if not wanted:
        raise QmddError(ErrorCode.NOT_FOUND, f"nothing matches {', '.join(params['patterns'])}")
    return {"documents": sent, "skipped": skipped}


async def ls(s: Services, params: dict[str, Any], call: Call) -> dict[str, Any]:
    if not params["target"]:
        return {"collections": list_collections(s)}
    resolved = resolve_target(params["target"], docs.list_collections(s.reader), params["cwd"])
    if resolved.collection is None:
        raise QmddError(ErrorCode.COLLECTION_NOT_FOUND, f"{params['target']!r} is not in any collection")
    prefix = resolved.path.strip("/")
    answer = {"collection": resolved.collection.name, "prefix": prefix,
              "files": [{"file": d.uri, "path": d.path, "size": d.size, "mtime": d.mtime_ns / 1e9,
                         "docid": d.docid, "title": d.title}
                        for d in lookups.docs_under(s.reader, resolved.collection.id, prefix)]}
    await stream_long_list(call, answer, "files")
    return answer
