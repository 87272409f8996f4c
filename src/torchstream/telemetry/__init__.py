"""Telemetry (``pip install 'torchstream[telemetry]'``): Prometheus metrics, health endpoints
and OpenTelemetry tracing. The core never imports this package: it exposes ``statistics()``,
``health()`` and the :class:`~torchstream.pipeline.FrameTracer` hooks for it."""

from torchstream.telemetry._prometheus import (
    MetricsServer,
    ModuleCollector,
    PipelineCollector,
    serve_metrics,
)

__all__ = [
    "MetricsServer",
    "ModuleCollector",
    "OtelFrameTracer",
    "PipelineCollector",
    "TraceLogFilter",
    "configure_tracing",
    "frame_span",
    "serve_metrics",
    "traceparent",
]


def __getattr__(name: str) -> object:
    # Tracing needs opentelemetry-sdk; metrics alone need only prometheus-client.
    if name in (
        "OtelFrameTracer", "TraceLogFilter", "configure_tracing", "frame_span", "traceparent"
    ):
        from torchstream.telemetry import _tracing

        return getattr(_tracing, name)
    raise AttributeError(name)
