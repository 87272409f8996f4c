"""The NATS framing of the wire protocol, sans-IO: round trips and every rejection."""

from __future__ import annotations

import struct

import pytest

from torchstream import Frame
from torchstream._errors import ProtocolError
from torchstream.nats._wire import (
    MSG_ID_HEADER,
    OBJECT_HEADER,
    WIRE_HEADER,
    KeyframePosition,
    check_object,
    decode,
    decode_keyframe_position,
    encode,
    encode_keyframe_position,
)
from torchstream.transport import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    Limits,
    PacketPayload,
    ResultMessage,
)

TRACE = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100


def _packet(seq: int = 3, *, keyframe: bool = True) -> FrameMessage:
    return FrameMessage(
        source_id="cam-1", seq=seq, pts_seconds=0.1 * seq, keyframe=keyframe,
        payload=PacketPayload(codec="h264", width=320, height=240, time_base=(1, 90000),
                              pts=9000 * seq),
        traceparent=TRACE,
    )


def test_a_packet_round_trips_through_subject_headers_and_body() -> None:
    message = _packet()
    encoded = encode("ts.in.cam-1", message, b"\x00\x00\x00\x01\x65data")
    assert encoded.headers == {
        WIRE_HEADER: "1", MSG_ID_HEADER: "cam-1:3", "traceparent": TRACE
    }
    assert encoded.object_payload is None
    # The worker reads it from the partition subject the stream rewrote it to.
    decoded = decode("ts.p.17.cam-1", encoded.headers, encoded.body)
    assert decoded.message == message
    assert bytes(decoded.payload or b"") == b"\x00\x00\x00\x01\x65data"
    assert decoded.object_name is None


def test_end_of_stream_and_results_travel_too() -> None:
    eos = EndOfStream(source_id="cam-1", last_seq=9)
    encoded = encode("ts.in.cam-1", eos)
    assert encoded.headers[MSG_ID_HEADER] == "cam-1:eos:9"
    assert decode("ts.in.cam-1", encoded.headers, encoded.body).message == eos
    result = ResultMessage(frame=Frame(source_id="cam-1", seq=4, width=8, height=8))
    encoded = encode("ts.out.cam-1", result)
    decoded = decode("ts.out.cam-1", encoded.headers, encoded.body)
    assert decoded.message == result and decoded.payload is None


def test_a_large_image_goes_to_the_object_store_by_reference() -> None:
    message = FrameMessage(source_id="cam-1", seq=7, payload=ImagePayload(format="jpeg"))
    big = JPEG + b"\x01" * 2000
    encoded = encode("ts.in.cam-1", message, big, object_threshold_bytes=1000)
    assert encoded.headers[OBJECT_HEADER] == "cam-1/7"
    assert bytes(encoded.object_payload or b"") == big
    decoded = decode("ts.in.cam-1", encoded.headers, encoded.body)
    assert decoded.payload is None and decoded.object_name == "cam-1/7"
    assert bytes(check_object(decoded, big)) == big
    with pytest.raises(ProtocolError) as raised:
        check_object(decoded, b"GIF89a")
    assert raised.value.reason == "payload_mismatch"
    # A small image stays in the body; packets never go to the object store.
    assert encode("ts.in.cam-1", message, JPEG, object_threshold_bytes=1000).object_payload \
        is None
    assert encode("ts.in.cam-1", _packet(), b"\x00" * 3000,
                  object_threshold_bytes=1000).object_payload is None


def test_encode_refuses_what_a_receiver_would_reject() -> None:
    with pytest.raises(ValueError, match="does not end with the source id"):
        encode("ts.in.cam-2", _packet(), b"x")
    with pytest.raises(ValueError, match="pass it"):
        encode("ts.in.cam-1", _packet())
    with pytest.raises(ValueError, match="signature"):
        encode("ts.in.cam-1", FrameMessage(source_id="cam-1", seq=0,
                                           payload=ImagePayload(format="png")), JPEG)


def _body(header: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(header)) + header + payload


@pytest.mark.parametrize(
    ("subject", "headers", "body", "reason"),
    [
        ("ts.in.cam-1", None, b"", "wrong_version"),
        ("ts.in.cam-1", {WIRE_HEADER: "2"}, b"", "wrong_version"),
        ("ts.in.cam-1", {WIRE_HEADER: "1"}, b"\x00\x00", "parts"),
        ("ts.in.cam-1", {WIRE_HEADER: "1"}, b"\x00\x00\x01\x00abc", "parts"),
        ("ts.in.cam-1", {WIRE_HEADER: "1"}, _body(b"\xc1"), "bad_header"),
        ("ts.in.cam-9", "valid", None, "topic_mismatch"),
        ("ts.in.cam-1", "valid", b"trailing", "parts"),
        ("ts.in.cam-1", "object", None, "payload_mismatch"),
    ],
)
def test_decode_rejects_with_a_reason(
    subject: str, headers: object, body: bytes | None, reason: str
) -> None:
    eos = encode("ts.in.cam-1", EndOfStream(source_id="cam-1", last_seq=None))
    if headers == "valid":
        headers, body = eos.headers, eos.body + (body or b"")
    elif headers == "object":
        headers, body = {**eos.headers, OBJECT_HEADER: "cam-1/0"}, eos.body
    with pytest.raises(ProtocolError) as raised:
        decode(subject, headers, body or b"")  # type: ignore[arg-type]
    assert raised.value.reason == reason


def test_decode_checks_the_payload_and_the_limits() -> None:
    image = FrameMessage(source_id="cam-1", seq=0, payload=ImagePayload(format="jpeg"))
    good = encode("ts.in.cam-1", image, JPEG)
    with pytest.raises(ProtocolError) as raised:
        decode("ts.in.cam-1", good.headers, good.body[:-len(JPEG)] + b"GIF89a")
    assert raised.value.reason == "payload_mismatch"
    with pytest.raises(ProtocolError) as raised:
        decode("ts.in.cam-1", good.headers, good.body,
               limits=Limits(max_header_bytes=1 << 20, max_payload_bytes=10))
    assert raised.value.reason == "payload_too_large"
    with pytest.raises(ProtocolError) as raised:
        decode("ts.in.cam-1", good.headers, good.body,
               limits=Limits(max_header_bytes=4, max_payload_bytes=1 << 20))
    assert raised.value.reason == "header_too_large"
    wrong_reference = {**good.headers, OBJECT_HEADER: "cam-1/99"}
    header_only = good.body[: -len(JPEG)]
    with pytest.raises(ProtocolError) as raised:
        decode("ts.in.cam-1", wrong_reference, header_only)
    assert raised.value.reason == "payload_mismatch"


def test_keyframe_positions_round_trip_and_garbage_is_rejected() -> None:
    position = KeyframePosition(stream_seq=12, seq=30, pts_seconds=1.2)
    assert decode_keyframe_position(encode_keyframe_position(position)) == position
    with pytest.raises(ProtocolError) as raised:
        decode_keyframe_position(b"12")
    assert raised.value.reason == "bad_header"
