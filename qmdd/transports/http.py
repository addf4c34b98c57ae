"""The HTTP door: a REST API over the same method table as the socket and MCP, served by hypercorn on
trio (Starlette routes; both are anyio underneath).

    GET  /health                 liveness, no token needed
    GET  /collections            collection.list
    GET  /stats                  status
    GET  /metrics                metrics, in Prometheus' text format
    POST /search /vsearch /query a JSON object of the method's parameters (qmd's `collection` and
                                 `minScore` too); the reply is the method's answer, streamed parts joined
    GET  /documents/{target}     get: COLLECTION/PATH or %23DOCID, ?from_line=&max_lines=
    POST /v1/embeddings          embeddings, as OpenAI's API: its request, its reply, its error object

Everything but /health needs `Authorization: Bearer TOKEN` (the token file, compared in constant time)
and is rate-limited per client address (token buckets; the socket's clients are not limited).
Bound to loopback, the door also refuses a Host or Origin that is not loopback: a web page the user
visits cannot reach it through DNS rebinding. Errors are RFC 7807 problem details carrying qmdd's code,
hints and trace id (OpenAI's error object under /v1/), with the status from the error catalogue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import outcome
import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from qmdd import __version__, faults
from qmdd.methods.call import whole
from qmdd.methods.table import MethodTable, invoke
from qmdd.paths import listen_address
from qmdd.protocol.errors import ErrorCode, QmddError, unwrap_error
from qmdd.tokens import TokenFile, is_loopback
from qmdd.tracing import new_span_id, trace_context, traceparent
from qmdd.transports.mcp_http import counted, replaying
from qmdd.transports.ratelimit import RateLimiter
from qmdd.transports.replies import ErrorReply, jsonrpc_error, openai_error, problem
from qmdd.transports.rest import SEARCH_METHODS, search_params

log = logging.getLogger("qmdd.http")

MAX_BODY_BYTES = 1 << 20
"""A search body is a query and a few options: a larger one is refused before it is read."""
MAX_EMBEDDINGS_BODY_BYTES = 16 << 20
"""An embeddings body: the method's 4 MiB of texts even as ASCII-only JSON (json.dumps' default), whose
\\uXXXX escapes take up to three times a character's UTF-8 bytes."""

BODY_STALL_S = 10.0
"""Longest wait for the next part of a request's body (below hypercorn's 30 s read timeout)."""
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
RESTART_PAUSE_S = 0.05
"""Between an HTTP server that ended on a connection's error and the next: bounds a crash loop a client
could drive."""

CLIENT_GONE = (ClientDisconnect, trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)
"""The client went away: its request ends unanswered. BusyResourceError too, as hypercorn's trio worker
half-closes a connection the client half-closed while the reply is still being sent."""

Endpoint = Callable[[Request], Awaitable[Any]]


@dataclass
class HttpStats:
    requests: int = 0
    restarts: int = 0
    disconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def open_http_socket(listen: str) -> socket.socket:
    """The listening socket, bound before the daemon says it is ready: a port in use is a clear error
    at start, not a crash later."""
    host, port = listen_address(listen)
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise QmddError(ErrorCode.CONFIG_ERROR, f"cannot listen for HTTP on {listen}: {exc.strerror or exc}",
                        hints=("Pick another port with --http HOST:PORT (or [http] listen in the config file).",)
                        ) from None


def url_of(sock: socket.socket, *, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_tls(cert: str, key: str) -> tuple[str, str] | None:
    """The certificate and key the door serves HTTPS with (None: plain HTTP), checked at start: a wrong
    path or a key that does not match is a clear error, not a door that fails each handshake."""
    if not (cert or key):
        return None
    if not (cert and key):
        raise QmddError(ErrorCode.CONFIG_ERROR, "HTTPS needs both http_cert and http_key",
                        hints=("Set both [http] cert and key (PEM files), or neither for plain HTTP.",))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise QmddError(ErrorCode.CONFIG_ERROR, f"cannot serve HTTPS with {cert} and {key}: {exc}",
                        hints=("Give a PEM certificate and its unencrypted private key, readable by qmdd.",)
                        ) from None
    return cert, key


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class HttpDoor:
    def __init__(self, table: MethodTable, tokens: TokenFile, *, loopback: bool, limiter: RateLimiter,
                 mcp_app: Callable[[], Awaitable[Any]] | None = None, tls: tuple[str, str] | None = None) -> None:
        self.table = table
        self.tls = tls
        self.tokens = tokens
        self.loopback = loopback
        self.limiter = limiter
        self.stats = HttpStats()
        self._rendering = trio.CapacityLimiter(1)  # large replies written as JSON, one at a time
        # MCP over HTTP: the SDK's app, built on the first /mcp request (importing the SDK takes ~1 s).
        self._make_mcp_app = mcp_app
        self._mcp_app: Any = None
        self._mcp_building = trio.Lock()
        self._nursery: trio.Nursery | None = None

    def statistics(self) -> dict[str, Any]:
        return {"requests": self.stats.requests, "errors": dict(self.stats.errors), "restarts": self.stats.restarts,
                "disconnects": self.stats.disconnects, "rate_limited": self.limiter.limited}

    def app(self) -> Callable[[Any, Any, Any], Awaitable[None]]:
        routes = [Route("/health", self._endpoint(self._health, public=True)),
                  Route("/collections", self._endpoint(self._call("collection.list"))),
                  Route("/stats", self._endpoint(self._call("status"))),
                  Route("/plugins", self._endpoint(self._call("plugin.list"))),
                  Route("/metrics", self._endpoint(self._metrics)),
                  Route("/openapi.json", self._endpoint(self._openapi)),
                  Route("/documents/{target:path}", self._endpoint(self._document))]
        routes += [Route(f"/{method}", self._endpoint(self._search(method)), methods=["POST"])
                   for method in SEARCH_METHODS]
        routes.append(Route("/v1/embeddings", self._endpoint(self._embeddings, errors=openai_error), methods=["POST"]))
        unrouted = self._endpoint(self._no_route, public=True)

        async def not_found(request: Request, exc: Exception) -> Response:
            return await unrouted(request)  # problem details too, e.g. for a target with a newline in it

        async def not_allowed(request: Request, exc: Exception) -> Response:
            allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")  # Starlette's, from a set: any order
            request.state.allow = ", ".join(sorted(m.strip() for m in allowed.split(",") if m.strip()))
            return await wrong_method(request)
        wrong_method = self._endpoint(self._wrong_method, public=True)
        routed = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
        mcp_checks = self._endpoint(self._mcp_checked, limited=False, errors=jsonrpc_error)

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            try:
                if scope["type"] == "http" and scope["path"] == "/mcp" and self._make_mcp_app is not None:
                    await self._mcp(mcp_checks, scope, receive, send)
                else:
                    await routed(scope, receive, send)
            except CLIENT_GONE:  # the client left mid-request: there is nobody to answer
                self.stats.disconnects += 1
        return asgi

    async def _mcp(self, checks: Callable[[Request], Awaitable[Response]], scope: Any, receive: Any,
                   send: Any) -> None:
        """The MCP endpoint: checked as every other (its refusals as JSON-RPC errors, which MCP clients
        read), its tool calls and session openings counted by the rate limit (`mcp_http`), then handed to
        the SDK's app."""
        request = Request(scope, receive)
        checked = await checks(request)
        if checked.status_code != 200:
            await checked(scope, receive, send)
            return
        body: bytes | None = getattr(request.state, "body", None)
        await self._mcp_app(scope, receive if body is None else replaying(body, receive), send)

    async def _mcp_checked(self, request: Request) -> dict[str, Any]:
        assert self._make_mcp_app is not None and self._nursery is not None
        async with self._mcp_building:
            if self._mcp_app is None:
                app = await self._make_mcp_app()
                await self._nursery.start(_run_lifespan, app)
                self._mcp_app = app
        if request.method == "POST":
            request.state.body = body = await _body(request, MAX_BODY_BYTES)
            if counted(body):
                self._check_rate(request)
        return {}

    async def serve(self, sock: socket.socket, shutdown: trio.Event, grace_s: float, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `shutdown`, and supervise the server: hypercorn's trio worker can end on a
        connection's error (a client that half-closes while a reply is being sent raises in its
        connection task, and that ends `serve`). Then it is started again on the same socket, after a
        short pause; the other doors never notice."""
        import hypercorn.config
        import hypercorn.trio

        config = hypercorn.config.Config()
        config.accesslog = None
        config.errorlog = log
        config.graceful_timeout = grace_s
        config.keep_alive_timeout = 30.0
        config.read_timeout = 30  # a client that stops sending mid-request loses its connection
        config.include_server_header = False
        if self.tls is not None:
            config.certfile, config.keyfile = self.tls
        app: Any = self.app()  # an ASGI app; hypercorn's own type for one is narrower

        ready = _ReadyOnce(task_status)

        async def serve_once() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(hypercorn.trio.serve, app, config, shutdown_trigger=shutdown.wait))
                ready.started()
                if faults.enabled:
                    faults.check("http.server")  # ends the server as a connection's error inside it would

        async with trio.open_nursery() as self._nursery:  # for the MCP app's session manager
            while True:
                # hypercorn closes the socket it serves on: it gets a duplicate, ours stays open for the next.
                config.bind = [f"fd://{os.dup(sock.fileno())}"]
                ended = await outcome.acapture(serve_once)
                if shutdown.is_set():
                    self._nursery.cancel_scope.cancel()
                    ended.unwrap()
                    return
                if isinstance(ended, outcome.Error) and not isinstance(ended.error, Exception):
                    ended.unwrap()  # Cancelled: never swallowed
                self.stats.restarts += 1
                log.error("HTTP server ended (%s); serving again", repr(ended.error)[:300]
                          if isinstance(ended, outcome.Error) else "it returned")
                await trio.sleep(RESTART_PAUSE_S)

    # --- the one per-request handler --------------------------------------------------------------

    def _endpoint(self, fn: Endpoint, *, public: bool = False, limited: bool = True,
                  errors: ErrorReply = problem) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            self.stats.requests += 1
            trace_id = trace_context(request.headers)
            try:
                self._check_origin(request)
                if not public:
                    self._check_token(request)
                    if limited:
                        self._check_rate(request)
                value = await fn(request)
            except Exception as exc:  # the per-request handler: a typed error reply, the door carries on
                if isinstance(exc, CLIENT_GONE):
                    raise
                error = unwrap_error(exc)
                if error is None:
                    log.exception("HTTP %s %s failed", request.method, request.url.path)
                    error = QmddError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                self.stats.errors[str(error.code)] = self.stats.errors.get(str(error.code), 0) + 1
                return _traced(errors(error, trace_id), trace_id)
            return _traced(value if isinstance(value, Response) else JSONResponse(value), trace_id)
        return handle

    def _check_origin(self, request: Request) -> None:
        if not self.loopback:
            return
        host = _host_name(request.headers.get("host", ""))
        origin = request.headers.get("origin")
        origin_host = urlsplit(origin).hostname or "" if origin and origin != "null" else "localhost"
        if not (is_loopback(host) and is_loopback(origin_host)):
            raise QmddError(ErrorCode.PERMISSION_DENIED, "this door serves loopback hosts and origins only",
                            hints=("Call it as http://127.0.0.1:PORT or http://localhost:PORT.",))

    def _check_token(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = self.tokens.current()
        if token is None or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                                    token.encode()):
            raise QmddError(ErrorCode.UNAUTHORIZED, "a valid bearer token is required")

    def _check_rate(self, request: Request) -> None:
        client = request.client.host if request.client else "-"
        wait = self.limiter.check(client, trio.current_time())
        if wait:
            raise QmddError(ErrorCode.RATE_LIMITED, f"more than {self.limiter.burst:.0f} requests at once or "
                            f"{self.limiter.rate * 60:g} a minute from {client}", details={"retry_after": wait})

    # --- endpoints --------------------------------------------------------------------------------

    async def _health(self, request: Request) -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    def _call(self, method: str) -> Endpoint:
        async def call(request: Request) -> Any:
            return whole(*await invoke(self.table, method, {}))
        return call

    def _search(self, method: str) -> Endpoint:
        async def search(request: Request) -> Any:
            body = await self._json_body(request)
            return whole(*await invoke(self.table, method, search_params(method, body)))
        return search

    async def _embeddings(self, request: Request) -> Response:
        body = await self._json_body(request, MAX_EMBEDDINGS_BODY_BYTES)
        answer = whole(*await invoke(self.table, "embeddings", body))
        # 2048 vectors of 384 floats take ~0.4 s to write as JSON: in a thread, so the door's other
        # requests go on meanwhile.
        return await trio.to_thread.run_sync(JSONResponse, answer, limiter=self._rendering)

    async def _metrics(self, request: Request) -> Response:
        answer, _ = await invoke(self.table, "metrics", {})
        return Response(answer["text"], media_type=PROMETHEUS_TEXT)

    async def _no_route(self, request: Request) -> Any:
        raise QmddError(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.url.path!r:.200}",
                        hints=("GET /openapi.json lists the routes.",))

    async def _wrong_method(self, request: Request) -> Any:
        raise QmddError(ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not served at {request.url.path!r:.200}",
                        details={"allow": request.state.allow})

    async def _openapi(self, request: Request) -> Any:
        from qmdd.transports.openapi import document
        return document()

    async def _document(self, request: Request) -> Any:
        target = request.path_params["target"]
        if not target:
            raise QmddError(ErrorCode.INVALID_INPUT, "no document named: GET /documents/COLLECTION/PATH or "
                            "/documents/%23DOCID")
        # Refused as unknown JSON fields are: a misspelt ?max_line=5 must not return the whole file.
        if unknown := sorted(set(request.query_params) - {"from_line", "max_lines"}):
            raise QmddError(ErrorCode.INVALID_INPUT, f"unknown query parameter(s) {', '.join(unknown)!r:.200}",
                            hints=("GET /documents/… takes from_line and max_lines.",))
        params: dict[str, Any] = {"target": target if target.startswith("#") else f"qmd://{target}"}
        for name in ("from_line", "max_lines"):
            value = request.query_params.get(name)
            if value is not None:
                if not (value.isascii() and value.isdigit()):  # "²" is a digit to isdigit(), not to int()
                    raise QmddError(ErrorCode.INVALID_INPUT, f"{name} must be a whole number, not {value!r:.40}")
                params[name] = int(value)
        answer, _ = await invoke(self.table, "get", params)
        return _tagged(JSONResponse(answer), request.headers.get("if-none-match"))

    async def _json_body(self, request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
        body = await _body(request, limit)
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise QmddError(ErrorCode.INVALID_INPUT, f"the body is not JSON: {exc}"[:300]) from None
        except RecursionError:  # "[[[[…" a hundred thousand deep: it was a 500
            raise QmddError(ErrorCode.INVALID_INPUT, "the body's JSON is nested too deeply") from None
        if not isinstance(value, dict):
            raise QmddError(ErrorCode.INVALID_INPUT, "the body must be a JSON object of parameters")
        return value


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, read whole. Read, not refused on its declared length: hypercorn's trio worker
    ends when a reply is sent while the client half-closes with the body unsent (see `serve`). A body that
    stops arriving for BODY_STALL_S is a TIMEOUT: hypercorn's own read timeout answered a bare 500."""
    body = bytearray()
    parts = request.stream().__aiter__()
    while True:
        with trio.move_on_after(BODY_STALL_S) as waiting:
            try:
                part = await parts.__anext__()
            except StopAsyncIteration:
                return bytes(body)
        if waiting.cancelled_caught:
            raise QmddError(ErrorCode.TIMEOUT, f"the request body stopped arriving ({len(body):,} bytes came in "
                            f"{BODY_STALL_S:g} s)", hints=("Send the whole body its Content-Length declares.",))
        body += part
        if len(body) > limit:
            raise _too_large(limit)


def _tagged(response: Response, if_none_match: str | None) -> Response:
    """A strong ETag over the exact body; 304 when the client already has it. Clients must revalidate
    (the file may change any moment), which costs a round trip but not the body."""
    tag = '"' + hashlib.sha256(response.body).hexdigest()[:32] + '"'
    headers = {"etag": tag, "cache-control": "private, no-cache"}
    if if_none_match is not None and (if_none_match.strip() == "*" or tag in (
            t.strip().removeprefix("W/") for t in if_none_match.split(","))):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return response


def _traced(response: Response, trace_id: str) -> Response:
    """The trace id on the way out: as sent or made up (x-trace-id), and as W3C trace context with this
    door's span, so the caller's tracer can link its span to the request."""
    response.headers["x-trace-id"] = trace_id
    context = traceparent(trace_id, new_span_id())
    if context is not None:
        response.headers["traceparent"] = context
    return response


def _too_large(limit: int) -> QmddError:
    return QmddError(ErrorCode.FRAME_TOO_LARGE, f"request bodies are limited to {limit} bytes",
                     hints=("Send a query and its options only." if limit == MAX_BODY_BYTES else
                            "Split the texts into several requests.",))


class _ReadyOnce:
    """The door's readiness, said once: when its first server is listening."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self._status: trio.TaskStatus[None] | None = status

    def started(self) -> None:
        if self._status is not None:
            self._status.started()
            self._status = None


async def _run_lifespan(app: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A mounted Starlette app's lifespan (the MCP session manager), for as long as the door serves."""
    async with app.router.lifespan_context(app):
        task_status.started()
        await trio.sleep_forever()
