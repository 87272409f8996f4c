"""How torchstream's wire protocol travels in NATS messages, sans-IO.

The messages are the ones of :mod:`torchstream.transport` (:class:`FrameMessage`,
:class:`EndOfStream`, :class:`ResultMessage`: the same msgspec structs, validation and
:data:`~torchstream.transport.PROTOCOL_VERSION`); only the framing differs:

- the **subject** ends with the source id (``ts.in.<source_id>`` and the partition and
  result subjects), and plays the topic part: it must be the header's source id;
- the **body** is the MessagePack header with a 4-byte big-endian length before it, then the
  payload bytes (``[len][header][payload]``);
- NATS **headers**: ``Ts-Wire`` (this framing's version), ``Nats-Msg-Id``
  (``<source_id>:<seq>``, so that JetStream stores a re-sent frame once), ``traceparent``
  (a copy of the header's, for NATS tooling) and, for an image kept in the object store
  because it is larger than :data:`OBJECT_THRESHOLD_BYTES`, ``Ts-Object`` naming it: the
  body then holds the header only and the receiver fetches the payload and checks it with
  :func:`check_object`.

:func:`decode` trusts nothing: anything wrong raises :class:`~torchstream.ProtocolError` with a
reason of :data:`~torchstream.transport.RejectReason`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated

import msgspec

from torchstream._errors import ProtocolError
from torchstream.transport._protocol import (
    EndOfStream,
    FrameMessage,
    Limits,
    ResultMessage,
    check_payload,
    decode_header,
)
from torchstream.transport._protocol import encode as encode_parts

__all__ = [
    "MSG_ID_HEADER",
    "OBJECT_HEADER",
    "OBJECT_THRESHOLD_BYTES",
    "WIRE_HEADER",
    "WIRE_VERSION",
    "Decoded",
    "Encoded",
    "KeyframePosition",
    "check_object",
    "decode",
    "decode_keyframe_position",
    "encode",
    "encode_keyframe_position",
    "object_name",
]

WIRE_VERSION = "1"
"""Version of this framing (the ``Ts-Wire`` header). The header inside has its own
:data:`~torchstream.transport.PROTOCOL_VERSION`."""

WIRE_HEADER = "Ts-Wire"
OBJECT_HEADER = "Ts-Object"
MSG_ID_HEADER = "Nats-Msg-Id"
TRACEPARENT_HEADER = "traceparent"

OBJECT_THRESHOLD_BYTES = 1 << 20
"""Images larger than this go to the object store (a JetStream message's default limit is
1 MiB); video packets never do."""

_LENGTH = struct.Struct(">I")
_DEFAULT_LIMITS = Limits()

NatsMessage = FrameMessage | EndOfStream | ResultMessage
"""The messages that travel over NATS."""


@dataclass(frozen=True)
class Encoded:
    """One NATS message to publish: ``headers`` and ``body``. ``object_payload`` is the image
    to put in the object store under ``headers["Ts-Object"]`` first (None: it is in the
    body)."""

    subject: str
    headers: dict[str, str]
    body: bytes
    object_payload: memoryview | None = None


@dataclass(frozen=True)
class Decoded:
    """A received message, checked: ``payload`` is a view of the body's payload bytes (None
    when there is none or when it waits in the object store under ``object_name``)."""

    message: NatsMessage
    payload: memoryview | None
    object_name: str | None = None


def object_name(source_id: str, seq: int) -> str:
    """The object-store name of frame ``seq`` of ``source_id``'s image."""
    return f"{source_id}/{seq}"


def _msg_id(message: NatsMessage) -> str:
    if isinstance(message, EndOfStream):
        return f"{message.source_id}:eos:{message.last_seq}"
    return f"{message.source_id}:{message.seq}"


def encode(
    subject: str,
    message: NatsMessage,
    payload: bytes | bytearray | memoryview | None = None,
    *,
    object_threshold_bytes: int = OBJECT_THRESHOLD_BYTES,
) -> Encoded:
    """The NATS message for ``message`` on ``subject`` (whose last token must be its source
    id). Checks as :func:`torchstream.transport.encode` does (ranges, payload presence and
    signature) and raises ``ValueError`` for what a receiver would reject. An image payload
    over ``object_threshold_bytes`` is returned as ``object_payload`` to store separately.
    """
    parts = encode_parts(message, payload)
    topic = parts[0]
    if subject.rsplit(".", 1)[-1].encode() != topic:
        raise ValueError(f"subject {subject!r} does not end with the source id {topic!r}")
    header = bytes(parts[1])
    headers = {WIRE_HEADER: WIRE_VERSION, MSG_ID_HEADER: _msg_id(message)}
    traceparent = message.traceparent
    if traceparent is not None:
        headers[TRACEPARENT_HEADER] = traceparent
    if len(parts) == 2:
        return Encoded(subject, headers, _LENGTH.pack(len(header)) + header)
    data = memoryview(parts[2])
    if (
        isinstance(message, FrameMessage)
        and message.payload is not None
        and message.payload.__struct_config__.tag == "image"
        and data.nbytes > object_threshold_bytes
    ):
        headers[OBJECT_HEADER] = object_name(message.source_id, message.seq)
        return Encoded(subject, headers, _LENGTH.pack(len(header)) + header, data)
    return Encoded(subject, headers, b"".join((_LENGTH.pack(len(header)), header, data)))


def decode(
    subject: str,
    headers: dict[str, str] | None,
    body: bytes | memoryview,
    *,
    limits: Limits = _DEFAULT_LIMITS,
) -> Decoded:
    """Validate and decode one received NATS message. Raises
    :class:`~torchstream.ProtocolError` for anything wrong (and nothing else): no or another
    ``Ts-Wire`` (``wrong_version``), a body too short for its length prefix (``parts``), the
    checks of :func:`torchstream.transport.decode` on the header and payload, a subject not
    ending with the source id (``topic_mismatch``), an object reference on anything but an
    image frame (``payload_mismatch``)."""
    wire = (headers or {}).get(WIRE_HEADER)
    if wire != WIRE_VERSION:
        raise ProtocolError(
            "wrong_version", f"{WIRE_HEADER} header {wire!r}, this end reads {WIRE_VERSION!r}"
        )
    view = memoryview(body).cast("B") if not isinstance(body, bytes) else memoryview(body)
    if view.nbytes < _LENGTH.size:
        raise ProtocolError("parts", f"a body of {view.nbytes} bytes has no header length")
    (length,) = _LENGTH.unpack_from(view)
    if length > view.nbytes - _LENGTH.size:
        raise ProtocolError(
            "parts", f"header length {length} exceeds the body ({view.nbytes} bytes)"
        )
    if length > limits.max_header_bytes:
        raise ProtocolError(
            "header_too_large", f"header of {length} bytes, the limit is "
            f"{limits.max_header_bytes}",
        )
    topic = subject.rsplit(".", 1)[-1].encode()
    header = view[_LENGTH.size : _LENGTH.size + length]
    message = decode_header(topic, header, limits=limits)
    if not isinstance(message, (FrameMessage, EndOfStream, ResultMessage)):
        raise ProtocolError(
            "unexpected_kind", f"a {type(message).__name__} does not travel over NATS"
        )
    rest = view[_LENGTH.size + length :]
    reference = (headers or {}).get(OBJECT_HEADER)
    described = getattr(message, "payload", None)
    if reference is not None:
        if not (
            isinstance(message, FrameMessage)
            and described is not None
            and described.__struct_config__.tag == "image"
        ):
            raise ProtocolError("payload_mismatch", "an object reference on a non-image message")
        if reference != object_name(message.source_id, message.seq) or rest.nbytes:
            raise ProtocolError(
                "payload_mismatch", f"object reference {reference[:80]!r} does not fit "
                f"{message.source_id}#{message.seq}",
            )
        return Decoded(message, None, reference)
    if described is None:
        if rest.nbytes:
            raise ProtocolError("parts", f"a {type(message).__name__} without payload has "
                                         f"{rest.nbytes} bytes after its header")
        return Decoded(message, None)
    if rest.nbytes > limits.max_payload_bytes:
        raise ProtocolError(
            "payload_too_large",
            f"payload of {rest.nbytes} bytes, the limit is {limits.max_payload_bytes}",
        )
    check_payload(message, rest)
    return Decoded(message, rest)


def check_object(decoded: Decoded, data: bytes | memoryview, *, limits: Limits = _DEFAULT_LIMITS
                 ) -> memoryview:
    """Check an image fetched from the object store for ``decoded`` (size, signature);
    returns it as a memoryview or raises :class:`~torchstream.ProtocolError`."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if view.nbytes > limits.max_payload_bytes:
        raise ProtocolError(
            "payload_too_large",
            f"payload of {view.nbytes} bytes, the limit is {limits.max_payload_bytes}",
        )
    check_payload(decoded.message, view)
    return view


class KeyframePosition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The value of a source's entry in the keyframe bucket: where its last keyframe is.

    ``stream_seq``: the keyframe's sequence in the input stream (a new owner replays the
    partition subject of the source from there); ``seq``: its frame seq;
    ``pts_seconds``: its time."""

    stream_seq: Annotated[int, msgspec.Meta(ge=1)]
    seq: Annotated[int, msgspec.Meta(ge=0)]
    pts_seconds: float | None = None


_position_decoder = msgspec.msgpack.Decoder(KeyframePosition)


def encode_keyframe_position(position: KeyframePosition) -> bytes:
    return msgspec.msgpack.encode(position)


def decode_keyframe_position(data: bytes) -> KeyframePosition:
    """Raises :class:`~torchstream.ProtocolError` (``bad_header``) for a malformed value."""
    try:
        return _position_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_header", f"invalid keyframe position: {exc}") from None
