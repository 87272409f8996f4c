"""The wire protocol, sans-IO: message types, :func:`encode` and :func:`decode`. No socket here.

A message is multipart, ``[topic, header]`` or ``[topic, header, payload]``:

- ``topic``: the source id in UTF-8 (empty for :class:`Shutdown`). It comes first so that a
  SUB socket filters by source id prefix before anything is decoded.
- ``header``: one tagged msgspec Struct as MessagePack. ``kind`` names the type, ``version``
  the protocol version.
- ``payload``: present exactly when the header's ``payload`` field describes one: an encoded
  video packet, an encoded image or raw pixels. It travels as its own part so that neither
  side copies it: :func:`encode` returns the caller's buffer as it is and :func:`decode`
  returns a memoryview of the received part.

:func:`decode` trusts nothing it receives. Everything that can be wrong with a message
(part count, sizes, MessagePack, field types and ranges, version, topic, payload) raises one
:class:`~torchstream.ProtocolError` whose ``reason`` is one of :data:`RejectReason`.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from torchstream._errors import ProtocolError
from torchstream.frame import SCHEMA_VERSION, Frame

__all__ = [
    "PROTOCOL_VERSION",
    "EndOfStream",
    "EndOfStreamAck",
    "FrameMessage",
    "ImagePayload",
    "Limits",
    "Message",
    "PacketPayload",
    "Payload",
    "RawPayload",
    "Receipt",
    "RejectReason",
    "ResultAck",
    "ResultMessage",
    "Shutdown",
    "check_payload",
    "decode",
    "decode_header",
    "encode",
    "topic_of",
]

PROTOCOL_VERSION = 2
"""Version of the wire protocol, in every header. Receivers reject any other version: bump it
on any change an older receiver would misread (a new field included: headers forbid unknown
fields). 2 added :class:`Receipt` (req/rep answers) and ``PacketPayload.duration``."""

RejectReason = Literal[
    "parts",
    "header_too_large",
    "bad_header",
    "wrong_version",
    "unknown_kind",
    "topic_mismatch",
    "payload_too_large",
    "payload_mismatch",
    "unexpected_kind",
    "shutdown_refused",
]
"""Why a message was rejected: the label of its count in
:class:`~torchstream.transport.Rejects`.

``parts``: not 2 or 3 parts, or a payload part missing or extra for what the header says.
``header_too_large`` / ``payload_too_large``: over :class:`Limits`. ``bad_header``: not
MessagePack, or a field missing, of the wrong type, out of range or unknown.
``wrong_version``: another :data:`PROTOCOL_VERSION`. ``unknown_kind``: a ``kind`` this version
does not know. ``topic_mismatch``: the topic is not the header's source id.
``payload_mismatch``: the payload contradicts its description (raw size, image signature).
``unexpected_kind``: a valid message this end does not take (an acknowledgement at a
receiver). ``shutdown_refused``: a shutdown without the configured secret, or where none is.
"""

_SourceId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Seq = Annotated[int, msgspec.Meta(ge=0)]
_Dimension = Annotated[int, msgspec.Meta(ge=1, le=32768)]
_Positive = Annotated[int, msgspec.Meta(ge=1)]
_TraceParent = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
]

_MAX_TOPIC_BYTES = 4 * 256  # a 256-character source id in UTF-8


class PacketPayload(
    msgspec.Struct, tag="packet", tag_field="kind", frozen=True, kw_only=True,
    forbid_unknown_fields=True,
):
    """The payload is one encoded video packet (an access unit), as a demuxer gave it.

    ``codec`` is the FFmpeg codec name (``h264``, ``hevc``, ``av1``, ...); ``time_base`` the
    stream's ``(numerator, denominator)``; ``pts`` / ``dts`` the packet's timestamps and
    ``duration`` how long its picture shows, in that time base, when known (``dts`` and
    ``duration`` matter to a sink that writes the packets into a file again: with B-frames
    the decode order differs from the display order results come in). ``extradata``
    (SPS/PPS and the like) rides on the first packet and on keyframes so that a decoder can
    start there.
    """

    codec: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]
    width: _Dimension
    height: _Dimension
    time_base: tuple[_Positive, _Positive]
    pts: int | None = None
    dts: int | None = None
    duration: Annotated[int, msgspec.Meta(ge=0)] | None = None
    extradata: Annotated[bytes, msgspec.Meta(max_length=1 << 20)] | None = None


class ImagePayload(
    msgspec.Struct, tag="image", tag_field="kind", frozen=True, kw_only=True,
    forbid_unknown_fields=True,
):
    """The payload is one encoded picture: the bytes of a JPEG or PNG file."""

    format: Literal["jpeg", "png"]


_RAW_BYTES_PER_PIXEL = {"rgb24": 3, "bgr24": 3, "rgba": 4, "gray8": 1}


class RawPayload(
    msgspec.Struct, tag="raw", tag_field="kind", frozen=True, kw_only=True,
    forbid_unknown_fields=True,
):
    """The payload is uncompressed ``uint8`` pixels, rows packed without padding.

    ``rgb24`` / ``bgr24`` / ``rgba`` / ``gray8`` are interleaved, shape ``(height, width,
    channels)``; ``nv12`` is a full-size Y plane followed by a half-size interleaved UV plane,
    shape ``(height * 3 // 2, width)``, with even width and height.
    """

    width: _Dimension
    height: _Dimension
    format: Literal["rgb24", "bgr24", "rgba", "gray8", "nv12"]

    def __post_init__(self) -> None:
        if self.format == "nv12" and (self.width % 2 or self.height % 2):
            raise ValueError(f"nv12 needs even width and height, got {self.width}x{self.height}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the pixel array (see the class docstring)."""
        if self.format == "nv12":
            return (self.height * 3 // 2, self.width)
        return (self.height, self.width, _RAW_BYTES_PER_PIXEL[self.format])

    @property
    def nbytes(self) -> int:
        """The exact size the payload must have."""
        return math.prod(self.shape)


Payload = PacketPayload | ImagePayload | RawPayload
"""What a payload part holds; a header's ``payload`` is one of these, or None for no part."""


class _Message(
    msgspec.Struct, tag_field="kind", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    version: int = PROTOCOL_VERSION


def _check_pts(pts_seconds: float | None) -> None:
    if pts_seconds is not None and not math.isfinite(pts_seconds):
        raise ValueError(f"pts_seconds must be finite, got {pts_seconds}")


def _check_schema(frame: Frame) -> None:
    if frame.schema_version != SCHEMA_VERSION:
        raise ValueError(
            f"metadata schema_version is {frame.schema_version}, this end reads "
            f"{SCHEMA_VERSION}"
        )


def _check_metadata(frame: Frame, source_id: str, seq: int) -> None:
    _check_schema(frame)
    if (frame.source_id, frame.seq) != (source_id, seq):
        raise ValueError(
            f"metadata is for {frame.source_id}#{frame.seq}, the message for {source_id}#{seq}"
        )


class FrameMessage(_Message, tag="frame", frozen=True):
    """One video frame or image of a source, going into a pipeline.

    ``seq`` counts the source's frames from 0; ``pts_seconds`` is its presentation time.
    ``payload`` describes the payload part (None: the message has none). ``traceparent``
    is the W3C trace context of the request that brought it, when there is one. ``metadata``
    is optional metadata already known about the frame (a previous module's results,
    sensor readings in its attributes); its ``source_id`` and ``seq`` must be the message's.
    """

    source_id: _SourceId
    seq: _Seq
    pts_seconds: float | None = None
    keyframe: bool = True
    payload: Payload | None = None
    traceparent: _TraceParent | None = None
    metadata: Frame | None = None

    def __post_init__(self) -> None:
        _check_pts(self.pts_seconds)
        if self.metadata is not None:
            _check_metadata(self.metadata, self.source_id, self.seq)


class ResultMessage(_Message, tag="result", frozen=True):
    """What a pipeline made of one frame: its metadata and, optionally, content.

    ``content`` says what the payload part is: ``"none"`` (no part), ``"original"`` (the
    frame's input bytes as they came, described by ``payload``) or ``"image"`` (an encoded
    image made by the pipeline, an annotated picture for example; ``payload`` is an
    :class:`ImagePayload`). ``traceparent`` continues the frame's request: its trace id,
    and as parent the module's ``frame`` span when the module traced the frame, else the
    request's own parent.
    """

    frame: Frame
    content: Literal["none", "original", "image"] = "none"
    payload: Payload | None = None
    traceparent: _TraceParent | None = None

    def __post_init__(self) -> None:
        _check_schema(self.frame)
        if (self.content == "none") != (self.payload is None):
            raise ValueError(
                f"content {self.content!r} and payload {self.payload!r} disagree: a payload "
                "goes with content 'original' or 'image', none with 'none'"
            )
        if self.content == "image" and not isinstance(self.payload, ImagePayload):
            raise ValueError(f"content 'image' needs an ImagePayload, got {self.payload!r}")

    @property
    def source_id(self) -> str:
        return self.frame.source_id

    @property
    def seq(self) -> int:
        return self.frame.seq


class EndOfStream(_Message, tag="eos", frozen=True):
    """The source has no more frames. ``last_seq`` is its last frame's seq (None: it sent
    none). On dealer/router the receiver answers with an :class:`EndOfStreamAck`."""

    source_id: _SourceId
    last_seq: _Seq | None = None
    traceparent: _TraceParent | None = None


class EndOfStreamAck(_Message, tag="eos_ack", frozen=True):
    """The receiving end got the :class:`EndOfStream` of ``source_id`` (and, the pipe being
    ordered, every frame the source sent on that connection before it)."""

    source_id: _SourceId
    last_seq: _Seq | None = None


class ResultAck(_Message, tag="result_ack", frozen=True):
    """The receiver of results has handled the :class:`ResultMessage` of ``source_id`` with
    ``seq``: its sender may forget it. Sent back on dealer/router result links, where the
    sender keeps unacknowledged results and sends them again to a receiver that restarted."""

    source_id: _SourceId
    seq: _Seq


class Receipt(_Message, tag="receipt", frozen=True):
    """A rep endpoint's answer to a request that is not an end of stream (that one gets an
    :class:`EndOfStreamAck`): ``rejected`` is None when the message was accepted, else the
    reason it was not. Every request gets one, malformed ones included, so that the req side
    is never left waiting. ``source_id`` and ``seq`` name the message answered when it could
    be read (None for a shutdown or an unreadable message; the topic is then empty)."""

    source_id: _SourceId | None = None
    seq: _Seq | None = None
    rejected: RejectReason | None = None


class Shutdown(_Message, tag="shutdown", frozen=True):
    """Asks the receiving process to stop. Honoured only where a secret is configured and
    ``secret`` matches it (:meth:`matches`, constant time); its topic is empty."""

    secret: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this message's, compared in constant time."""
        return hmac.compare_digest(self.secret.encode(), secret.encode())

    def __repr__(self) -> str:
        return f"Shutdown(version={self.version}, secret='***', reason={self.reason!r})"


Message = (
    FrameMessage | ResultMessage | EndOfStream | EndOfStreamAck | ResultAck | Receipt | Shutdown
)
"""Every message of the protocol; decode with ``match`` on the type."""

_KINDS = frozenset({"frame", "result", "eos", "eos_ack", "result_ack", "receipt", "shutdown"})


class _Envelope(msgspec.Struct):
    # What is read before anything else: unknown fields are skipped, so this decodes a header
    # of any version and kind.
    version: int
    kind: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)  # type: ignore[arg-type]
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


@dataclass(frozen=True)
class Limits:
    """Sizes a receiver accepts. ``max_header_bytes`` bounds the header part (metadata with
    many objects and masks is the largest); ``max_payload_bytes`` the payload part (an 8K
    ``rgb24`` frame is 99.5 MB). A message over either is rejected and counted.

    ``max_part_bytes`` is a harder cap that libzmq enforces while receiving, before any
    memory is committed: a peer that sends a larger part is disconnected, and that message
    (with whatever was in flight behind it) is lost without a count, since libzmq does not
    say why it disconnected. None: twice the larger of the two limits, so that moderately
    oversized messages are still received, counted and logged.
    """

    max_header_bytes: int = 1 << 20
    max_payload_bytes: int = 128 << 20
    max_part_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_payload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_part_bytes is not None and self.max_part_bytes < max(
            self.max_header_bytes, self.max_payload_bytes
        ):
            raise ValueError(
                f"max_part_bytes must be >= max_header_bytes and max_payload_bytes, got "
                f"{self.max_part_bytes}"
            )

    @property
    def part_cap_bytes(self) -> int:
        """``max_part_bytes``, or its default."""
        if self.max_part_bytes is not None:
            return self.max_part_bytes
        return 2 * max(self.max_header_bytes, self.max_payload_bytes)


def topic_of(message: Message) -> bytes:
    """The topic part of ``message``: its source id in UTF-8, empty for a shutdown (and a
    :class:`Receipt` without source id)."""
    if isinstance(message, Shutdown) or message.source_id is None:
        return b""
    return message.source_id.encode()


def _kind(struct: msgspec.Struct) -> str:
    return str(struct.__struct_config__.tag)


def _payload_of(message: Message) -> Payload | None:
    if isinstance(message, (FrameMessage, ResultMessage)):
        return message.payload
    return None


_SIGNATURES = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def _payload_problem(description: Payload, payload: memoryview) -> str | None:
    """What is wrong with ``payload`` for ``description``, or None."""
    size = payload.nbytes
    if isinstance(description, RawPayload):
        if size != description.nbytes:
            return (
                f"raw {description.format} {description.width}x{description.height} needs "
                f"{description.nbytes} bytes, the payload has {size}"
            )
    elif isinstance(description, ImagePayload):
        signature = _SIGNATURES[description.format]
        if payload[: len(signature)] != signature:
            return f"the payload does not start with the {description.format} signature"
    elif size == 0:
        return "a packet payload is empty"
    return None


def encode(
    message: Message, payload: bytes | bytearray | memoryview | None = None
) -> list[bytes | memoryview]:
    """The parts of ``message``, ready for ``send_multipart``: ``[topic, header]`` or
    ``[topic, header, payload]``.

    ``payload`` is any C-contiguous buffer (``memoryview(array)`` for NumPy); it is returned
    as a byte view of the same memory, never copied, so do not modify it until it is sent.
    The message is checked as a receiver would check it (field ranges, payload presence and
    consistency), so a message this raises ``ValueError`` for is never sent.
    """
    header = _encoder.encode(message)
    try:
        _decoder.decode(header)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {type(message).__name__}: {exc}") from None
    description = _payload_of(message)
    if description is None:
        if payload is not None:
            raise ValueError(
                f"{type(message).__name__} describes no payload (payload=None), but one was "
                "given"
            )
        return [topic_of(message), header]
    if payload is None:
        raise ValueError(f"the message describes a {_kind(description)} payload; pass it")
    view = memoryview(payload)
    if not view.c_contiguous:
        raise ValueError("payload must be C-contiguous (copy it, e.g. numpy.ascontiguousarray)")
    view = view.cast("B")
    problem = _payload_problem(description, view)
    if problem is not None:
        raise ValueError(problem)
    return [topic_of(message), header, view]


def decode(
    parts: Sequence[bytes | memoryview], *, limits: Limits = Limits()
) -> tuple[Message, memoryview | None]:
    """Validate and decode one received multipart message (routing ids already removed).

    Returns the message and a memoryview of its payload part (None when it has none).
    Raises :class:`~torchstream.ProtocolError` for anything wrong, and nothing else.
    """
    if len(parts) not in (2, 3):
        raise ProtocolError(
            "parts", f"a message has 2 or 3 parts (topic, header, payload?), got {len(parts)}"
        )
    message = decode_header(parts[0], parts[1], limits=limits)
    envelope_kind = _kind(message)
    description = _payload_of(message)
    if description is None:
        if len(parts) == 3:
            raise ProtocolError(
                "parts", f"a {envelope_kind} message without payload has 2 parts, got 3"
            )
        return message, None
    if len(parts) == 2:
        raise ProtocolError(
            "parts",
            f"the header describes a {_kind(description)} payload, but there is no part",
        )
    payload = memoryview(parts[2])
    if payload.format != "B" or payload.ndim != 1:
        payload = payload.cast("B")
    if payload.nbytes > limits.max_payload_bytes:
        raise ProtocolError(
            "payload_too_large",
            f"payload of {payload.nbytes} bytes, the limit is {limits.max_payload_bytes}",
        )
    problem = _payload_problem(description, payload)
    if problem is not None:
        raise ProtocolError("payload_mismatch", problem)
    return message, payload


def decode_header(
    topic: bytes | memoryview, header: bytes | memoryview, *, limits: Limits = Limits()
) -> Message:
    """Validate and decode a header part and check it against its topic, without the payload
    part (:func:`decode` does both). For carriers that bring the payload another way (a NATS
    message whose image waits in an object store): check it later with :func:`check_payload`.
    Raises :class:`~torchstream.ProtocolError`, and nothing else.
    """
    topic, header = memoryview(topic), memoryview(header)
    if header.nbytes > limits.max_header_bytes:
        raise ProtocolError(
            "header_too_large",
            f"header of {header.nbytes} bytes, the limit is {limits.max_header_bytes}",
        )
    try:
        envelope = _envelope_decoder.decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(
            "bad_header", f"not a MessagePack map with 'version' and 'kind': {exc}"
        ) from None
    if envelope.version != PROTOCOL_VERSION:
        raise ProtocolError(
            "wrong_version",
            f"protocol version {envelope.version}, this end speaks {PROTOCOL_VERSION}",
        )
    if envelope.kind not in _KINDS:
        raise ProtocolError(
            "unknown_kind", f"kind {envelope.kind[:64]!r}, known: {', '.join(sorted(_KINDS))}"
        )
    try:
        message: Message = _decoder.decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_header", f"invalid {envelope.kind} header: {exc}") from None
    expected_topic = topic_of(message)
    if topic.nbytes > _MAX_TOPIC_BYTES or topic != expected_topic:
        raise ProtocolError(
            "topic_mismatch",
            f"topic {bytes(topic[:64])!r} is not the header's source id {expected_topic!r}",
        )
    return message


def check_payload(message: Message, payload: memoryview) -> None:
    """Raise :class:`~torchstream.ProtocolError` (``payload_mismatch``) when ``payload``
    contradicts what ``message`` says of it."""
    description = _payload_of(message)
    if description is None:
        raise ProtocolError("parts", f"a {_kind(message)} message describes no payload")
    problem = _payload_problem(description, payload)
    if problem is not None:
        raise ProtocolError("payload_mismatch", problem)
