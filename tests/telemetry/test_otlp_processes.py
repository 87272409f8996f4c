"""One trace across processes: a source adapter, a module and a sink adapter run as real
`torchstream` processes, export their spans over OTLP to a receiver in this test that decodes
the protobuf requests, and the spans of one frame form one tree across the three."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")
pytest.importorskip("opentelemetry.sdk", reason="pip install 'torchstream[telemetry]'")
pytest.importorskip("opentelemetry.proto", reason="pip install opentelemetry-proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from torchstream import decode_json
from torchstream.testing import SyntheticVideo, write_video

PIPELINE = '''
from torchstream import PipelineSpec, RunConfig
from torchstream.testing import RectangleDetector


def build(config: RunConfig, options: None) -> PipelineSpec:
    return PipelineSpec(stages=[RectangleDetector(batch_policy=config.batch_policy)])
'''

FRAMES = 24


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: a.value for a in resource_spans.resource.attributes}
        service = resource["service.name"].string_value
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, Any] = {}
                for attribute in span.attributes:
                    value = attribute.value
                    attributes[attribute.key] = getattr(value, value.WhichOneof("value"))
                spans.append(Span(
                    service=service,
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    kind=span.kind,
                    attributes=attributes,
                ))
    return spans


class OtlpHttpReceiver:
    """POST /v1/traces on 127.0.0.1: decodes each ExportTraceServiceRequest (gzip or not),
    keeps its spans and the headers it came with, answers an empty success."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or (
                    self.headers.get("Content-Type") != "application/x-protobuf"
                ):
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                receiver.spans.extend(spans_of(request))
                receiver.headers.append(dict(self.headers.items()))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchstream.cli", *args]


def otel_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20collector-key",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    return env


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_one_trace_from_source_adapter_through_module_to_sink_adapter(tmp_path: Path) -> None:
    pipeline = tmp_path / "rects.py"
    pipeline.write_text(PIPELINE)
    clip = write_video(tmp_path / "cam.mp4", SyntheticVideo(width=160, height=96), FRAMES,
                       codec="libx264")
    inbound, outbound = f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out"
    with OtlpHttpReceiver() as receiver:
        env = otel_env(receiver.endpoint)
        with process(cli("module", str(pipeline), "--in", f"router+bind:{inbound}",
                         "--out", f"push+bind:{outbound}", "--trace-ratio", "1"), env) as module, \
                process(cli("sink", "json", str(tmp_path / "results.jsonl"), "--in",
                            f"pull+connect:{outbound}", "--exit-after", "1",
                            "--trace-ratio", "1"), env) as sink:
            # Half the frames sampled at the source: the module and the sink follow its
            # decision, frame by frame.
            source = subprocess.run(
                cli("source", "video", str(clip), "--out", f"dealer+connect:{inbound}",
                    "--trace-ratio", "0.5"),
                env=env, capture_output=True, timeout=120, check=False,
            )
            assert source.returncode == 0, source.stderr.decode()
            assert sink.wait(60) == 0, sink.stderr.read().decode()  # type: ignore[union-attr]
            module.send_signal(signal.SIGTERM)
            assert module.wait(60) == 0, module.stderr.read().decode()  # type: ignore[union-attr]
    results = [decode_json(line) for line in (tmp_path / "results.jsonl").read_bytes().splitlines()]
    assert len(results) == FRAMES
    assert all(h.get("authorization") == "Bearer collector-key" for h in receiver.headers)

    spans = receiver.spans
    by_id = {span.span_id: span for span in spans}
    sent = {s.attributes["torchstream.seq"]: s for s in spans if s.name == "source video"}
    assert 0 < len(sent) < FRAMES, "ratio 0.5 of 24 frames: some sampled, some not"
    for span in sent.values():
        assert span.service == "torchstream-source" and span.parent_id == ""
        assert span.kind == 4  # PRODUCER
        assert span.attributes["torchstream.source_id"] == "cam.mp4"
    frames = {s.attributes["torchstream.seq"]: s for s in spans if s.name == "frame"}
    assert frames.keys() == sent.keys(), "the module traces the frames sampled at the source"
    written = {s.attributes["torchstream.seq"]: s for s in spans if s.name == "sink json"}
    assert written.keys() == sent.keys(), "so does the sink adapter"

    for seq, source_span in sent.items():
        frame = frames[seq]
        tree = [s for s in spans if s.trace_id == source_span.trace_id]
        # source video (torchstream-source)
        # └── frame (torchstream-module)
        #     ├── decode
        #     ├── stage rectangles
        #     ├── sink publish
        #     └── sink json (torchstream-sink)
        assert sorted((s.service, s.name) for s in tree) == sorted([
            ("torchstream-source", "source video"),
            ("torchstream-module", "frame"),
            ("torchstream-module", "decode"),
            ("torchstream-module", "stage rectangles"),
            ("torchstream-module", "sink publish"),
            ("torchstream-sink", "sink json"),
        ]), seq
        assert frame.parent_id == source_span.span_id
        assert frame.attributes["torchstream.outcome"] == "out"
        for s in tree:
            if s.name in ("decode", "stage rectangles", "sink publish"):
                assert s.parent_id == frame.span_id, s
        sink_span = written[seq]
        assert sink_span.parent_id == frame.span_id and sink_span.kind == 5  # CONSUMER
        assert by_id[sink_span.parent_id].service == "torchstream-module"


def test_export_over_otlp_grpc(tmp_path: Path) -> None:
    grpc = pytest.importorskip(
        "grpc", reason="pip install opentelemetry-exporter-otlp-proto-grpc (brings grpcio)"
    )
    pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received: list[Span] = []
    metadata: list[dict[str, str]] = []

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
            received.extend(spans_of(request))
            metadata.append(dict(context.invocation_metadata()))
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        pipeline = tmp_path / "rects.py"
        pipeline.write_text(PIPELINE)
        clip = write_video(tmp_path / "cam.mkv", SyntheticVideo(width=96, height=64), 5)
        env = otel_env(f"http://127.0.0.1:{port}")
        env["OTEL_SERVICE_NAME"] = "cameras"
        done = subprocess.run(
            cli("run", str(pipeline), "--input", str(clip), "--meta", str(tmp_path / "m.jsonl"),
                "--trace-ratio", "1", "--trace-exporter", "otlp-grpc"),
            env=env, capture_output=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
    finally:
        server.stop(grace=None)
    assert metadata and all(m.get("authorization") == "Bearer collector-key" for m in metadata)
    frames = [s for s in received if s.name == "frame"]
    assert len(frames) == 5 and {s.service for s in received} == {"cameras"}
    for frame in frames:
        children = sorted(s.name for s in received if s.parent_id == frame.span_id)
        assert children == ["decode", "sink jsonl", "stage rectangles"], children
