"""Telemetry (``pip install 'torchstream[telemetry]'``): Prometheus metrics, health endpoints
and OpenTelemetry tracing. The core never imports this package: it exposes ``statistics()``,
``health()`` and the :class:`~torchstream.pipeline.FrameTracer` hooks for it."""

from torchstream.telemetry._adapters import SinkAdapterCollector, SourceAdapterCollector
from torchstream.telemetry._prometheus import (
    MetricsServer,
    ModuleCollector,
    PipelineCollector,
    serve_collectors,
    serve_metrics,
)

__all__ = [
    "MetricsServer",
    "ModuleCollector",
    "OtelAdapterTracer",
    "OtelFrameTracer",
    "PipelineCollector",
    "SinkAdapterCollector",
    "SourceAdapterCollector",
    "TraceLogFilter",
    "configure_tracing",
    "frame_span",
    "serve_collectors",
    "serve_metrics",
    "traceparent",
]

_TRACING = (
    "OtelAdapterTracer", "OtelFrameTracer", "TraceLogFilter", "configure_tracing", "frame_span",
    "traceparent",
)


def __getattr__(name: str) -> object:
    # Tracing needs opentelemetry-sdk; metrics alone need only prometheus-client.
    if name in _TRACING:
        from torchstream.telemetry import _tracing

        return getattr(_tracing, name)
    raise AttributeError(name)
