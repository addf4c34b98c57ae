"""The daemon's metrics: one prometheus-client registry, read by `GET /metrics` and `qmdctl metrics`.

The doors time each request (per method and door) and count errors by code. Everything the actors and
doors already count for `status` (queue depths, restarts, embed batches, padded tokens, inference
seconds, index sizes, watcher events, HTTP rate limiting...) is read at scrape time, not kept twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qmdd.methods.call import Call, MethodHandler, client_gone
from qmdd.protocol.errors import unwrap_error
from qmdd.tracing import span

log = logging.getLogger("qmdd.requests")

# Search round trips sit around 1-10 ms; embeds and updates take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qmdd_requests", "Requests served, by method and door.", ("method", "door"),
                                registry=self.registry)
        self.latency = Histogram("qmdd_request_seconds", "Time to serve a request, by method and door.",
                                 ("method", "door"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("qmdd_errors", "Requests answered with an error, by code and door.", ("code", "door"),
                              registry=self.registry)

    def observer(self, method: str, door: str) -> Callable[[float, str | None], None]:
        """Records a request of one method at one door: its counters are looked up at its first request
        (a lookup per request cost more than counting it; a method never called shows no series)."""
        counters: list[tuple[Counter, Histogram]] = []

        def observe(seconds: float, error: str | None) -> None:
            if not counters:
                counters.append((self.requests.labels(method, door), self.latency.labels(method, door)))
            requests, latency = counters[0]
            requests.inc()
            latency.observe(seconds)
            if error is not None:
                self.errors.labels(error, door).inc()
        return observe

    def read_statistics(self, name: str, source: Callable[[], Mapping[str, Any]]) -> None:
        """Publish `source()`'s numbers (nested maps flattened) as gauges qmdd_<name>{part, statistic}:
        its top-level keys are the parts (an actor, a door)."""
        self.registry.register(_StatisticsCollector(name, source))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


def timed(table: Mapping[str, MethodHandler], metrics: Metrics, door: str) -> dict[str, MethodHandler]:
    """The table as one door serves it: each call counted, timed, logged at info (the log line carries
    the request's trace id) and, when OpenTelemetry is on, made a span; its error code counted."""
    def wrap(method: str, handler: MethodHandler) -> MethodHandler:
        observe = metrics.observer(method, door)

        async def timed_handler(params: dict[str, Any], call: Call) -> Any:
            started, error = time.perf_counter(), None
            try:
                with span(method, **{"qmdd.door": door}):
                    return await handler(params, call)
            except Exception as exc:  # recorded and raised again: the door's handler answers it
                typed = unwrap_error(exc)
                # A client that hung up (Ctrl-C on a long embed) ended its call: no daemon error to count.
                error = str(typed.code) if typed is not None else "CLIENT_GONE" if client_gone(exc) else "INTERNAL"
                raise
            except BaseException:  # cancelled (a stopping daemon's grace ran out): not "ok"; raised again
                error = "CANCELLED"
                raise
            finally:
                seconds = time.perf_counter() - started
                observe(seconds, error)
                log.info("%s via %s: %s in %.1f ms", method, door, error or "ok", seconds * 1000)
        return timed_handler
    return {method: wrap(method, handler) for method, handler in table.items()}


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted name, number) for each number in nested maps; text, lists and booleans-as-words are left out."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, name + "_")
        elif isinstance(value, (int, float)):  # bools count as 0/1
            yield name, float(value)


class _StatisticsCollector(Collector):
    def __init__(self, name: str, source: Callable[[], Mapping[str, Any]]) -> None:
        self._name = name
        self._source = source

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(f"qmdd_{self._name}", f"The {self._name} statistics `qmdctl status` shows.",
                                   labels=("part", "statistic"))
        for part, values in self._source().items():
            if isinstance(values, Mapping):
                for statistic, number in flatten(values):
                    family.add_metric((part, statistic), number)
        yield family
