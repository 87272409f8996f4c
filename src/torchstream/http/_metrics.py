"""What the HTTP front end counts, and its Prometheus collector (pulled at scrape time)."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LATENCY_BUCKETS_SECONDS", "HttpCollector", "HttpCounters", "route_of"]

LATENCY_BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_ROUTES = ("/v1/infer", "/v1/jobs", "/v1/stream", "/v1/status", "/healthz", "/readyz",
           "/metrics")


def route_of(path: str) -> str:
    """The route template of ``path`` (bounded label values: never the raw path)."""
    if path in _ROUTES:
        return path
    if path.startswith("/v1/jobs/"):
        return "/v1/jobs/{id}"
    return "other"


class HttpCounters:
    """Requests by route and status, latency histograms by route, drops by reason."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = collections.defaultdict(float)
        self.expired_total = 0
        """Requests answered 504 because their deadline passed."""
        self.stream_frames: collections.Counter[int] = collections.Counter()
        """Websocket frames answered, by status (200 for a result)."""

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        counts = self.latency.get(route)
        if counts is None:
            counts = self.latency[route] = [0] * (len(LATENCY_BUCKETS_SECONDS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS_SECONDS, seconds)] += 1
        self.latency_sum[route] += seconds


class CountingMiddleware:
    """Counts every HTTP request's route, status and duration into ``counters``."""

    def __init__(self, app: ASGIApp, counters: HttpCounters, clock: Callable[[], float]) -> None:
        self.app = app
        self.counters = counters
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.counters.record(
                scope["method"], route_of(scope["path"]), status, self.clock() - started
            )


class HttpCollector:
    """Prometheus families of the front end: requests, latency, admission, jobs."""

    def __init__(self, counters: HttpCounters, admission: Any, jobs: Any) -> None:
        self._counters = counters
        self._admission = admission
        self._jobs = jobs

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        c = self._counters
        requests = CounterMetricFamily(
            "torchstream_http_requests_total", "HTTP requests answered, by route and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(c.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "torchstream_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.", labels=["route"],
        )
        for route, counts in sorted(c.latency.items()):
            buckets, running = [], 0
            for bound, count in zip(
                (*map(str, LATENCY_BUCKETS_SECONDS), "+Inf"), counts, strict=True
            ):
                running += count
                buckets.append((bound, running))
            latency.add_metric([route], buckets, c.latency_sum[route])
        yield latency
        stats = self._admission.statistics()
        in_flight = GaugeMetricFamily(
            "torchstream_http_in_flight", "Requests admitted and not yet answered."
        )
        in_flight.add_metric([], stats.in_flight)
        yield in_flight
        rejected = CounterMetricFamily(
            "torchstream_http_admission_rejected_total",
            "Requests refused with 429 because max_in_flight were in flight.",
        )
        rejected.add_metric([], stats.rejected_total)
        yield rejected
        rate = GaugeMetricFamily(
            "torchstream_http_service_rate_per_second",
            "Requests served per second over the last ten seconds.",
        )
        rate.add_metric([], stats.service_rate_per_second)
        yield rate
        expired = CounterMetricFamily(
            "torchstream_http_deadline_expired_total",
            "Requests answered 504 because their deadline passed.",
        )
        expired.add_metric([], c.expired_total)
        yield expired
        stream = CounterMetricFamily(
            "torchstream_http_stream_frames_total",
            "Websocket frames answered, by status (200: a result).", labels=["status"],
        )
        for status, count in sorted(c.stream_frames.items()):
            stream.add_metric([str(status)], count)
        yield stream
        jobs = GaugeMetricFamily(
            "torchstream_http_jobs", "Jobs kept, by state.", labels=["state"]
        )
        jobs.add_metric(["pending"], self._jobs.pending)
        jobs.add_metric(["kept"], len(self._jobs))
        yield jobs
