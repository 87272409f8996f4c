"""Prometheus metrics scraped over HTTP on 127.0.0.1 from a real pipeline."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence

import pytest

from torchstream import BatchPolicy, Frame, Pipeline

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="pip install 'torchstream[telemetry]'"
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from torchstream.codecs import nvdec_sessions  # noqa: E402
from torchstream.codecs._nvdec_sessions import _Session  # noqa: E402
from torchstream.sinks import CallbackSink  # noqa: E402
from torchstream.telemetry import serve_metrics  # noqa: E402
from torchstream.testing import RectangleDetector, SyntheticSource  # noqa: E402


class FailsOnSeven:
    name = "picky"

    def process(self, frames: Sequence[Frame]) -> None:
        if any(f.seq == 7 for f in frames):
            raise ValueError("seven")


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


Samples = dict[str, list[tuple[dict[str, str], float]]]


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


@pytest.mark.parametrize("per_source", [True, False])
def test_metrics_follow_the_pipeline(per_source: bool) -> None:
    detector = RectangleDetector(batch_policy=BatchPolicy(max_size=4, max_wait_seconds=0.01))
    with Pipeline([detector, FailsOnSeven()], [CallbackSink(lambda f: None)]) as pipeline:
        server = serve_metrics(pipeline, port=0, per_source_labels=per_source)
        for sid in ("a", "b"):
            pipeline.add_source(SyntheticSource(sid, frames=10))
        pipeline.wait()
    try:  # after the pipeline closed: the sinks have drained too
        samples = scrape(server.port)
    finally:
        server.close()
    if per_source:
        assert value(samples, "torchstream_frames_in_total", source="a") == 10
        assert value(samples, "torchstream_frames_out_total", source="b") == 9
        assert value(samples, "torchstream_frames_dropped_total", source="a",
                     reason="stage_error") == 1
    else:
        assert all("source" not in lab for lab, _ in samples["torchstream_frames_in_total"])
        assert value(samples, "torchstream_frames_in_total") == 20
        assert value(samples, "torchstream_frames_dropped_total", reason="stage_error") == 2
    assert value(samples, "torchstream_stage_frames_total", stage="rectangles") == 20
    assert value(samples, "torchstream_stage_errors_total", stage="picky") == 2
    assert value(samples, "torchstream_stage_batch_seconds_count", stage="rectangles") > 0
    assert value(samples, "torchstream_stage_batch_size_frames_sum", stage="rectangles") == 20
    assert value(samples, "torchstream_stage_batch_seconds_bucket", stage="picky",
                 le="+Inf") == value(samples, "torchstream_stage_batch_seconds_count",
                                     stage="picky")
    assert value(samples, "torchstream_sink_frames_total", sink="callback") == 18
    assert value(samples, "torchstream_sessions_open") == 0
    assert value(samples, "torchstream_decoders", kind="pyav") == 0


def test_nvdec_session_pool_counts_are_exported() -> None:
    pool = nvdec_sessions()
    pool.clear()
    before = pool.statistics()
    kept = _Session(decoder=object(), cuda_stream=None, key=(0, "h264", 64, 64, "yuv420p", "x"))
    pool.give(kept)  # what a source that ended cleanly does
    with Pipeline([]) as pipeline:
        server = serve_metrics(pipeline, port=0)
        try:
            samples = scrape(server.port)
        finally:
            server.close()
    assert value(samples, "torchstream_nvdec_sessions_idle") == 1
    assert value(samples, "torchstream_nvdec_sessions_destroyed_total") == before.destroyed
    assert value(samples, "torchstream_nvdec_sessions_opened_total") == before.created
    assert kept.decoder is None  # the pipeline's close emptied the pool


def test_metrics_server_binds_loopback_and_closes() -> None:
    with Pipeline([]) as pipeline:
        server = serve_metrics(pipeline, port=0)
        assert server.port > 0
        assert "torchstream_sessions_open" in scrape(server.port)
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_readiness_and_status() -> None:
    pipeline = Pipeline([RectangleDetector()])
    with pipeline:
        server = serve_metrics(pipeline, port=0)
        assert get(server.port, "/healthz")[0] == 200
        code, body = get(server.port, "/readyz")
        assert code == 503 and body["reason"] == "no source bound yet"
        pipeline.add_source(SyntheticSource("cam", frames=3))
        pipeline.wait()
        assert get(server.port, "/readyz")[0] == 200
        code, status = get(server.port, "/status")
        assert code == 200 and status["frames_in"] == 3
        assert status["sources"]["cam"]["frames_out"] == 3  # type: ignore[index]
        assert get(server.port, "/nope")[0] == 404
    code, body = get(server.port, "/healthz")
    assert code == 503 and body["reason"] == "pipeline is closed"
    server.close()
