"""The sending half of the client's core (client/_requests.py): requests built, numbered and
checked before anything is sent. No sockets here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream.client import image_format
from torchstream.client._requests import Requests
from torchstream.transport import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    PacketPayload,
    RawPayload,
    decode,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_image_format_is_read_from_the_signature(jpeg: bytes, png: bytes) -> None:
    assert image_format(jpeg) == "jpeg"
    assert image_format(png) == "png"
    assert image_format(memoryview(png)) == "png"
    for data in (b"GIF89a" + bytes(20), b"", b"\xff\xd8"):
        with pytest.raises(ValueError, match="neither JPEG nor PNG"):
            image_format(data)


def test_an_image_becomes_a_frame_message_that_decodes(jpeg: bytes, png: bytes) -> None:
    requests = Requests()
    first = requests.image("cam", jpeg)
    second = requests.image("cam", png, pts_seconds=0.5)
    other = requests.image("door", jpeg)
    assert [first.sent.seq, second.sent.seq, other.sent.seq] == [0, 1, 0]
    message, payload = decode(second.parts)
    assert isinstance(message, FrameMessage)
    assert message.payload == ImagePayload(format="png")
    assert message.pts_seconds == 0.5
    assert message.metadata is None
    assert message.traceparent == second.sent.traceparent
    assert second.sent.trace_id == second.sent.traceparent[3:35]
    assert payload is not None and bytes(payload) == png
    assert first.sent.trace_id != second.sent.trace_id  # one trace per request


def test_attributes_travel_as_metadata_with_the_size_from_the_header(jpeg: bytes) -> None:
    out = Requests().image("cam", jpeg, attributes={"gps.lat": 48.85, "tags": ["a"]})
    message, _ = decode(out.parts)
    assert isinstance(message, FrameMessage) and message.metadata is not None
    metadata = message.metadata
    assert (metadata.source_id, metadata.seq) == ("cam", 0)
    assert (metadata.width, metadata.height) == (32, 24)
    assert metadata.attributes == {"gps.lat": 48.85, "tags": ["a"]}


def test_bad_images_are_rejected_before_a_seq_is_used(jpeg: bytes, png: bytes) -> None:
    requests = Requests()
    bad = [
        (b"GIF89a" + bytes(100), {}, "neither JPEG nor PNG"),
        (jpeg[:20], {}, "truncated JPEG"),
        (png[:16], {}, "truncated PNG"),
        (jpeg, {"format": "png"}, "does not start like a png"),
        (jpeg, {"format": "gif"}, "format must be"),
    ]
    for data, options, message in bad:
        with pytest.raises(ValueError, match=message):
            requests.image("cam", data, **options)
    assert requests.image("cam", jpeg).sent.seq == 0


def test_source_ids_pts_and_traceparents_are_checked(jpeg: bytes) -> None:
    requests = Requests()
    for source_id in ("", "x" * 257):
        with pytest.raises(ValueError, match="source_id"):
            requests.image(source_id, jpeg)
    with pytest.raises(ValueError, match="pts_seconds"):
        requests.image("cam", jpeg, pts_seconds=float("nan"))
    with pytest.raises(ValueError, match="traceparent"):
        requests.image("cam", jpeg, traceparent="00-abc-01")
    out = requests.image("cam", jpeg, traceparent=TRACEPARENT)
    assert out.sent.seq == 0
    assert out.sent.traceparent == TRACEPARENT
    assert out.sent.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_raw_pictures_from_numpy_torch_and_bytes() -> None:
    pixels = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
    requests = Requests()
    outs = [
        requests.raw("cam", pixels),
        requests.raw("cam", torch.from_numpy(pixels)),
        requests.raw("cam", pixels.tobytes(), width=32, height=24),
        requests.raw("cam", np.ascontiguousarray(pixels.transpose(1, 0, 2)).transpose(1, 0, 2)),
    ]
    for out in outs:
        message, payload = decode(out.parts)
        assert isinstance(message, FrameMessage)
        assert message.payload == RawPayload(width=32, height=24, format="rgb24")
        assert payload is not None and bytes(payload) == pixels.tobytes()
    assert [out.sent.seq for out in outs] == [0, 1, 2, 3]
    gray = decode(requests.raw("g", np.zeros((4, 6), np.uint8), format="gray8").parts)[0]
    nv12 = decode(requests.raw("n", np.zeros((6, 8), np.uint8), format="nv12").parts)[0]
    assert isinstance(gray, FrameMessage) and isinstance(nv12, FrameMessage)
    assert gray.payload == RawPayload(width=6, height=4, format="gray8")
    assert nv12.payload == RawPayload(width=8, height=4, format="nv12")


@pytest.mark.parametrize(
    ("pixels", "options", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), {}, "must be uint8"),
        (np.zeros((4, 4, 4), np.uint8), {}, r"shape \(height, width, 3\)"),
        (np.zeros((4, 4, 3), np.uint8), {"width": 5}, "disagree"),
        (bytes(48), {}, "need width= and height="),
        (bytes(47), {"width": 4, "height": 4}, "needs 48 bytes"),
        (np.zeros((4, 4, 3), np.uint8), {"format": "yuv"}, "format must be one of"),
        ("pixels", {}, "must be uint8"),
    ],
)
def test_bad_raw_pictures_are_rejected(pixels: object, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Requests().raw("cam", pixels, **options)


def test_packets_carry_their_timing() -> None:
    requests = Requests()
    out = requests.packet(
        "cam", b"\x00\x00\x00\x01\x65", codec="h264", width=64, height=48,
        time_base=(1, 90000), pts=45000, keyframe=True, extradata=b"\x01",
    )
    message, _ = decode(out.parts)
    assert isinstance(message, FrameMessage)
    assert message.pts_seconds == 0.5
    assert message.keyframe
    assert message.payload == PacketPayload(
        codec="h264", width=64, height=48, time_base=(1, 90000), pts=45000, extradata=b"\x01"
    )
    with pytest.raises(ValueError, match="time_base"):
        requests.packet("cam", b"x", codec="h264", width=64, height=48, time_base=(1, 0))
    with pytest.raises(ValueError, match="empty"):
        requests.packet("cam", b"", codec="h264", width=64, height=48, time_base=(1, 25))
    assert requests.last_seq("cam") == 0


def test_end_of_stream_carries_the_last_seq_and_restarts_numbering(jpeg: bytes) -> None:
    requests = Requests()
    requests.image("cam", jpeg)
    requests.image("cam", jpeg)
    eos = requests.end_of_stream("cam")
    message, payload = decode(eos.parts)
    assert message == EndOfStream(source_id="cam", last_seq=1, traceparent=eos.sent.traceparent)
    assert payload is None
    assert (eos.sent.seq, eos.sent.end_of_stream) == (1, True)
    assert requests.image("cam", jpeg).sent.seq == 0
    assert requests.end_of_stream("never-sent").sent.seq is None


def test_new_traces_are_sampled_for_the_configured_share() -> None:
    import pytest

    from torchstream.client._requests import Requests

    never = Requests(trace_sample_ratio=0.0)
    always = Requests()
    for seq in range(20):
        assert never.end_of_stream("a", traceparent=None).sent.traceparent.endswith("-00"), seq
        assert always.end_of_stream("a", traceparent=None).sent.traceparent.endswith("-01"), seq
    with pytest.raises(ValueError, match="trace_sample_ratio"):
        Requests(trace_sample_ratio=1.5)
