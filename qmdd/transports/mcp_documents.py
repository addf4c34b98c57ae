"""What the MCP door says about documents, in the shapes qmd's MCP server uses, so an agent written for
qmd reads qmdd the same way: `resource` content blocks (qmd://collection/path, text/markdown, "N: "
line numbers, a context header), a browsable, paginated `resources/list`, and error hints that name
MCP tools rather than `qmdctl` commands the agent cannot run.

qmd also puts `name` and `title` into its resource blocks; the spec's ResourceContents has no such
fields, and the SDK sends every result through the protocol version's schema, which drops them. The
structured content carries both (`file`, `title`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, EmbeddedResource, ListResourcesResult, Resource, TextContent, TextResourceContents

from qmdd.methods.call import whole
from qmdd.methods.table import MethodTable, invoke
from qmdd.protocol.errors import QmddError

MIME = "text/markdown"
PAGE_SIZE = 100
"""Documents per resources/list page: a host that pages through a large index asks often, but never
waits long for one answer."""

RESOURCE_NOT_FOUND = -32002
"""A missing resource, in protocol versions up to 2025-11-25 (SEP-2164 moved it to -32602 after)."""
LAST_VERSION_WITH_RESOURCE_NOT_FOUND = "2025-11-25"

# Hints are written for the command line. Inside MCP, what a tool or request does is named instead;
# what only the user can do stays a `qmdctl` command, marked as theirs. Each (pattern, replacement).
_MCP_WORDING: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"Check the (?:options and )?arguments against `qmdctl COMMAND --help`\.",
     "Check the arguments against the tool's inputSchema in tools/list."),
    (r"Run `qmdctl ls` to see indexed files, or `qmdctl search` to find one\.",
     "Find the document with the `query` or `search` tool, or browse them with resources/list."),
    (r"`qmdctl ls (qmd://[^`]*)` lists what the collection holds\.",
     r"resources/list lists the documents (\1...), or find one with the `query` or `search` tool."),
    (r"Run `qmdctl collection list` to see the collections\.",
     "Call the `status` tool to see the collections."),
    (r"\s*Use 'qmdctl get [^']*' to retrieve\.", ""),
    (r"which `qmdctl status` shows", "which the `status` tool shows"),
))
_USER_COMMAND = re.compile(r"`qmdctl [^`]+`")


def for_mcp(text: str) -> str:
    """A hint or message reworded for an agent on MCP (see _MCP_WORDING)."""
    for pattern, replacement in _MCP_WORDING:
        text = pattern.sub(replacement, text)
    if _USER_COMMAND.search(text):
        text += " (a command for the user: no MCP tool does it)"
    return text


def error_text(err: QmddError) -> str:
    """A typed error as a tool error's text: the stable code, the message and the recovery hints."""
    hints = "".join(f"\nhint: {for_mcp(h)}" for h in err.hints)
    return f"{err.code}: {for_mcp(err.message)}{hints}"


def warning_texts(warnings: Iterable[dict[str, Any]]) -> list[str]:
    return [f"{w['code']}: {for_mcp(w['message'])}" + "".join(f" hint: {for_mcp(h)}" for h in w.get("hints", ()))
            for w in warnings]


def display_path(uri: str) -> str:
    """qmd's name for a document: collection/path (its qmd:// URI without the scheme)."""
    return uri.removeprefix("qmd://")


def qmd_uri(uri: str) -> str:
    """A document's URI with each path segment percent-encoded as qmd (encodeURIComponent) does."""
    return "qmd://" + "/".join(quote(segment, safe="!~*'()") for segment in display_path(uri).split("/"))


def add_line_numbers(text: str, start: int = 1) -> str:
    """qmd's `N: content` numbering, every line of the text (a trailing empty one included)."""
    return "\n".join(f"{start + i}: {line}" for i, line in enumerate(text.split("\n")))


def resource_block(uri: str, body: str, context: str | None, *, start_line: int = 1,
                   line_numbers: bool = True) -> EmbeddedResource:
    """A document as qmd's get/multi_get put it in `content`: a resource block whose text is the
    (line-numbered) body under the document's context."""
    text = add_line_numbers(body, start_line) if line_numbers else body
    if context:
        text = f"<!-- Context: {context} -->\n\n{text}"
    return EmbeddedResource(resource=TextResourceContents(uri=qmd_uri(uri), mime_type=MIME, text=text))


def skipped_block(uri: str, reason: str) -> TextContent:
    name = display_path(uri)
    return TextContent(text=f"[SKIPPED: {name} - {for_mcp(reason).rstrip('.')}. "
                            f"Use 'get' with file=\"{name}\" to retrieve.]")


def _cursor(collection: str, last_path: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([collection, last_path]).encode()).decode()


def _position(cursor: str | None) -> tuple[str, str | None]:
    """Where a page starts: (collection name, the last path of it already listed, or None)."""
    if cursor is None:
        return "", None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, RecursionError):  # not base64, not JSON, or JSON nested to no end
        position = None
    if isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position):
        return position[0], position[1]
    raise MCPError(INVALID_PARAMS, "Invalid cursor: pass back a nextCursor from resources/list unchanged",
                   data={"cursor": cursor[:200]})


async def list_documents(table: MethodTable, cursor: str | None) -> ListResourcesResult:
    """One page of the indexed documents, collections in name order and each in path order. The cursor
    is (collection, last path listed): a page is one range of the index however far in it starts, and
    a document added or removed between pages neither repeats nor hides another."""
    start, after = _position(cursor)
    collections, _ = await invoke(table, "collection.list", {})
    names = sorted(c["name"] for c in collections if c["name"] >= start)
    page: list[Resource] = []
    for name in names:
        wanted = PAGE_SIZE + 1 - len(page)  # one more than fits: is there a next page?
        answer, items = await invoke(table, "ls", {"target": f"qmd://{name}/", "limit": wanted,
                                                   "after": after if name == start else None})
        files = whole(answer, items)["files"]
        page += [Resource(uri=qmd_uri(f["file"]), name=display_path(f["file"]), title=f["title"] or None,
                          mime_type=MIME, size=f["size"]) for f in files[:PAGE_SIZE - len(page)]]
        if len(files) == wanted:
            # The last path this page took from the collection ("": none, the next page starts it).
            last = files[-2]["path"] if len(files) > 1 else ""
            return ListResourcesResult(resources=page, next_cursor=_cursor(name, last))
    return ListResourcesResult(resources=page)


def not_found_code(protocol_version: str | None) -> int:
    """The JSON-RPC code for a missing resource in the session's protocol version."""
    legacy = protocol_version is not None and protocol_version[:1].isdigit() \
        and protocol_version <= LAST_VERSION_WITH_RESOURCE_NOT_FOUND
    return RESOURCE_NOT_FOUND if legacy else INVALID_PARAMS


ASK_PROMPT = """Answer this question from my local documents (the qmdd MCP server): {question}

1. Call the `query` tool with the question (add `intent` if a word in it could mean several things).
2. Read the best hits with `get` (file = the hit's file, fromLine a little before the hit's line).
3. Answer, citing each source as its qmd:// URI with line numbers; if the documents do not answer
   the question, say so rather than guessing."""
