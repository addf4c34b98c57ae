"""Trace context: the id every log line a request causes carries, W3C `traceparent` in and out, and
OpenTelemetry spans when the `otel` extra is installed and an exporter is asked for.

A door sets the trace id (the client's, or a fresh one) before calling a method; actors take it along
in each envelope, so their lines carry it too. Spans are made only when OpenTelemetry is switched on
(`OTEL_TRACES_EXPORTER=otlp|console`, or an `OTEL_EXPORTER_OTLP_*ENDPOINT`): otherwise `span` is a
no-op costing one attribute read.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger("qmdd.tracing")

trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")
"""The trace id of the request being served, for the daemon's log lines."""
parent_span_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("parent_span", default=None)
"""The caller's span id from its `traceparent`, the parent of the method's span."""

MAX_TRACE_ID = 128
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_HEX = re.compile(r"^[0-9a-f]+$")


def accepted_trace_id(given: object) -> str | None:
    """A client's trace id, when it is one qmdd can log as it is: text, 1-128 printable characters."""
    if isinstance(given, str) and 0 < len(given) <= MAX_TRACE_ID and given.isprintable():
        return given
    return None


def new_trace_id() -> str:
    """32 hex digits: a W3C trace id, so it can go out in `traceparent`."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(header: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C traceparent; None when it is absent or invalid (then the
    request starts a trace of its own, as the recommendation says). Versions above 00 are read as 00."""
    match = _TRACEPARENT.match(header.strip()) if header else None
    if match is None:
        return None
    version, trace_id, span_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return trace_id, span_id


def traceparent(trace_id: str, span_id: str) -> str | None:
    """The `traceparent` to send on, when the trace id can be a W3C one (16 hex digits are left-padded)."""
    if len(trace_id) in (16, 32) and _HEX.match(trace_id) and set(trace_id) != {"0"}:
        return f"00-{trace_id.rjust(32, '0')}-{span_id}-01"
    return None


def trace_context(headers: Mapping[str, str]) -> str:
    """Set the trace context of an HTTP request from its `traceparent` (else `x-trace-id`, else a fresh
    id) and return the trace id."""
    parent = parse_traceparent(headers.get("traceparent"))
    if parent is not None:
        trace_id_var.set(parent[0])
        parent_span_var.set(parent[1])
        return parent[0]
    trace_id = accepted_trace_id(headers.get("x-trace-id")) or new_trace_id()
    trace_id_var.set(trace_id)
    parent_span_var.set(None)
    return trace_id


# --- OpenTelemetry (the `otel` extra) ---------------------------------------------------------------

class _Otel:
    provider: Any = None
    tracer: Any = None


_otel = _Otel()


def otel_requested(environ: Mapping[str, str]) -> str | None:
    """The exporter asked for by the standard OTEL_* variables: "otlp", "console" or None."""
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("otlp", "console"):
        return exporter
    if exporter != "none" and (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                               or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return "otlp"
    return None


def setup_otel(environ: Mapping[str, str], service_version: str) -> str | None:
    """Switch spans on when an exporter is asked for; returns it, or None. Without the extra installed
    that is said once in the log and qmdd runs on without spans."""
    exporter = otel_requested(environ)
    if exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        chosen: SpanExporter
        if exporter == "console":
            chosen = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            chosen = OTLPSpanExporter()
    except ImportError as exc:
        log.warning("OpenTelemetry export asked for (%s) but not installed (%s): "
                    "pip install 'qmdd[otel]'", exporter, exc.name)
        return None

    class RequestTraceIds(RandomIdGenerator):
        """A request's root span takes the request's trace id: its spans and log lines share one id."""

        def generate_trace_id(self) -> int:
            trace_id = trace_id_var.get()
            if len(trace_id) in (16, 32) and _HEX.match(trace_id) and set(trace_id) != {"0"}:
                return int(trace_id, 16)
            return super().generate_trace_id()

    _otel.provider = TracerProvider(id_generator=RequestTraceIds(), resource=Resource.create(
        {"service.name": "qmdd", "service.version": service_version}))
    _otel.provider.add_span_processor(BatchSpanProcessor(chosen))
    _otel.tracer = _otel.provider.get_tracer("qmdd", service_version)
    log.info("OpenTelemetry spans exported (%s)", exporter)
    return exporter


def shutdown_otel() -> None:
    """Flush the spans still queued: called once serving has stopped."""
    if _otel.provider is not None:
        _otel.provider.shutdown()
        _otel.provider = _otel.tracer = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span named `name` around the block: a child of the current span, else of the caller's
    `traceparent`, else the root of the request's trace. Nothing at all when OpenTelemetry is off."""
    tracer = _otel.tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name, context=_remote_parent(), attributes=attributes):
        yield


def _remote_parent() -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    parent = parent_span_var.get()
    if parent is None or trace.get_current_span().get_span_context().is_valid:
        return None  # the current context is the parent (or there is none: a root span)
    context = SpanContext(int(trace_id_var.get(), 16), int(parent, 16), is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(context))
