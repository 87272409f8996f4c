"""OpenTelemetry spans of frames, stages and sinks, checked with the SDK's in-memory exporter
and, for export, a real OTLP/HTTP exporter against a collector stand-in on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Sequence

import pytest

pytest.importorskip("opentelemetry.sdk", reason="pip install 'torchstream[telemetry]'")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import StatusCode

from torchstream import BatchPolicy, Frame, Pipeline
from torchstream.sinks import CallbackSink
from torchstream.telemetry import OtelFrameTracer, frame_span, traceparent
from torchstream.testing import RectangleDetector, SyntheticSource

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Annotated:
    """A stage that opens a span of its own inside the frame's trace."""

    name = "annotated"

    def __init__(self) -> None:
        self.headers: list[str | None] = []

    def process(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            with frame_span(frame, "annotated.inner"):
                self.headers.append(traceparent(frame))
            if frame.seq == 4:
                raise ValueError("four")


class FromClient(SyntheticSource):
    def frames(self) -> Iterator[Frame]:
        for frame in super().frames():
            frame.__dict__["_traceparent"] = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"
            yield frame


def traced(sampler: object, sources: list[SyntheticSource]) -> tuple[list[object], Annotated]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = OtelFrameTracer(provider.get_tracer("test"))
    annotated = Annotated()
    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=4, max_wait_seconds=0.01))
    with Pipeline(
        [detector, annotated], [CallbackSink(lambda f: None)], tracer=tracer
    ) as pipeline:
        for source in sources:
            pipeline.add_source(source)
        pipeline.wait()
    return list(exporter.get_finished_spans()), annotated


def test_every_sampled_frame_has_a_tree_of_spans() -> None:
    spans, annotated = traced(ALWAYS_ON, [SyntheticSource("a", frames=6)])
    roots = {s.context.span_id: s for s in spans if s.name == "frame"}
    assert len(roots) == 6
    by_parent: dict[int, list[str]] = {}
    for span in spans:
        if span.parent is not None:
            by_parent.setdefault(span.parent.span_id, []).append(span.name)
    for span_id, root in roots.items():
        children = sorted(by_parent[span_id])
        if root.attributes["torchstream.seq"] == 4:
            assert root.status.status_code == StatusCode.ERROR
            assert "stage_error" in (root.status.description or "")
            assert "sink callback" not in children
        else:
            # A batch that held frame 4 was retried frame by frame: stages may appear twice.
            assert set(children) == {
                "annotated.inner", "decode", "sink callback", "stage annotated",
                "stage rectangles",
            }
            assert children.count("sink callback") == 1
            assert root.attributes["torchstream.outcome"] == "out"
    stage_spans = [s for s in spans if s.name == "stage rectangles"]
    assert all(s.attributes["torchstream.batch.size"] >= 1 for s in stage_spans)
    assert all(h is not None and h.startswith("00-") for h in annotated.headers)


def test_unsampled_frames_make_no_spans() -> None:
    spans, annotated = traced(ALWAYS_OFF, [SyntheticSource("a", frames=5)])
    assert spans == [] and set(annotated.headers) == {None}


def test_a_client_traceparent_is_continued() -> None:
    spans, _ = traced(ALWAYS_ON, [FromClient("c", frames=3)])
    roots = [s for s in spans if s.name == "frame"]
    assert len(roots) == 3
    assert all(format(s.context.trace_id, "032x") == CLIENT_TRACE for s in roots)
    assert all(format(s.parent.span_id, "016x") == "00f067aa0ba902b7" for s in roots)


def test_otlp_http_export_reaches_a_collector_on_loopback() -> None:
    received: list[tuple[str, str, int]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], len(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces")
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with Pipeline(
            [RectangleDetector()], tracer=OtelFrameTracer(provider.get_tracer("t"))
        ) as pipeline:
            pipeline.add_source(SyntheticSource("a", frames=2))
            pipeline.wait()
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert received and all(path == "/v1/traces" for path, _, _ in received)
    assert all(kind == "application/x-protobuf" and size > 0 for _, kind, size in received)


def test_cli_traces_to_the_console(tmp_path: object, lossless_file: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    pipeline = Path(str(tmp_path)) / "p.py"
    pipeline.write_text(
        "from torchstream import PipelineSpec\n"
        "from torchstream.testing import RectangleDetector\n"
        "def build(config, options):\n"
        "    return PipelineSpec(stages=[RectangleDetector()])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "torchstream.cli", "run", str(pipeline), "-i", str(lossless_file),
         "-q", "--trace-ratio", "1", "--trace-exporter", "console"],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert out.count('"name": "frame"') == 30 and '"name": "stage rectangles"' in out


def test_log_records_about_a_frame_carry_its_trace_id() -> None:
    import io
    import json
    import logging

    from torchstream._logging import JsonFormatter
    from torchstream.telemetry import TraceLogFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceLogFilter())
    logger = logging.getLogger("torchstream")
    logger.addHandler(handler)
    try:
        spans, _ = traced(ALWAYS_ON, [SyntheticSource("a", frames=6)])
    finally:
        logger.removeHandler(handler)
    failed_root = next(
        s for s in spans if s.name == "frame" and s.attributes["torchstream.seq"] == 4
    )
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(e for e in entries if "failed on a#4" in e["message"])
    assert entry["trace_id"] == format(failed_root.context.trace_id, "032x")
    assert entry["source_id"] == "a" and entry["seq"] == 4 and "_ts_frame" not in entry
