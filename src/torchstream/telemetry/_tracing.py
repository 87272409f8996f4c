"""OpenTelemetry tracing of frames: a root span per sampled frame, a child span per stage and
sink, context continued from a W3C ``traceparent`` a client brought."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from torchstream._errors import MissingDependencyError
from torchstream.frame import Frame

try:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import Span, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("opentelemetry-sdk", "telemetry") from exc

__all__ = [
    "OtelAdapterTracer",
    "OtelFrameTracer",
    "TraceLogFilter",
    "configure_tracing",
    "frame_span",
    "traceparent",
]

_propagator = TraceContextTextMapPropagator()
_SPAN = "_otel_span"
_TRACER = "_otel_tracer"


class OtelFrameTracer:
    """A :class:`~torchstream.pipeline.FrameTracer` on OpenTelemetry.

    Each frame gets a root span ``frame`` (attributes ``torchstream.source_id``,
    ``torchstream.seq``), starting when the source began reading it, with a ``decode`` child
    span for the read and decode, child of the context in ``frame.__dict__["_traceparent"]`` when a
    client sent one. Sampling is the tracer provider's (``ParentBased(TraceIdRatioBased)``
    from :func:`configure_tracing`): unsampled frames cost one sampling decision. Stage and
    sink work on a sampled frame is a child span ``stage <name>`` / ``sink <name>`` with
    ``torchstream.batch.size`` and ``torchstream.batch.id`` (frames batched together share
    the id). A dropped frame's span ends with an error status naming the reason.

    A sampled frame's ``_traceparent`` becomes its ``frame`` span's (same trace id, the span
    as parent), so what the frame causes downstream continues under it: a module's result
    messages carry it, and a sink adapter's span is a child of the module's ``frame`` span.
    """

    def __init__(self, tracer: Any = None) -> None:
        self._tracer = tracer or trace.get_tracer("torchstream")
        self._batches = itertools.count()

    def start_frame(self, frame: Frame) -> None:
        parent = None
        header = frame.__dict__.get("_traceparent")
        if header:
            parent = _propagator.extract({"traceparent": header})
        decode_started = frame.__dict__.get("_decode_started_ns")
        span = self._tracer.start_span(
            "frame",
            context=parent,
            attributes={"torchstream.source_id": frame.source_id, "torchstream.seq": frame.seq},
            start_time=decode_started,
        )
        if not span.is_recording():
            span.end()
            return
        frame.__dict__[_SPAN] = span
        frame.__dict__[_TRACER] = self._tracer
        frame.__dict__["_traceparent"] = _header(span)
        if decode_started is not None:  # the read and decode of this frame, already done
            self._tracer.start_span(
                "decode",
                context=trace.set_span_in_context(span),
                attributes={"torchstream.codec": frame.codec},
                start_time=decode_started,
            ).end()

    @contextlib.contextmanager
    def stage(self, name: str, frames: Sequence[Frame]) -> Iterator[None]:
        roots = [f.__dict__[_SPAN] for f in frames if _SPAN in f.__dict__]
        if not roots:
            yield
            return
        attributes = {"torchstream.batch.size": len(frames), "torchstream.batch.id": next(
            self._batches
        )}
        spans = [
            self._tracer.start_span(
                name if " " in name else f"stage {name}",
                context=trace.set_span_in_context(root),
                attributes=attributes,
            )
            for root in roots
        ]
        try:
            yield
        finally:
            for span in spans:
                span.end()

    def end_frame(self, frame: Frame, outcome: str) -> None:
        # The span stays on the frame: sink spans, which come after, are its children.
        span: Span | None = frame.__dict__.get(_SPAN)
        if span is None or not span.is_recording():
            return
        span.set_attribute("torchstream.outcome", outcome)
        if outcome != "out":
            span.set_status(Status(StatusCode.ERROR, f"dropped: {outcome}"))
        span.end()


@contextlib.contextmanager
def frame_span(frame: Frame, name: str, tracer: Any = None) -> Iterator[Span | None]:
    """A span of your own, nested under the frame's span (in a stage's ``process``):
    ``with frame_span(frame, "tracker.update"): ...``. Yields None for unsampled frames."""
    root = frame.__dict__.get(_SPAN)
    if root is None:
        yield None
        return
    tracer = tracer or frame.__dict__.get(_TRACER) or trace.get_tracer("torchstream")
    with tracer.start_as_current_span(name, context=trace.set_span_in_context(root)) as span:
        yield span


def traceparent(frame: Frame) -> str | None:
    """The W3C ``traceparent`` of a sampled frame's span, to carry it to another process."""
    root = frame.__dict__.get(_SPAN)
    return None if root is None else _header(root)


def _header(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


class OtelAdapterTracer:
    """An :class:`~torchstream.transport._adapter_stats.AdapterTracer` on OpenTelemetry: the
    spans of the processes at a module's edges.

    A source adapter opens a span ``name`` (``source video``, kind PRODUCER, attributes
    ``torchstream.source_id`` and ``torchstream.seq``) around each frame message it sends,
    sampled by the tracer provider, and sends its ``traceparent`` in the message header,
    sampled or not, so the module follows the adapter's decision. A sink adapter opens a span
    ``name`` (``sink json``, kind CONSUMER) around the writers' work on each result, a child
    of the result's ``traceparent`` (the module's ``frame`` span when the module traced it).
    """

    def __init__(self, name: str, tracer: Any = None) -> None:
        self._name = name
        self._tracer = tracer or trace.get_tracer("torchstream")

    @contextlib.contextmanager
    def sending(self, source_id: str, seq: int) -> Iterator[str | None]:
        span = self._tracer.start_span(
            self._name,
            kind=trace.SpanKind.PRODUCER,
            attributes={"torchstream.source_id": source_id, "torchstream.seq": seq},
        )
        try:
            yield _header(span)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    @contextlib.contextmanager
    def writing(self, result: Any) -> Iterator[None]:
        parent = None
        if result.traceparent:
            parent = _propagator.extract({"traceparent": result.traceparent})
        span = self._tracer.start_span(
            self._name,
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "torchstream.source_id": result.source_id,
                "torchstream.seq": result.seq,
                "torchstream.content": result.content,
            },
        )
        try:
            yield
        finally:
            span.end()


Exporter = Literal["otlp-http", "otlp-grpc", "console"]


def configure_tracing(
    *, ratio: float, exporter: Exporter | SpanExporter = "otlp-http", service: str = "torchstream"
) -> TracerProvider:
    """Install a tracer provider sampling ``ratio`` of the frames (parent-based: a client's
    sampled trace is always followed) and exporting in batches. The OTLP exporters read their
    endpoint and headers from the standard ``OTEL_EXPORTER_OTLP_*`` environment variables.
    Returns the provider (call ``shutdown()`` on it to flush at exit)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        resource=Resource.create({"service.name": service}),
    )
    if exporter == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter: SpanExporter = OTLPSpanExporter()
    elif exporter == "otlp-grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise MissingDependencyError(
                "opentelemetry-exporter-otlp-proto-grpc", "otlp-grpc"
            ) from exc
        span_exporter = GrpcExporter()
    elif exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        span_exporter = ConsoleSpanExporter()
    elif isinstance(exporter, SpanExporter):
        span_exporter = exporter
    else:
        raise ValueError(f"exporter must be otlp-http, otlp-grpc or console, got {exporter!r}")
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider


class TraceLogFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex) to log records: those of the frame a runtime
    record is about, else of the current span. Install it on a handler next to
    :class:`~torchstream._logging.JsonFormatter` (the CLI does when tracing is on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        frame = getattr(record, "_ts_frame", None)
        span = frame.__dict__.get(_SPAN) if frame is not None else None
        context = (span or trace.get_current_span()).get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True
