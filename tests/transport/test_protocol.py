"""The sans-IO protocol: round trips, one test per rejection reason, Rejects, the inbox."""

from __future__ import annotations

import threading

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'torchstream[transport]'")

from torchstream import Frame, Mask, ObjectMeta
from torchstream.transport import (
    PROTOCOL_VERSION,
    EndOfStream,
    EndOfStreamAck,
    FrameMessage,
    ImagePayload,
    Limits,
    Message,
    PacketPayload,
    ProtocolError,
    RawPayload,
    Receipt,
    Rejects,
    ResultAck,
    ResultMessage,
    Shutdown,
    decode,
    encode,
)
from torchstream.transport._inbox import Inbox, answer_problem

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

finite = st.floats(allow_nan=False, allow_infinity=False)
source_ids = st.text(min_size=1, max_size=40)
seqs = st.integers(0, 2**63 - 1)
traceparents = st.none() | st.from_regex(
    r"\A[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"
)
dimensions = st.integers(1, 64)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[PacketPayload | ImagePayload | RawPayload, bytes] | None:
    kind = draw(st.sampled_from(["none", "packet", "image", "raw"]))
    if kind == "packet":
        description = PacketPayload(
            codec=draw(st.sampled_from(["h264", "hevc", "av1", "vp9", "mjpeg"])),
            width=draw(dimensions),
            height=draw(dimensions),
            time_base=(draw(st.integers(1, 1000)), draw(st.integers(1, 90_000))),
            pts=draw(st.none() | st.integers(-(2**62), 2**62)),
            dts=draw(st.none() | st.integers(-(2**62), 2**62)),
            extradata=draw(st.none() | st.binary(max_size=64)),
        )
        return description, draw(st.binary(min_size=1, max_size=256))
    if kind == "image":
        fmt = draw(st.sampled_from(["jpeg", "png"]))
        return ImagePayload(format=fmt), (JPEG if fmt == "jpeg" else PNG) + draw(st.binary())
    if kind == "raw":
        fmt = draw(st.sampled_from(["rgb24", "bgr24", "rgba", "gray8", "nv12"]))
        width, height = draw(dimensions), draw(dimensions)
        if fmt == "nv12":
            width, height = 2 * width, 2 * height
        description = RawPayload(width=width, height=height, format=fmt)
        size = description.nbytes
        return description, draw(st.binary(min_size=size, max_size=size))
    return None


def attribute_values() -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=8,
    )


objects = st.builds(
    ObjectMeta,
    id=st.integers(0, 1000),
    label=st.text(min_size=1, max_size=10),
    confidence=finite,
    box=st.lists(finite, min_size=4, max_size=4),
    mask=st.none() | st.builds(Mask, height=st.just(1), width=st.just(2), counts=st.just([1, 1])),
    track_id=st.none() | st.integers(0, 2**31),
    attributes=st.dictionaries(st.text(min_size=1, max_size=8), attribute_values(), max_size=3),
)


@st.composite
def frames_for(draw: st.DrawFn, source_id: str, seq: int) -> Frame:
    return Frame(
        source_id=source_id,
        seq=seq,
        pts_seconds=draw(st.none() | finite),
        width=draw(st.integers(1, 8192)),
        height=draw(st.integers(1, 8192)),
        codec=draw(st.sampled_from(["", "h264", "jpeg"])),
        objects=draw(st.lists(objects, max_size=3)),
        attributes=draw(st.dictionaries(st.text(max_size=8), attribute_values(), max_size=3)),
    )


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, bytes | None]:
    kind = draw(st.sampled_from(["frame", "result", "eos", "eos_ack", "result_ack", "shutdown"]))
    source_id, seq = draw(source_ids), draw(seqs)
    if kind in ("frame", "result"):
        drawn = draw(payloads())
        description, payload = drawn if drawn is not None else (None, None)
        if kind == "frame":
            metadata = draw(st.none() | frames_for(source_id, seq))
            message: Message = FrameMessage(
                source_id=source_id,
                seq=seq,
                pts_seconds=draw(st.none() | finite),
                keyframe=draw(st.booleans()),
                payload=description,
                traceparent=draw(traceparents),
                metadata=metadata,
            )
        else:
            content = "none" if description is None else "original"
            if isinstance(description, ImagePayload) and draw(st.booleans()):
                content = "image"
            message = ResultMessage(
                frame=draw(frames_for(source_id, seq)),
                content=content,
                payload=description,
                traceparent=draw(traceparents),
            )
        return message, payload
    if kind == "eos":
        return EndOfStream(
            source_id=source_id, last_seq=draw(st.none() | seqs), traceparent=draw(traceparents)
        ), None
    if kind == "eos_ack":
        return EndOfStreamAck(source_id=source_id, last_seq=draw(st.none() | seqs)), None
    if kind == "result_ack":
        return ResultAck(source_id=source_id, seq=seq), None
    return Shutdown(secret=draw(st.text(min_size=1, max_size=20)), reason=draw(st.text())), None


@given(messages())
@settings(max_examples=100, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_every_message_round_trips(drawn: tuple[Message, bytes | None]) -> None:
    message, payload = drawn
    parts = encode(message, payload)
    assert len(parts) == (2 if payload is None else 3)
    decoded, view = decode([bytes(part) for part in parts])
    assert decoded == message
    assert type(decoded) is type(message)
    assert (None if view is None else bytes(view)) == payload


def test_topic_is_the_source_id_first() -> None:
    parts = encode(FrameMessage(source_id="cam-é", seq=3))
    assert parts[0] == "cam-é".encode()
    assert encode(Shutdown(secret="s"))[0] == b""


def test_encode_and_decode_do_not_copy_the_payload() -> None:
    pixels = bytearray(2 * 2 * 3)
    parts = encode(FrameMessage(source_id="a", seq=0, payload=RawPayload(
        width=2, height=2, format="rgb24")), pixels)
    pixels[0] = 7
    assert bytes(parts[2])[0] == 7  # the part is a view of the caller's buffer
    received = [b"a", bytes(parts[1]), bytes(parts[2])]
    _, view = decode(received)
    assert view is not None and view.obj is received[2]


def test_encode_takes_any_contiguous_buffer() -> None:
    import numpy as np

    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    message = FrameMessage(source_id="a", seq=0, payload=RawPayload(
        width=3, height=2, format="rgb24"))
    assert encode(message, memoryview(pixels))[2].nbytes == 18
    with pytest.raises(ValueError, match="C-contiguous"):
        encode(message, memoryview(np.zeros((3, 2, 3), dtype=np.uint8).transpose(1, 0, 2)))


@pytest.mark.parametrize(
    ("message", "payload", "match"),
    [
        (FrameMessage(source_id="a", seq=0), b"x", "describes no payload"),
        (FrameMessage(source_id="a", seq=0, payload=ImagePayload(format="png")), None,
         "pass it"),
        (FrameMessage(source_id="a", seq=0, payload=ImagePayload(format="png")), JPEG,
         "png signature"),
        (FrameMessage(source_id="a", seq=0, payload=RawPayload(
            width=2, height=2, format="gray8")), b"123", "needs 4 bytes"),
        (FrameMessage(source_id="", seq=0), None, "source_id"),
        (FrameMessage(source_id="a", seq=-1), None, "seq"),
        (FrameMessage(source_id="a", seq=0, traceparent="00-xyz"), None, "traceparent"),
        (EndOfStream(source_id="a" * 257), None, "source_id"),
    ],
)
def test_encode_refuses_what_a_receiver_would_reject(
    message: Message, payload: bytes | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        encode(message, payload)


def test_messages_check_their_own_consistency() -> None:
    with pytest.raises(ValueError, match="finite"):
        FrameMessage(source_id="a", seq=0, pts_seconds=float("nan"))
    with pytest.raises(ValueError, match="metadata is for b#0"):
        FrameMessage(source_id="a", seq=0, metadata=Frame(source_id="b", seq=0, width=1,
                                                         height=1))
    with pytest.raises(ValueError, match="disagree"):
        ResultMessage(frame=Frame(source_id="a", seq=0, width=1, height=1), content="image")
    with pytest.raises(ValueError, match="ImagePayload"):
        ResultMessage(frame=Frame(source_id="a", seq=0, width=1, height=1), content="image",
                      payload=RawPayload(width=1, height=1, format="gray8"))
    with pytest.raises(ValueError, match="even"):
        RawPayload(width=3, height=2, format="nv12")


def test_raw_payload_shapes() -> None:
    assert RawPayload(width=4, height=2, format="rgb24").shape == (2, 4, 3)
    assert RawPayload(width=4, height=2, format="gray8").nbytes == 8
    assert RawPayload(width=4, height=2, format="nv12").shape == (3, 4)


def test_shutdown_secret_is_compared_and_never_shown() -> None:
    shutdown = Shutdown(secret="hunter2", reason="maintenance")
    assert shutdown.matches("hunter2")
    assert not shutdown.matches("hunter3")
    assert "hunter2" not in repr(shutdown)


# One test per rejection reason -------------------------------------------------------------

def good_parts() -> list[bytes]:
    message = FrameMessage(source_id="cam", seq=1, payload=RawPayload(
        width=2, height=2, format="gray8"))
    return [bytes(part) for part in encode(message, b"1234")]


def header(**fields: object) -> bytes:
    base: dict[str, object] = {"kind": "frame", "version": PROTOCOL_VERSION,
                               "source_id": "cam", "seq": 1}
    base.update(fields)
    return msgspec.msgpack.encode({k: v for k, v in base.items() if v is not ...})


REJECTIONS = {
    "truncated multipart": ([b"cam"], "parts"),
    "four parts": ([*good_parts(), b"extra"], "parts"),
    "payload part missing": (good_parts()[:2], "parts"),
    "payload part not described": ([b"cam", header(), b"x"], "parts"),
    "garbage header": ([b"cam", b"\xc1\xff\x00garbage"], "bad_header"),
    "empty header": ([b"cam", b""], "bad_header"),
    "truncated header": ([b"cam", good_parts()[1][:-3], b"1234"], "bad_header"),
    "header not a map": ([b"cam", msgspec.msgpack.encode([1, 2])], "bad_header"),
    "no version": ([b"cam", header(version=...)], "bad_header"),
    "field of the wrong type": ([b"cam", header(seq="one")], "bad_header"),
    "field out of range": ([b"cam", header(seq=-1)], "bad_header"),
    "unknown field": ([b"cam", header(colour="red")], "bad_header"),
    "nan pts": ([b"cam", header(pts_seconds=float("nan"))], "bad_header"),
    "invalid utf-8 in a string": ([b"cam", header(source_id="zq").replace(
        b"\xa2zq", b"\xa2\xff\xfe")], "bad_header"),
    "metadata not a frame": ([b"cam", header(metadata=[[1]])], "bad_header"),
    "wrong version": ([b"cam", header(version=PROTOCOL_VERSION + 1)], "wrong_version"),
    "unknown tag": ([b"cam", header(kind="teleport")], "unknown_kind"),
    "topic mismatch": ([b"other", *good_parts()[1:]], "topic_mismatch"),
    "topic of a shutdown": ([b"cam", msgspec.msgpack.encode(
        {"kind": "shutdown", "version": PROTOCOL_VERSION, "secret": "s"})], "topic_mismatch"),
    "oversized header": ([b"cam", header(traceparent=None, seq=1) + b"\x00" * 2000],
                         "header_too_large"),
    "oversized payload": ([b"cam", bytes(encode(FrameMessage(
        source_id="cam", seq=1, payload=PacketPayload(
            codec="h264", width=2, height=2, time_base=(1, 90000))), b"x")[1]), b"x" * 5000],
                          "payload_too_large"),
    "raw size mismatch": ([*good_parts()[:2], b"12345"], "payload_mismatch"),
    "image without its signature": ([b"cam", bytes(encode(FrameMessage(
        source_id="cam", seq=1, payload=ImagePayload(format="jpeg")), JPEG)[1]), PNG],
                                    "payload_mismatch"),
    "empty packet": ([b"cam", bytes(encode(FrameMessage(
        source_id="cam", seq=1, payload=PacketPayload(
            codec="h264", width=2, height=2, time_base=(1, 90000))), b"x")[1]), b""],
                     "payload_mismatch"),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
def test_decode_rejects_with_one_reason(case: str) -> None:
    parts, reason = REJECTIONS[case]
    with pytest.raises(ProtocolError) as caught:
        decode(parts, limits=Limits(max_header_bytes=1024, max_payload_bytes=4096))
    assert caught.value.reason == reason, caught.value


def test_decode_survives_deep_nesting() -> None:
    # 100,000 nested arrays: msgspec stops at the recursion limit, decode says bad_header.
    start = header()
    deep = b"\x85" + start[1:] + b"\xa1x" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(ProtocolError) as caught:
        decode([b"cam", deep])
    assert caught.value.reason == "bad_header"


def test_inbox_rejects_what_this_end_does_not_take() -> None:
    inbox = Inbox("test", limits=Limits(), routed=False)
    ack = [bytes(p) for p in encode(EndOfStreamAck(source_id="a", last_seq=1))]
    shutdown = [bytes(p) for p in encode(Shutdown(secret="right"))]
    assert inbox.accept(ack) is None
    assert inbox.accept(shutdown) is None  # no secret configured: refused
    guarded = Inbox("test", limits=Limits(), routed=False, shutdown_secret="other")
    assert guarded.accept(shutdown) is None
    assert inbox.rejects.snapshot() == {"unexpected_kind": 1, "shutdown_refused": 1}
    assert guarded.rejects.snapshot() == {"shutdown_refused": 1}
    opened = Inbox("test", limits=Limits(), routed=False, shutdown_secret="right")
    delivery = opened.accept(shutdown)
    assert delivery is not None and isinstance(delivery.message, Shutdown)


def test_inbox_routes_by_source_id_and_acks_to_the_connection() -> None:
    inbox = Inbox("test", limits=Limits(), routed=True, ack_eos=True)
    frame = [bytes(p) for p in encode(FrameMessage(source_id="cam", seq=0))]
    assert inbox.accept([b"peer-1", *frame]) is not None
    assert inbox.route("cam") == b"peer-1"
    assert inbox.accept([b"peer-2", *frame]) is not None  # the adapter came back
    assert inbox.route("cam") == b"peer-2"
    eos = [bytes(p) for p in encode(EndOfStream(source_id="cam", last_seq=0))]
    delivery = inbox.accept([b"peer-2", *eos])
    assert delivery is not None and delivery.ack is not None
    assert delivery.ack[0] == b"peer-2"
    ack, _ = decode(delivery.ack[1:])
    assert ack == EndOfStreamAck(source_id="cam", last_seq=0)
    assert inbox.sources == 1


def test_inbox_answers_every_request_on_rep() -> None:
    inbox = Inbox("test", limits=Limits(), routed=False)
    cases: list[tuple[list[bytes], Message | None, Message]] = [
        ([bytes(p) for p in encode(FrameMessage(source_id="cam", seq=3))],
         FrameMessage(source_id="cam", seq=3), Receipt(source_id="cam", seq=3)),
        ([bytes(p) for p in encode(EndOfStream(source_id="cam", last_seq=3))],
         EndOfStream(source_id="cam", last_seq=3), EndOfStreamAck(source_id="cam", last_seq=3)),
        ([bytes(p) for p in encode(Shutdown(secret="s"))], None,
         Receipt(rejected="shutdown_refused")),
        ([bytes(p) for p in encode(Receipt(source_id="cam", seq=1))], None,
         Receipt(rejected="unexpected_kind")),
        ([b"cam"], None, Receipt(rejected="parts")),
    ]
    for parts, accepted, answer in cases:
        delivery, reply = inbox.accept_request(parts)
        assert (delivery.message if delivery else None) == accepted
        assert decode(reply)[0] == answer
        if accepted is not None:
            assert answer_problem(accepted, answer) is None  # what the req side expects
    problem = answer_problem(FrameMessage(source_id="cam", seq=3), Receipt(source_id="cam"))
    assert problem is not None and problem.reason == "unexpected_kind"
    rejected = answer_problem(Shutdown(secret="s"), Receipt(rejected="shutdown_refused"))
    assert rejected is not None and rejected.reason == "shutdown_refused"


# Rejects -----------------------------------------------------------------------------------

def test_rejects_logs_the_first_then_at_most_one_line_per_interval() -> None:
    now = [0.0]
    rejects = Rejects(log_interval_seconds=10.0, clock=lambda: now[0])
    assert rejects.add("bad_header") == 0
    assert [rejects.add("bad_header") for _ in range(99)] == [None] * 99
    assert rejects.add("parts") == 0  # reasons are limited separately
    now[0] = 10.0
    assert rejects.add("bad_header") == 99
    assert rejects.add("bad_header") is None
    assert rejects.snapshot() == {"bad_header": 102, "parts": 1}
    assert rejects.total == 103


def test_rejects_counts_from_many_threads() -> None:
    rejects = Rejects()

    def flood() -> None:
        for _ in range(2000):
            rejects.add("parts")

    threads = [threading.Thread(target=flood, name=f"ts/test/flood-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rejects.snapshot() == {"parts": 8000}
