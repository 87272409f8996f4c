"""One trace from the client to the module: the module's frame span continues the trace of
the client span that sent the image (W3C traceparent in the wire header)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
pytest.importorskip("opentelemetry.sdk", reason="pip install 'torchstream[telemetry]'")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from torchstream.client import Sink, Source
from torchstream.telemetry import OtelFrameTracer
from torchstream.testing import RectangleDetector
from torchstream.transport import Module


def test_the_module_continues_the_clients_trace(tmp_path: Path, png: bytes) -> None:
    exporter = InMemorySpanExporter()
    module_provider = TracerProvider(sampler=ALWAYS_ON)
    module_provider.add_span_processor(SimpleSpanProcessor(exporter))
    module = Module(
        [RectangleDetector()],
        inbound=f"router+bind:ipc://{tmp_path}/in",
        outbound=f"push+bind:ipc://{tmp_path}/out",
        tracer=OtelFrameTracer(module_provider.get_tracer("module")),
    )
    thread = threading.Thread(target=module.run)
    thread.start()
    assert module.ready.wait(10)
    client_tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("client")
    try:
        with Source(f"dealer+connect:ipc://{tmp_path}/in") as source, Sink(
            f"pull+connect:ipc://{tmp_path}/out"
        ) as sink:
            with client_tracer.start_as_current_span("upload") as span:
                sent = source.send_image("web", png)
            result = sink.recv(20)
            module.stop()  # while the sink still reads: the end of stream goes out at once
            assert sink.recv(20).end_of_stream
    finally:
        module.stop()
        thread.join(30)
    context = span.get_span_context()
    assert sent.trace_id == result.trace_id == f"{context.trace_id:032x}"
    frame_spans = [s for s in exporter.get_finished_spans() if s.parent is not None
                   and s.parent.span_id == context.span_id]
    assert frame_spans, [s.name for s in exporter.get_finished_spans()]
    root = frame_spans[0]
    assert root.context.trace_id == context.trace_id  # same trace, child of the client span
    children = [s for s in exporter.get_finished_spans()
                if s.parent is not None and s.parent.span_id == root.context.span_id]
    assert root.name == "frame"
    assert {"decode", "stage rectangles", "sink publish"} <= {s.name for s in children}
