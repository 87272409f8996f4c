"""POST /v1/infer through a real uvicorn server: results, formats, traces, errors, limits."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest
from tests.http._support import Gate, Measure, jpeg, png, running

from torchstream.http import InProcessBackend, ServeConfig, create_app


@pytest.fixture(scope="module")
def url():
    config = ServeConfig(max_body_bytes=200_000, max_image_pixels=1_000_000,
                         max_image_side=2000)
    with running(create_app(InProcessBackend([Measure()]), config, metrics=True)) as base:
        yield base


def post(url: str, body: bytes, content_type: str | None = "image/jpeg", **headers: str):
    if content_type:
        headers["content-type"] = content_type
    return httpx.post(f"{url}/v1/infer", content=body, headers=headers, timeout=30)


def test_jpeg_result_has_objects_attributes_and_timings(url):
    reply = post(url, jpeg(64, 48, value=100))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["width"], body["height"]) == (64, 48)
    assert body["source_id"] == "http"
    assert body["objects"][0]["label"] == "thing"
    assert body["objects"][0]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert 100 < body["attributes"]["mean"] < 160  # the picture's, decoded
    assert len(body["trace_id"]) == 32
    assert body["timings"]["total_ms"] >= body["timings"]["pipeline_ms"] > 0


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_png_and_octet_stream(url, content_type):
    reply = post(url, png(30, 20), content_type)
    assert reply.status_code == 200, reply.text
    assert (reply.json()["width"], reply.json()["height"]) == (30, 20)


def test_multipart_upload(url):
    reply = httpx.post(f"{url}/v1/infer", files={"image": ("a.jpg", jpeg(40, 30), "image/jpeg")})
    assert reply.status_code == 200, reply.text
    assert reply.json()["width"] == 40


def test_traceparent_is_continued(url):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = post(url, jpeg(), traceparent=traceparent)
    assert reply.json()["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    # An invalid one is ignored (W3C): a new trace.
    reply = post(url, jpeg(), traceparent="00-zz")
    assert reply.status_code == 200 and len(reply.json()["trace_id"]) == 32


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


def _truncated_jpeg() -> bytes:
    """A JPEG whose frame header is whole but which stops before its picture data (FFmpeg
    conceals a scan cut short; without a scan it has nothing to decode)."""
    data = jpeg(64, 48)
    return data[: data.index(b"\xff\xda")]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"", "image/jpeg", 400, "empty body"),
        (b"hello", "text/plain", 415, "unsupported Content-Type"),
        (b"hello", None, 415, "unsupported Content-Type"),
        (b"not an image at all", "application/octet-stream", 415, "neither a JPEG nor a PNG"),
        (png(), "image/jpeg", 415, "says JPEG but the body is a PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image/jpeg", 400, "malformed JPEG"),
        (_png_header(100_000, 100_000), "image/png", 422, "exceeds the limits"),
        (_png_header(1500, 1000), "image/png", 422, "1500x1000 pixels exceeds"),
        (jpeg(2048, 8), "image/jpeg", 422, "2048x8 pixels exceeds"),
        (_truncated_jpeg(), "image/jpeg", 422, "does not decode"),
        (b"x" * 200_001, "image/jpeg", 413, "exceeds the limit of 200000 bytes"),
    ],
    ids=["empty", "text", "no-type", "garbage", "mismatch", "bad-header", "bomb", "pixels",
         "side", "truncated", "too-big"],
)
def test_bad_input_gets_a_clear_4xx(url, body, content_type, status, words):
    reply = post(url, body, content_type)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]
    assert reply.json()["status"] == status
    assert post(url, jpeg()).status_code == 200  # and the server goes on


def test_body_limit_applies_while_streaming_without_content_length(url):
    def chunks():
        for _ in range(100):
            yield b"\xff" * 10_000

    reply = httpx.post(f"{url}/v1/infer", content=chunks(),
                       headers={"content-type": "image/jpeg"})
    assert reply.status_code == 413
    read = int(reply.json()["error"].split("read ")[1].split()[0])
    assert 200_000 < read < 1_000_000  # stopped early, not after the whole megabyte


def test_malformed_multipart(url):
    reply = post(url, b"--x\r\nnonsense", "multipart/form-data; boundary=x")
    assert reply.status_code == 400
    reply = httpx.post(f"{url}/v1/infer", data={"field": "value"}, files={})
    assert reply.status_code in (400, 415)


def test_deadline_query_is_validated(url):
    reply = httpx.post(f"{url}/v1/infer?deadline_seconds=-1", content=jpeg(),
                       headers={"content-type": "image/jpeg"})
    assert reply.status_code == 422


def test_openapi_documents_every_route(url):
    schema = httpx.get(f"{url}/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/infer", "/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz",
                 "/v1/status", "/metrics"):
        assert path in paths, path
    infer = paths["/v1/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {
        "image/jpeg", "image/png", "application/octet-stream", "multipart/form-data"
    }
    for code in ("200", "401", "413", "415", "422", "429", "503", "504"):
        assert code in infer["responses"], code
    assert "InferResult" in schema["components"]["schemas"]


def test_metrics_count_requests_and_show_the_pipeline(url):
    post(url, jpeg())
    post(url, b"", "image/jpeg")
    text = httpx.get(f"{url}/metrics").text
    assert 'torchstream_http_requests_total{method="POST",route="/v1/infer",status="200"}' in text
    assert 'torchstream_http_requests_total{method="POST",route="/v1/infer",status="400"}' in text
    assert "torchstream_http_request_duration_seconds_bucket" in text
    assert "torchstream_http_in_flight 0.0" in text
    assert "torchstream_frames_in_total" in text  # the pipeline's own


def test_health_and_status(url):
    assert httpx.get(f"{url}/healthz").json() == {"ok": True, "reason": "models loaded and warm"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    status = httpx.get(f"{url}/v1/status").json()
    assert status["admission"]["max_in_flight"] == 256
    assert status["pipeline"]["running"] is True


def test_a_failing_stage_answers_500_and_others_go_on():
    gate = Gate()
    gate.release()
    with running(create_app(InProcessBackend([gate]))) as base:
        reply = post(base, jpeg(17, 10))
        assert reply.status_code == 500
        assert "width 17 is not allowed here" in reply.json()["error"]
        assert post(base, jpeg(18, 10)).status_code == 200
