"""Telemetry: Prometheus metrics (``pip install 'torchstream[telemetry]'``). The core never
imports this package; it only exposes ``statistics()`` for it to read."""

from torchstream.telemetry._prometheus import MetricsServer, PipelineCollector, serve_metrics

__all__ = ["MetricsServer", "PipelineCollector", "serve_metrics"]
