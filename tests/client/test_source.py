"""The blocking Source (client/_source.py) against a stand-in module over real sockets."""

from __future__ import annotations

import numpy as np
import pytest

zmq = pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import ClosedResourceError, OverloadedError  # noqa: E402
from torchstream.client import Result, SendResult, Sink, Source  # noqa: E402
from torchstream.transport import (  # noqa: E402
    FrameMessage,
    ImagePayload,
    RawPayload,
    Receiver,
)

TIMEOUT = 10.0  # seconds; only reached when something is broken


def _receive_all(sink: Sink, count: int) -> list[Result]:
    return [sink.recv(TIMEOUT) for _ in range(count)]


@pytest.mark.parametrize("content", ["none", "original"])
def test_round_trip_through_a_module(echo, jpeg: bytes, png: bytes, content: str) -> None:
    module = echo(content=content)
    pixels = np.full((24, 32, 3), 7, np.uint8)
    packet = b"\x00\x00\x00\x01\x65" + bytes(50)
    with Sink(module.sink_endpoint) as sink, Source(module.source_endpoint) as source:
        sent = [
            source.send_image("cam", jpeg, attributes={"n": 0}),
            source.send_image("cam", png, pts_seconds=0.04),
            source.send_frame("cam", pixels),
            source.send_packet("cam", packet, codec="h264", width=64, height=48,
                               time_base=(1, 90000), pts=7200, keyframe=True),
        ]
        ended = source.send_eos("cam")
        results = _receive_all(sink, len(sent) + 1)
        assert source.statistics().sent == 4 and source.statistics().end_of_streams == 1
    assert [r.seq for r in results] == [0, 1, 2, 3, 3]
    for result, request, data in zip(results, sent, [jpeg, png, pixels.tobytes(), packet],
                                     strict=False):
        assert result.trace_id == request.trace_id
        assert result.traceparent == request.traceparent
        assert result.frame is not None and result.frame.attributes["bytes"] == len(data)
        assert not result.end_of_stream
        if content == "original":
            assert result.content is not None and bytes(result.content) == data
        else:
            assert result.content is None and result.content_description is None
    assert results[0].frame is not None and results[0].frame.attributes["n"] == 0
    assert results[0].content_kind == content
    assert results[1].frame is not None and results[1].frame.pts_seconds == 0.04
    assert results[3].frame is not None and results[3].frame.pts_seconds == 0.08
    if content == "original":
        assert results[0].content_description == ImagePayload(format="jpeg")
        assert results[2].content_description == RawPayload(width=32, height=24, format="rgb24")
    eos = results[-1]
    assert eos.end_of_stream and eos.frame is None and eos.seq == 3
    assert eos.trace_id == ended.trace_id and ended.end_of_stream


def test_push_to_pull(echo, jpeg: bytes) -> None:
    module = echo(input="pull", output="push")
    with Sink(module.sink_endpoint) as sink, Source(module.source_endpoint) as source:
        sent = [source.send_image(f"cam-{i % 3}", jpeg) for i in range(30)]
        assert source.send_eos("cam-0").seq == 9  # push: nothing to wait for
        results = _receive_all(sink, 31)
    assert [(r.source_id, r.seq, r.trace_id) for r in results[:30]] == [
        (s.source_id, s.seq, s.trace_id) for s in sent
    ]
    assert results[30].end_of_stream


def test_eos_waits_for_the_modules_acknowledgement(echo, jpeg: bytes) -> None:
    module = echo(output="push")
    with Sink(module.sink_endpoint) as sink, Source(module.source_endpoint) as source:
        for _ in range(20):
            source.send_image("cam", jpeg)
        done = source.send_eos("cam", ack_timeout_seconds=TIMEOUT)
        # Acknowledged: the module had every frame before the end-of-stream.
        assert module.frames == 20
        assert (done.seq, done.end_of_stream) == (19, True)
        assert _receive_all(sink, 21)[-1].end_of_stream


def test_eos_without_acknowledgement_times_out(urls) -> None:
    with Receiver(f"router+bind:{urls()[0]}", ack_eos=False) as module, \
            Source(f"dealer+connect:{module.endpoint.url}") as source, \
            pytest.raises(TimeoutError, match="not acknowledged"):
        source.send_eos("cam", ack_timeout_seconds=0.1)


def test_bad_images_are_never_sent(urls, jpeg: bytes) -> None:
    with Receiver(f"pull+bind:{urls()[0]}") as module, \
            Source(f"push+connect:{module.endpoint.url}") as source:
        for data in (b"GIF89a" + bytes(64), b"", jpeg[:10]):
            with pytest.raises(ValueError, match=r"JPEG|PNG"):
                source.send_image("cam", data)
        with pytest.raises(ValueError, match="uint8"):
            source.send_frame("cam", np.zeros((2, 2, 3), np.int16))
        good = source.send_image("cam", jpeg)
        message, _ = module.recv(TIMEOUT)
        assert isinstance(message, FrameMessage)
        assert (message.seq, message.traceparent) == (0, good.traceparent)
        assert source.statistics().sent == 1
        with pytest.raises(TimeoutError):
            module.recv(0.05)


def test_a_module_not_keeping_up_overloads_the_source(jpeg: bytes) -> None:
    # Nobody connected: a bound push socket has no peer to queue for and cannot send.
    with Source("push+bind:tcp://127.0.0.1:*", send_timeout_seconds=0.05) as source, \
            pytest.raises(OverloadedError, match="nothing was sent"):
        source.send_image("cam", jpeg)


def test_the_active_span_is_the_trace_of_the_request(echo, jpeg: bytes) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider

    module = echo()
    tracer = TracerProvider().get_tracer("test")
    with Sink(module.sink_endpoint) as sink, Source(module.source_endpoint) as source:
        with tracer.start_as_current_span("upload") as span:
            sent = [source.send_image("cam", jpeg) for _ in range(2)]
        results = _receive_all(sink, 2)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert [s.trace_id for s in sent] == [trace_id, trace_id]
    assert [r.trace_id for r in results] == [trace_id, trace_id]
    assert [r.seq for r in results] == [0, 1]


@pytest.mark.parametrize("endpoint", ["pull+bind:tcp://127.0.0.1:*", "pub+bind:tcp://127.0.0.1:*",
                                      "router+bind:tcp://127.0.0.1:*", "rep+bind:tcp://a:1"])
def test_a_source_sends_on_dealer_req_or_push_only(endpoint: str) -> None:
    with pytest.raises(ValueError, match="needs a dealer or req or push endpoint"):
        Source(endpoint)


def test_closed_source_raises(jpeg: bytes) -> None:
    source = Source("push+bind:tcp://127.0.0.1:*")
    source.close()
    source.close()
    with pytest.raises(ClosedResourceError):
        source.send_image("cam", jpeg)
    with pytest.raises(ClosedResourceError):
        source.send_eos("cam")


def test_send_result_is_small_and_frozen() -> None:
    sent = SendResult("cam", 0, "a" * 32, f"00-{'a' * 32}-{'b' * 16}-01")
    with pytest.raises(AttributeError):
        sent.seq = 1  # type: ignore[misc]
