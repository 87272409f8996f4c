"""Prometheus metrics of a running pipeline, built from ``Pipeline.statistics()`` at scrape
time: nothing is counted per frame for them."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from torchstream._errors import MissingDependencyError
from torchstream.codecs import nvdec_sessions
from torchstream.pipeline import Pipeline
from torchstream.pipeline._statistics import BATCH_SECONDS_BUCKETS, PipelineHealth

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("prometheus-client", "telemetry") from exc

__all__ = [
    "MetricsServer",
    "ModuleCollector",
    "PipelineCollector",
    "serve_collectors",
    "serve_metrics",
]

log = logging.getLogger(__name__)


class PipelineCollector:
    """A Prometheus collector for one pipeline (register it in a ``CollectorRegistry``).

    Names follow Prometheus conventions (``torchstream_`` prefix, ``_total`` counters, units
    in names). Per-source series carry a ``source`` label; with ``per_source_labels=False``
    they are summed into one series each, for deployments with thousands of sources.
    """

    def __init__(self, pipeline: Pipeline, *, per_source_labels: bool = True) -> None:
        self._pipeline = pipeline
        self._per_source = per_source_labels

    def describe(self) -> list[Metric]:
        return []  # collected lazily: no scrape at registration

    def collect(self) -> Iterator[Metric]:
        stats = self._pipeline.statistics()
        source_labels = ["source"] if self._per_source else []

        def per_source(name: str, doc: str, kind: type[Any]) -> Any:
            return kind(f"torchstream_{name}", doc, labels=source_labels)

        frames_in = per_source("frames_in_total", "Frames that entered the pipeline.",
                               CounterMetricFamily)
        frames_out = per_source("frames_out_total", "Frames handed to the sinks.",
                                CounterMetricFamily)
        fps = per_source("source_frames_per_second", "Output rate of each source.",
                         GaugeMetricFamily)
        dropped = CounterMetricFamily(
            "torchstream_frames_dropped_total", "Frames dropped, by reason.",
            labels=[*source_labels, "reason"],
        )
        totals: dict[str, float] = {"in": 0, "out": 0, "fps": 0}
        reasons: dict[str, int] = {}
        for sid, source in stats.sources.items():
            if self._per_source:
                frames_in.add_metric([sid], source.frames_in)
                frames_out.add_metric([sid], source.frames_out)
                fps.add_metric([sid], source.frames_per_second)
                for reason, count in source.dropped.items():
                    dropped.add_metric([sid, reason], count)
            totals["in"] += source.frames_in
            totals["out"] += source.frames_out
            totals["fps"] += source.frames_per_second if source.running else 0.0
            for reason, count in source.dropped.items():
                reasons[reason] = reasons.get(reason, 0) + count
        if not self._per_source:
            frames_in.add_metric([], totals["in"])
            frames_out.add_metric([], totals["out"])
            fps.add_metric([], totals["fps"])
            for reason, count in reasons.items():
                dropped.add_metric([reason], count)
        yield from (frames_in, frames_out, dropped, fps)

        decoders = GaugeMetricFamily(
            "torchstream_decoders", "Running video sources by decoder.", labels=["kind"]
        )
        kinds: dict[str, int] = {"nvdec": 0, "pyav": 0}
        for source in stats.sources.values():
            if source.running and source.decoder in kinds:
                kinds[source.decoder] += 1
        for kind, count in kinds.items():
            decoders.add_metric([kind], count)
        yield decoders
        yield from _nvdec_session_metrics()
        yield GaugeMetricFamily(
            "torchstream_sessions_open", "Sessions not yet ended.", value=stats.sessions_open
        )
        latency = GaugeMetricFamily(
            "torchstream_frame_latency_seconds",
            "Frame entered the pipeline to handed to the sinks, over the last 1024 frames.",
            labels=["quantile"],
        )
        latency.add_metric(["0.5"], stats.latency_seconds_p50)
        latency.add_metric(["0.95"], stats.latency_seconds_p95)
        yield latency
        yield from self._stages(stats)
        yield from self._sinks(stats)
        yield from _device_memory(self._pipeline.device)

    def _stages(self, stats: Any) -> Iterator[Metric]:
        labels = ["stage"]
        frames = CounterMetricFamily("torchstream_stage_frames_total", "Frames processed.",
                                     labels=labels)
        errors = CounterMetricFamily("torchstream_stage_errors_total", "Frames that failed.",
                                     labels=labels)
        splits = CounterMetricFamily("torchstream_stage_oom_splits_total",
                                     "Batches split after running out of memory.", labels=labels)
        depth = GaugeMetricFamily("torchstream_stage_queue_depth_frames",
                                  "Items waiting in the stage's input queue.", labels=labels)
        batch_time = HistogramMetricFamily("torchstream_stage_batch_seconds",
                                           "Time to process one batch.", labels=labels)
        batch_size = HistogramMetricFamily("torchstream_stage_batch_size_frames",
                                           "Frames per batch.", labels=labels)
        for stage in stats.stages:
            name = [stage.name]
            frames.add_metric(name, stage.frames_total)
            errors.add_metric(name, stage.errors_total)
            splits.add_metric(name, stage.oom_splits_total)
            depth.add_metric(name, stage.input.size)
            cumulative, buckets = 0, []
            for bound, count in zip(
                [*map(str, BATCH_SECONDS_BUCKETS), "+Inf"], stage.batch_seconds_counts, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            batch_time.add_metric(name, buckets, sum_value=stage.busy_seconds)
            sizes = stage.batcher.size_histogram
            cumulative, size_buckets = 0, []
            for bound in sorted(sizes):
                cumulative += sizes[bound]
                size_buckets.append((str(float(bound)), cumulative))
            size_buckets.append(("+Inf", cumulative))
            batch_size.add_metric(name, size_buckets, sum_value=stage.batcher.items_total)
        yield from (frames, errors, splits, depth, batch_time, batch_size)

    def _sinks(self, stats: Any) -> Iterator[Metric]:
        labels = ["sink"]
        frames = CounterMetricFamily("torchstream_sink_frames_total", "Frames written.",
                                     labels=labels)
        errors = CounterMetricFamily("torchstream_sink_errors_total", "Failed writes.",
                                     labels=labels)
        dropped = CounterMetricFamily("torchstream_sink_dropped_total",
                                      "Live frames a lagging sink skipped.", labels=labels)
        for sink in stats.sinks:
            frames.add_metric([sink.name], sink.frames_total)
            errors.add_metric([sink.name], sink.errors_total)
            dropped.add_metric([sink.name], sink.dropped_total)
        yield from (frames, errors, dropped)


def _device_memory(device: torch.device) -> Iterator[Metric]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return
    in_use = GaugeMetricFamily("torchstream_device_memory_bytes",
                               "GPU memory held by tensors.", labels=["device"])
    peak = GaugeMetricFamily("torchstream_device_memory_peak_bytes",
                             "Most GPU memory held by tensors so far.", labels=["device"])
    in_use.add_metric([str(device)], torch.cuda.memory_allocated(device))
    peak.add_metric([str(device)], torch.cuda.max_memory_allocated(device))
    yield from (in_use, peak)


class MetricsServer:
    """HTTP endpoints on a daemon thread (``ts/telemetry``), for a pipeline
    (:func:`serve_metrics`) or anything else (:func:`serve_collectors`):

    - ``GET /metrics``: Prometheus exposition;
    - ``GET /healthz``: 200 while alive, 503 once crashed or closed (liveness);
    - ``GET /readyz``: 200 when ready (a pipeline: models loaded and a source bound), else 503;
    - ``GET /status``: JSON summary (a pipeline's sources and sessions; 404 without one).

    ``close()`` stops the server and frees the port.
    """

    def __init__(self, registry: CollectorRegistry, server: Any) -> None:
        self._registry = registry
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="ts/telemetry", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _status(pipeline: Pipeline) -> dict[str, Any]:
    stats, health = pipeline.statistics(), pipeline.health()
    return {
        "alive": health.alive,
        "ready": health.ready,
        "reason": health.reason,
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "dropped": stats.dropped,
        "sessions_open": stats.sessions_open,
        "sources": {
            sid: {
                "running": s.running,
                "frames_out": s.frames_out,
                "frames_per_second": round(s.frames_per_second, 2),
                "dropped": s.dropped,
                "decoder": s.decoder,
                "errors": list(s.errors[-5:]),
            }
            for sid, s in stats.sources.items()
        },
    }


class ModuleCollector:
    """What a :class:`~torchstream.transport.Module` adds to its pipeline's metrics: messages
    received, rejected (malformed, wrong version, unauthorised, by reason) and refused (valid
    but unusable, by reason) on its input; results sent, dropped (pub) and re-sent or still
    unacknowledged (acknowledged links) on its output; sources open."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._module.statistics()
        except RuntimeError:  # not running (yet, or any more)
            return
        received = CounterMetricFamily(
            "torchstream_transport_messages_received_total",
            "Valid messages received on the module's input.",
        )
        received.add_metric([], stats.inbound.received)
        yield received
        rejected = CounterMetricFamily(
            "torchstream_transport_messages_rejected_total",
            "Messages rejected at the module's input, by reason.", labels=["reason"],
        )
        for reason, count in sorted(stats.inbound.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        refused = CounterMetricFamily(
            "torchstream_module_messages_refused_total",
            "Valid frame messages the module could not use, by reason.", labels=["reason"],
        )
        for reason, count in sorted(stats.messages_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        if stats.outbound is not None:
            sent = CounterMetricFamily(
                "torchstream_transport_results_sent_total", "Result messages sent."
            )
            sent.add_metric([], stats.outbound.sent)
            yield sent
            dropped = CounterMetricFamily(
                "torchstream_transport_results_dropped_total",
                "Results a pub output dropped for subscribers at their high-water mark.",
            )
            dropped.add_metric([], stats.outbound.dropped)
            yield dropped
        resent = CounterMetricFamily(
            "torchstream_transport_results_resent_total",
            "Results sent again for want of an acknowledgement.",
        )
        resent.add_metric([], stats.results_resent)
        yield resent
        unacknowledged = GaugeMetricFamily(
            "torchstream_transport_results_unacknowledged",
            "Results sent and not yet acknowledged.",
        )
        unacknowledged.add_metric([], stats.results_unacknowledged)
        yield unacknowledged
        sources = GaugeMetricFamily(
            "torchstream_module_sources_open", "Sources the module is receiving."
        )
        sources.add_metric([], stats.sources_open)
        yield sources


def serve_metrics(
    pipeline: Pipeline,
    *,
    port: int,
    address: str = "127.0.0.1",
    per_source_labels: bool = True,
    health: Callable[[], PipelineHealth] | None = None,
    collectors: Sequence[Any] = (),
) -> MetricsServer:
    """Serve metrics, health and status of ``pipeline`` at ``http://address:port/`` (see
    :class:`MetricsServer`). Binds to 127.0.0.1 unless told otherwise (``0.0.0.0`` for a
    remote Prometheus or orchestrator); ``port=0`` picks a free port (``MetricsServer.port``).
    Raises OSError when the port is taken. ``health``: what /healthz and /readyz report
    (default ``pipeline.health``; a module reports its own, ready once its socket is bound).
    ``collectors``: more Prometheus collectors on the same endpoint (a :class:`ModuleCollector`).
    """
    return serve_collectors(
        [PipelineCollector(pipeline, per_source_labels=per_source_labels), *collectors],
        port=port,
        address=address,
        health=health or pipeline.health,
        status=lambda: _status(pipeline),
    )


def _always_healthy() -> PipelineHealth:
    return PipelineHealth(alive=True, ready=True, reason="")


def serve_collectors(
    collectors: Sequence[Any],
    *,
    port: int,
    address: str = "127.0.0.1",
    health: Callable[[], PipelineHealth] | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
) -> MetricsServer:
    """Serve Prometheus ``collectors`` at ``http://address:port/metrics`` without a pipeline
    (a source or sink adapter: :class:`SourceAdapterCollector`, :class:`SinkAdapterCollector`),
    with /healthz and /readyz from ``health`` (default: alive and ready while the process
    serves) and /status from ``status`` (404 without). Binding as for :func:`serve_metrics`.
    """
    check_health = health or _always_healthy
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                state = check_health()
                ok = state.alive if path == "/healthz" else state.ready
                body = json.dumps({"ok": ok, "reason": state.reason}).encode()
                self._reply(200 if ok else 503, body, "application/json")
            elif path == "/status" and status is not None:
                self._reply(200, json.dumps(status()).encode(), "application/json")
            else:
                self._reply(404, b'{"error": "not found"}', "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("telemetry %s", format % args)

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    return MetricsServer(registry, server)


def _nvdec_session_metrics() -> Iterator[Metric]:
    """The process's NVDEC session pool (shared by every pipeline of the process)."""
    sessions = nvdec_sessions().statistics()
    yield GaugeMetricFamily(
        "torchstream_nvdec_sessions_idle",
        "NVDEC sessions kept for the next source.",
        value=sessions.idle,
    )
    for name, text, count in (
        ("opened", "NVDEC sessions opened by the driver.", sessions.created),
        ("reused", "Sources started on a session another source had finished with.",
         sessions.reused),
        ("destroyed", "NVDEC sessions destroyed.", sessions.destroyed),
    ):
        yield CounterMetricFamily(f"torchstream_nvdec_sessions_{name}", text, value=count)
