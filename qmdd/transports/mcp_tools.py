"""The MCP tools and resources qmdd offers agents, on the official SDK's MCPServer.

Each tool validates its arguments (the SDK, from the type hints), calls the same in-daemon method a
`qmdctl` command would, and returns structured content (with an output schema) plus readable text:
for `get` and `multi_get`, qmd's resource blocks (see mcp_documents), so a qmd client reads them as is.
A typed qmdd error becomes a tool error (`isError: true`) whose text carries the stable code and the
recovery hints, so an agent can act on it; the session itself never breaks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ContentBlock,
    ListResourcesResult,
    PaginatedRequestParams,
    TextContent,
    ToolAnnotations,
)
from pydantic import BaseModel, Field, ValidationError

from qmdd import __version__, faults
from qmdd.methods.call import whole
from qmdd.methods.hybrid import MAX_CANDIDATES
from qmdd.methods.table import MethodTable, invoke
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.transports.mcp_documents import (
    ASK_PROMPT,
    MIME,
    error_text,
    for_mcp,
    list_documents,
    not_found_code,
    resource_block,
    skipped_block,
    warning_texts,
)
from qmdd.transports.rest import QMD_ALIASES, qmd_renamed

MAX_RESULTS = 100
MULTI_GET_MAX_BYTES = 64 * 1024  # qmd's default
# Documents one multi_get hands an agent: a glob over a whole collection (9,000 cpp-docs pages) made one
# 80 MB answer, more than any agent reads; the rest are counted, and the agent narrows its pattern.
MULTI_GET_MAX_FILES = 100
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=False)


class Hit(BaseModel):
    docid: str = Field(description="Content-hash document id, e.g. #a1b2c3; `get` accepts it.")
    score: float = Field(description="Relevance 0-1, comparable within one answer.")
    file: str = Field(description="qmd://collection/path of the document.")
    line: int = Field(description="First line of the snippet in the file (1-based).")
    title: str
    context: str | None = Field(None, description="What the user wrote about this part of the collection.")
    snippet: str = Field(description="The best-matching lines, with an @@ -line,count @@ header.")


class SearchResults(BaseModel):
    query: str
    results: list[Hit]
    warnings: list[str] = Field(default_factory=list)


class TypedSearch(BaseModel):
    type: Literal["lex", "vec", "hyde"] = Field(
        description="lex: keywords (BM25); vec: a question or phrase searched by meaning; "
                    "hyde: a hypothetical answer passage, searched by meaning.")
    query: str = Field(min_length=1)


Limit = Annotated[int, Field(ge=1, description=(
    f"Max results (default 10). More than {MAX_RESULTS} returns {MAX_RESULTS}, with a warning saying so."))]
MinScore = Annotated[float, Field(ge=0.0, le=1.0, description="Min relevance 0-1 (default 0).")]
LineNumbers = Annotated[bool, Field(description=(
    "Add line numbers to the text (format: 'N: content'). On by default; false for raw content."))]

CandidateLimit = Annotated[int | None, Field(ge=1, le=MAX_CANDIDATES, description=(
    "Documents taken from each retrieval list before fusion and reranking (default 100; lower is faster "
    "but may miss results)."))]
Intent = Annotated[str | None, Field(description=(
    "Background context to disambiguate the query, e.g. query='performance', intent='web page load times'. "
    "Steers reranking and snippets; does not search on its own."))]

TypedSearches = Annotated[list[TypedSearch] | None, Field(max_length=10, description=(
    "Typed sub-queries, instead of `query`; the first gets twice the weight."))]

PluginNames = Annotated[list[str] | None, Field(
    description="Installed scorer or filter plugins to run on the hits, in order (the user's `qmdctl plugin "
                "list`); a failing plugin is left out and named in `warnings`.")]


class Document(BaseModel):
    file: str
    docid: str
    title: str
    context: str | None = None
    from_line: int = Field(description="Line number of the first line of body.")
    lines_after: int = Field(description="Lines of the file after the returned ones (0: the end was reached).")
    body: str


class MultiDocument(BaseModel):
    file: str
    docid: str
    title: str
    context: str | None = None
    body: str | None = None
    skipped: bool = False
    reason: str | None = None


class MultiGetResult(BaseModel):
    documents: list[MultiDocument]
    more: int = Field(0, description=f"Documents the pattern matched beyond the first {MULTI_GET_MAX_FILES}, "
                      "which are not returned: narrow the pattern to read them.")


def tool_error(err: QmddError) -> ToolError:
    return ToolError(error_text(err))


async def call_tool_method(table: MethodTable, method: str,
                           params: dict[str, Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """A method called for a tool: its typed error becomes a tool error the agent can act on."""
    await faults.pause("mcp.tool")
    try:
        return await invoke(table, method, params)
    except QmddError as err:
        raise tool_error(err) from None


def _hits(answer: dict[str, Any], items: list[tuple[str, Any]]) -> list[Hit]:
    results = whole(answer, items)["results"]
    return [Hit(docid=r["docid"], score=r["score"], file=r["file"], line=r["line"], title=r["title"],
                context=r.get("context"), snippet=r["snippet"]) for r in results]


class QmddServer(MCPServer):
    """The SDK's server with the JSON-RPC errors the spec asks for: an unknown tool or prompt is invalid
    params (-32602), not a tool result or an error without a code."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
        known = tool.parameters.get("properties", {})
        try:  # qmd's names the tool lacks (qmd 1.x's `collection`: a name or a list), as the REST door reads them
            arguments = qmd_renamed(name, arguments or {}, {k: v for k, v in QMD_ALIASES.items() if v in known})
        except QmddError as err:
            raise tool_error(err) from None
        # The SDK drops arguments its schema lacks: a misspelt `collections` would search everything.
        if unknown := sorted(set(arguments) - set(known)):
            raise tool_error(QmddError(ErrorCode.INVALID_INPUT, f"{name}: no argument {', '.join(map(repr, unknown))}",
                                       hints=(f"{name} takes {', '.join(known)}." if known
                                              else f"{name} takes no arguments.",)))
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):  # arguments that fail the input schema
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                     for e in exc.__cause__.errors(include_url=False))
                raise tool_error(QmddError(ErrorCode.INVALID_INPUT, f"{name}: {problems}", hints=(
                    f"Check the arguments against the inputSchema of {name!r} in tools/list.",))) from None
            if isinstance(exc.__cause__, ToolError):  # ours (`call_tool_method`), which the SDK prefixed with
                raise exc.__cause__ from None         # "Error executing tool NAME:": every error starts with its code
            raise

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name}")
        # The SDK raises a bare ValueError for these: answered with code 0, and logged as the server's failure.
        if missing := sorted(a.name for a in prompt.arguments or () if a.required and a.name not in (arguments or {})):
            raise MCPError(INVALID_PARAMS, f"prompt {name!r}: missing argument {', '.join(map(repr, missing))}")
        return await super().get_prompt(name, arguments, context)

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        """A missing document answers the resource-not-found code of the session's protocol version
        (the SDK answers -32602 whatever the version)."""
        try:
            return await super().read_resource(uri, context)
        except ResourceNotFoundError as err:
            code = not_found_code(context.protocol_version if context is not None else None)
            raise MCPError(code, str(err), data={"uri": str(uri)}) from None


def serve_document_list(lowlevel: Any, table: MethodTable) -> None:
    """resources/list answers the indexed documents, a page at a time (MCPServer itself lists only
    fixed resources, all at once): `lowlevel` is the SDK's low-level server under the MCPServer."""
    async def list_resources(ctx: Any, params: PaginatedRequestParams) -> ListResourcesResult:
        return await list_documents(table, params.cursor)

    lowlevel.add_request_handler("resources/list", PaginatedRequestParams, list_resources)


def build_server(table: MethodTable) -> MCPServer:
    server = QmddServer(name="qmdd", title="qmdd: local document search", version=__version__,
                       instructions="qmdd searches the user's local markdown collections.")

    async def run_search(method: str, query: str, limit: int, min_score: float, collections: list[str] | None,
                         plugins: list[str] | None, extra: dict[str, Any]) -> SearchResults:
        capped = [f"LIMIT_CAPPED: limit {limit} is more than one MCP answer holds; at most {MAX_RESULTS} "
                  "results are returned"] if limit > MAX_RESULTS else []
        params = {"query": query, "limit": min(limit, MAX_RESULTS), "min_score": min_score,
                  "collections": collections or None, "plugins": plugins or None, **extra}
        answer, items = await call_tool_method(table, method, params)
        return SearchResults(query=query, results=_hits(answer, items),
                             warnings=capped + warning_texts(answer.get("warnings", ())))

    @server.tool(name="search", annotations=READ_ONLY, description=(
        "Keyword search (BM25) over the user's documents: best for exact words, names, identifiers and "
        "error messages. Words are OR-ed and ranked; CJK works without spaces."))
    async def search(query: str, limit: Limit = 10, minScore: MinScore = 0.0, collections: list[str] | None = None,
                     plugins: PluginNames = None) -> SearchResults:
        return await run_search("search", query, limit, minScore, collections, plugins, {})

    @server.tool(name="vsearch", annotations=READ_ONLY, description=(
        "Semantic search: the document chunks nearest in meaning to the query (needs `qmdctl embed` once)."))
    async def vsearch(query: str, limit: Limit = 10, minScore: MinScore = 0.0, collections: list[str] | None = None,
                      plugins: PluginNames = None) -> SearchResults:
        return await run_search("vsearch", query, limit, minScore, collections, plugins, {})

    @server.tool(name="query", annotations=READ_ONLY, description=(
        "Hybrid search, the best default: keyword and semantic retrieval fused (RRF), then reranked when a "
        "reranker model is configured. Give `query` as plain text, or `searches` as typed sub-queries "
        "(lex = keywords, vec = meaning, hyde = a hypothetical answer passage)."))
    async def query(query: str | None = None, searches: TypedSearches = None,
                    limit: Limit = 10, minScore: MinScore = 0.0, candidateLimit: CandidateLimit = None,
                    collections: list[str] | None = None, intent: Intent = None, rerank: bool = True,
                    plugins: PluginNames = None) -> SearchResults:
        if query and searches:
            raise ToolError("INVALID_INPUT: `query` and `searches` are mutually exclusive; give only one")
        if searches:
            text = "\n".join(f"{s.type}: {s.query}" for s in searches)
        elif query and query.strip():
            text = query
        else:
            raise ToolError("INVALID_INPUT: give `query` (plain text) or a non-empty `searches` list")
        extra: dict[str, Any] = {"rerank": rerank, "intent": intent or None}
        if candidateLimit is not None:
            extra["candidates"] = candidateLimit
        return await run_search("query", text, limit, minScore, collections, plugins, extra)

    @server.tool(name="get", annotations=READ_ONLY, description=(
        "Read a document: a qmd://collection/path URI, collection/path, a #docid from a result, or a path "
        "suffix; optionally FILE:LINE or FILE:LINE:COUNT, or fromLine/maxLines. The text comes as a "
        "text/markdown resource, line-numbered unless lineNumbers is false."))
    async def get(file: str, fromLine: Annotated[int | None, Field(ge=1)] = None,
                  maxLines: Annotated[int | None, Field(ge=1)] = None,
                  lineNumbers: LineNumbers = True) -> Annotated[CallToolResult, Document]:
        answer, _ = await call_tool_method(table, "get", {"target": file, "from_line": fromLine, "max_lines": maxLines})
        document = Document(file=answer["file"], docid=answer["docid"], title=answer["title"],
                            context=answer["context"], from_line=answer["from_line"],
                            lines_after=answer["lines_after"], body=answer["body"])
        # qmd joins the lines of a range it cut short: its last line has no line break, which numbered
        # would read as one more, empty, line of the file.
        shown = document.body.removesuffix("\n") if document.lines_after else document.body
        block = resource_block(document.file, shown, document.context, start_line=document.from_line,
                               line_numbers=lineNumbers)
        return CallToolResult(content=[block], structured_content=document.model_dump(mode="json"))

    @server.tool(name="multi_get", annotations=READ_ONLY, description=(
        "Read several documents at once by glob (e.g. notes/2026-*.md) or comma-separated list of paths or "
        "docids; documents larger than maxBytes (default 64 KiB) are listed as skipped, with a reason, "
        "instead of being returned."))
    async def multi_get(pattern: str, maxLines: Annotated[int | None, Field(ge=1)] = None,
                        maxBytes: Annotated[int, Field(ge=1)] = MULTI_GET_MAX_BYTES,
                        lineNumbers: LineNumbers = True) -> Annotated[CallToolResult, MultiGetResult]:
        answer, items = await call_tool_method(table, "multi_get", {
            "patterns": [pattern], "max_bytes": maxBytes, "max_lines": maxLines, "max_files": MULTI_GET_MAX_FILES})
        fields = MultiDocument.model_fields
        documents = [MultiDocument(**{k: v for k, v in doc.items() if k in fields})
                     for kind, doc in items if kind == "result"]
        content: list[ContentBlock] = []
        for doc in documents:
            if doc.skipped or doc.body is None:
                doc.reason = for_mcp(doc.reason or "not read")
                content.append(skipped_block(doc.file, doc.reason))
            else:
                content.append(resource_block(doc.file, doc.body, doc.context, line_numbers=lineNumbers))
        if answer["more"]:
            content.append(TextContent(type="text", text=f"{answer['more']} more documents match {pattern!r} and "
                                       f"are not returned (at most {MULTI_GET_MAX_FILES}): narrow the pattern."))
        structured = MultiGetResult(documents=documents, more=answer["more"]).model_dump(mode="json")
        return CallToolResult(content=content, structured_content=structured)

    @server.tool(name="status", annotations=READ_ONLY, description=(
        "The index: collections with document and chunk counts, whether they are watched (kept fresh "
        "automatically) and how many chunks have vectors (`vectors`; `auto_embed`: new chunks are embedded "
        "in the background), what the background embedder is doing, models, daemon health."))
    async def status() -> dict[str, Any]:
        answer, _ = await call_tool_method(table, "status", {})
        return {"state": answer["state"], "degraded_reason": answer.get("degraded_reason"),
                "version": answer["version"],
                "collections": [{**{k: c[k] for k in ("name", "root", "documents", "chunks", "uri", "updated_at")},
                                 "watch": c.get("watch", {}).get("state"), "vectors": c.get("vectors")}
                                for c in answer["collections"]],
                "auto_embed": answer["auto_embed"],
                "model": {k: answer["model"].get(k) for k in ("embedding", "reranker", "device", "chunks",
                                                              "embedded")},
                "problems": len(answer["problems"])}

    @server.resource("qmd://{collection}/{+path}", name="document", mime_type=MIME,
                     description="A document of a collection, by its path (sub-folders included); "
                                 "resources/list lists them all.")
    async def document(collection: str, path: str) -> str:
        try:
            answer, _ = await invoke(table, "get", {"target": f"qmd://{collection}/{path}"})
        except QmddError as err:
            if err.code in (ErrorCode.NOT_FOUND, ErrorCode.COLLECTION_NOT_FOUND):
                raise ResourceNotFoundError(f"{err.code}: {err.message}") from None
            if err.code == ErrorCode.INVALID_INPUT:
                raise MCPError(INVALID_PARAMS, error_text(err)) from None
            raise ResourceError(error_text(err)) from None
        return str(answer["body"])

    @server.prompt(name="ask", title="Ask my documents", description=(
        "Answer a question from the user's local documents, reading the sources and citing them."))
    def ask(question: str) -> str:
        return ASK_PROMPT.format(question=question)

    for tool in server._tool_manager.list_tools():  # said in the schemas too (see QmddServer.call_tool)
        tool.parameters["additionalProperties"] = False
    return server
