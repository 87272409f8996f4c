"""The client's sans-IO core, shared by the blocking and asyncio shells: what goes out for each
send (checked, numbered, traced) and what each received message means for the caller.

Nothing here touches a socket. :class:`Requests` turns an image, a raw picture, a video packet
or an end-of-stream into protocol messages ready to send; :class:`Results` turns received
messages into :class:`Result` objects and applies the source filter.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from torchstream.client._trace import check_traceparent, new_traceparent, trace_id_of
from torchstream.codecs._nvjpeg import jpeg_size
from torchstream.frame import Frame
from torchstream.transport._endpoint import Endpoint
from torchstream.transport._protocol import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    Message,
    PacketPayload,
    Payload,
    RawPayload,
    ResultMessage,
    encode,
)

__all__ = [
    "SINK_TYPES",
    "SOURCE_TYPES",
    "ContentKind",
    "ImageFormat",
    "Outgoing",
    "RawFormat",
    "Requests",
    "Result",
    "Results",
    "SendResult",
    "SinkStatistics",
    "SourceStatistics",
    "cancelled_by_close",
    "check_endpoint",
    "check_timeout",
    "image_format",
]

ImageFormat = Literal["jpeg", "png"]
RawFormat = Literal["rgb24", "bgr24", "rgba", "gray8", "nv12"]
ContentKind = Literal["none", "original", "image"]

_IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
_RAW_FORMATS: tuple[str, ...] = get_args(RawFormat)
_SIGNATURES = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
_CHANNELS = {"rgb24": 3, "bgr24": 3, "rgba": 4}

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send started: ``source_id``, the frame's ``seq`` and the request's W3C
    ``traceparent`` with its ``trace_id`` (32 hex digits). For an end-of-stream
    (``end_of_stream=True``) ``seq`` is the last frame's, None when the source sent none."""

    source_id: str
    seq: int | None
    trace_id: str
    traceparent: str
    end_of_stream: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class Result:
    """One thing a pipeline sent back: a frame's result or a source's end-of-stream.

    A frame's result has its metadata in ``frame`` (objects, attributes, size; no surface),
    and ``content`` as the pipeline chose: ``"none"``, ``"original"`` (the bytes that were
    sent) or ``"image"`` (a picture the pipeline made, an annotated JPEG for example).
    ``content`` is a zero-copy view of the received message part (``bytes(result.content)``
    for a copy), ``content_description`` says what it holds. An end-of-stream has
    ``end_of_stream=True``, no ``frame``, and ``seq`` = the source's last seq (None: none).
    ``trace_id`` / ``traceparent`` are those of the request that caused it, when the
    pipeline passed them on.
    """

    source_id: str
    seq: int | None
    frame: Frame | None
    trace_id: str | None
    traceparent: str | None = None
    content_kind: ContentKind = "none"
    content: memoryview | None = None
    content_description: Payload | None = None
    end_of_stream: bool = False

    def __repr__(self) -> str:
        if self.end_of_stream:
            return (
                f"Result(source_id={self.source_id!r}, end_of_stream, last_seq={self.seq}, "
                f"trace_id={self.trace_id})"
            )
        content: str = self.content_kind
        if self.content is not None:
            content += f", {self.content.nbytes} bytes"
        return (
            f"Result(source_id={self.source_id!r}, seq={self.seq}, trace_id={self.trace_id}, "
            f"frame={self.frame!r}, content={content})"
        )


@dataclass(frozen=True)
class SourceStatistics:
    endpoint: str
    sent: int
    """Frames sent (images, raw pictures and packets)."""
    end_of_streams: int


@dataclass(frozen=True)
class SinkStatistics:
    endpoint: str
    results: int
    """Frame results returned."""
    end_of_streams: int
    filtered: int
    """Messages of sources the sink does not want (on sub, most never reach it)."""
    unexpected: int
    """Valid messages that are not results (frames, acknowledgements), skipped."""
    rejected: dict[str, int]
    """Malformed messages dropped, by :data:`~torchstream.transport.RejectReason`."""


SOURCE_TYPES = ("dealer", "push")
"""Socket types a source sends on: to a module's router (acknowledged end-of-stream) or pull."""
SINK_TYPES = ("sub", "pull")
"""Socket types a sink receives on: from a module's pub or push."""


def check_timeout(name: str, seconds: float | None) -> None:
    """ValueError unless ``seconds`` is None or a number >= 0."""
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"{name} must be >= 0 or None, got {seconds}")


def cancelled_by_close(closed: bool) -> bool:
    """Whether a CancelledError just caught came from closing the socket (pyzmq cancels the
    pending futures of a socket it closes) rather than from cancelling the current task."""
    if not closed:
        return False
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is None or cancelling() == 0


def check_endpoint(endpoint: Endpoint | str, allowed: tuple[str, ...], role: str) -> Endpoint:
    """``endpoint`` parsed, or ValueError when ``role`` cannot use its socket type."""
    parsed = Endpoint.parse(endpoint) if isinstance(endpoint, str) else endpoint
    if parsed.socket_type not in allowed:
        raise ValueError(f"a {role} needs a {' or '.join(allowed)} endpoint, got {parsed}")
    return parsed


def image_format(data: Buffer) -> ImageFormat:
    """``"jpeg"`` or ``"png"`` from the file signature of ``data``; ValueError otherwise."""
    head = bytes(memoryview(data)[:8])
    for name, signature in _SIGNATURES.items():
        if head.startswith(signature):
            return name  # type: ignore[return-value]
    raise ValueError(
        f"image data is neither JPEG nor PNG (it starts with {head!r}): send_image takes the "
        "bytes of a JPEG or PNG file; decode other formats and use send_frame"
    )


def _image_size(view: memoryview, format: ImageFormat) -> tuple[int, int]:
    """``(width, height)`` from the header, as the receiving source reads it."""
    if format == "jpeg":
        return jpeg_size(view)  # JpegHeaderError is a ValueError
    if view.nbytes < 24 or bytes(view[12:16]) != b"IHDR":
        raise ValueError("corrupt or truncated PNG: no IHDR header after the signature")
    width, height = struct.unpack(">II", view[16:24])
    if width == 0 or height == 0:
        raise ValueError(f"PNG declares an empty picture ({width}x{height})")
    return int(width), int(height)


def _trace_id(traceparent: str | None) -> str | None:
    return None if traceparent is None else trace_id_of(traceparent)


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous (copy it, e.g. bytes(data))")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_source_id(source_id: str) -> None:
    if not isinstance(source_id, str) or not 1 <= len(source_id) <= 256:
        raise ValueError(f"source_id must be a string of 1 to 256 characters, got {source_id!r}")


def _raw_pixels(
    pixels: object, format: RawFormat, width: int | None, height: int | None
) -> tuple[memoryview, int, int]:
    """The pixels as a C-contiguous byte view, with their width and height."""
    if format not in _RAW_FORMATS:
        raise ValueError(f"format must be one of {', '.join(_RAW_FORMATS)}, got {format!r}")
    if isinstance(pixels, (bytes, bytearray, memoryview)):
        if width is None or height is None:
            raise ValueError("raw pixels given as bytes need width= and height=")
        return memoryview(pixels), width, height
    import numpy as np

    try:
        array = np.asarray(pixels)
    except (TypeError, RuntimeError) as exc:  # a CUDA tensor, something not array-like
        raise ValueError(
            f"pixels must be bytes or a CPU array (NumPy, or a torch tensor on the CPU: use "
            f".cpu()), got {type(pixels).__name__}: {exc}"
        ) from exc
    if array.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {array.dtype}")
    shape = array.shape
    if format in _CHANNELS:
        ok = array.ndim == 3 and shape[2] == _CHANNELS[format]
        expected = f"(height, width, {_CHANNELS.get(format)})"
    elif format == "gray8":
        ok = array.ndim == 2 or (array.ndim == 3 and shape[2] == 1)
        expected = "(height, width)"
    else:
        ok = array.ndim == 2 and shape[0] % 3 == 0
        expected = "(height * 3 // 2, width)"
    if not ok:
        raise ValueError(f"{format} pixels must have shape {expected}, got {tuple(shape)}")
    actual = (shape[1], shape[0] * 2 // 3 if format == "nv12" else shape[0])
    if (width or actual[0], height or actual[1]) != actual:
        raise ValueError(
            f"width={width}, height={height} disagree with the pixels' {actual[0]}x{actual[1]}"
        )
    return np.ascontiguousarray(array).data.cast("B"), actual[0], actual[1]


class Outgoing(NamedTuple):
    """A message ready to go: ``parts`` for ``send_multipart`` (already checked), the message
    and payload they encode, and the :class:`SendResult` the send returns."""

    message: Message
    payload: memoryview | None
    parts: list[bytes | memoryview]
    sent: SendResult


class Requests:
    """The sending half: numbers each source's frames from 0, gives each request a
    ``traceparent`` and checks everything before anything is sent.

    Each method raises ``ValueError`` for input the protocol or the receiving source would
    reject (unknown image bytes, wrong pixel shape, a bad ``traceparent``), before a seq is
    used. A seq is used once built, whether or not the send then succeeds: seqs of a source
    may have gaps, never repeats. An end-of-stream restarts its source's numbering at 0.
    """

    def __init__(self) -> None:
        self._next_seq: dict[str, int] = {}

    def image(
        self,
        source_id: str,
        data: Buffer,
        *,
        format: ImageFormat | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> Outgoing:
        view = _byte_view(data)
        if format is None:
            format = image_format(view)
        elif format not in _IMAGE_FORMATS:
            raise ValueError(f"format must be 'jpeg', 'png' or None, got {format!r}")
        elif not bytes(view[:8]).startswith(_SIGNATURES[format]):
            raise ValueError(f"format={format!r}, but the data does not start like a {format}")
        width, height = _image_size(view, format)
        return self._frame(
            source_id, view, ImagePayload(format=format), width, height,
            pts_seconds=pts_seconds, keyframe=True, attributes=attributes,
            traceparent=traceparent,
        )

    def raw(
        self,
        source_id: str,
        pixels: object,
        *,
        format: RawFormat = "rgb24",
        width: int | None = None,
        height: int | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> Outgoing:
        view, width, height = _raw_pixels(pixels, format, width, height)
        return self._frame(
            source_id, view, RawPayload(width=width, height=height, format=format), width,
            height, pts_seconds=pts_seconds, keyframe=True, attributes=attributes,
            traceparent=traceparent,
        )

    def packet(
        self,
        source_id: str,
        data: Buffer,
        *,
        codec: str,
        width: int,
        height: int,
        time_base: tuple[int, int],
        pts: int | None = None,
        dts: int | None = None,
        keyframe: bool = False,
        extradata: bytes | None = None,
        pts_seconds: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> Outgoing:
        if len(time_base) != 2 or min(time_base) < 1:
            raise ValueError(
                f"time_base must be (numerator, denominator), both >= 1, got {time_base!r}"
            )
        if pts_seconds is None and pts is not None:
            pts_seconds = pts * time_base[0] / time_base[1]
        description = PacketPayload(
            codec=codec, width=width, height=height, time_base=time_base, pts=pts, dts=dts,
            extradata=extradata,
        )
        return self._frame(
            source_id, _byte_view(data), description, width, height, pts_seconds=pts_seconds,
            keyframe=keyframe, attributes=attributes, traceparent=traceparent,
        )

    def end_of_stream(self, source_id: str, *, traceparent: str | None = None) -> Outgoing:
        _check_source_id(source_id)
        traceparent = new_traceparent() if traceparent is None else check_traceparent(traceparent)
        last = self._next_seq.get(source_id, 0) - 1
        message = EndOfStream(
            source_id=source_id, last_seq=last if last >= 0 else None, traceparent=traceparent
        )
        parts = encode(message)
        self._next_seq.pop(source_id, None)
        sent = SendResult(
            source_id, message.last_seq, trace_id_of(traceparent), traceparent,
            end_of_stream=True,
        )
        return Outgoing(message, None, parts, sent)

    def last_seq(self, source_id: str) -> int | None:
        """The seq of the last frame built for ``source_id`` in its current stream."""
        last = self._next_seq.get(source_id, 0) - 1
        return last if last >= 0 else None

    def _frame(
        self,
        source_id: str,
        payload: memoryview,
        description: Payload,
        width: int,
        height: int,
        *,
        pts_seconds: float | None,
        keyframe: bool,
        attributes: Mapping[str, Any] | None,
        traceparent: str | None,
    ) -> Outgoing:
        _check_source_id(source_id)
        if pts_seconds is not None and not math.isfinite(pts_seconds):
            raise ValueError(f"pts_seconds must be finite or None, got {pts_seconds}")
        traceparent = new_traceparent() if traceparent is None else check_traceparent(traceparent)
        seq = self._next_seq.get(source_id, 0)
        metadata = None
        if attributes:
            metadata = Frame(
                source_id=source_id, seq=seq, pts_seconds=pts_seconds, keyframe=keyframe,
                width=width, height=height, attributes=dict(attributes),
            )
        message = FrameMessage(
            source_id=source_id, seq=seq, pts_seconds=pts_seconds, keyframe=keyframe,
            payload=description, traceparent=traceparent, metadata=metadata,
        )
        parts = encode(message, payload)  # ValueError for anything a receiver would reject
        self._next_seq[source_id] = seq + 1
        sent = SendResult(source_id, seq, trace_id_of(traceparent), traceparent)
        return Outgoing(message, payload, parts, sent)


class Results:
    """The receiving half: turns messages into :class:`Result` objects for the sources
    wanted (``source_ids``: exactly these; ``prefix``: ids starting with it; neither: all).

    Messages of other sources are counted in ``filtered``; messages that are not results
    (a frame or acknowledgement sent to a sink by mistake) in ``unexpected``.
    """

    def __init__(
        self, *, source_ids: Collection[str] | None = None, prefix: str | None = None
    ) -> None:
        if source_ids is not None and prefix is not None:
            raise ValueError("give source_ids or prefix, not both")
        if isinstance(source_ids, str):
            raise ValueError(f"source_ids must be a collection of ids, got {source_ids!r}")
        if source_ids is not None:
            for source_id in source_ids:
                _check_source_id(source_id)
        if prefix is not None and not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string or None, got {prefix!r}")
        self._ids = None if source_ids is None else frozenset(source_ids)
        self._prefix = prefix
        self.results = 0
        self.end_of_streams = 0
        self.filtered = 0
        self.unexpected = 0

    @property
    def subscriptions(self) -> list[str]:
        """Topic prefixes a sub socket should subscribe to (it filters before decoding;
        :meth:`accept` still checks ids exactly)."""
        if self._ids is not None:
            return sorted(self._ids)
        return [self._prefix or ""]

    def wants(self, source_id: str) -> bool:
        if self._ids is not None:
            return source_id in self._ids
        return self._prefix is None or source_id.startswith(self._prefix)

    def accept(self, message: Message, payload: memoryview | None) -> Result | None:
        """The :class:`Result` for a received message, or None when it is filtered out or not
        a result (counted)."""
        if isinstance(message, ResultMessage):
            if not self.wants(message.source_id):
                self.filtered += 1
                return None
            self.results += 1
            return Result(
                source_id=message.source_id,
                seq=message.seq,
                frame=message.frame,
                trace_id=_trace_id(message.traceparent),
                traceparent=message.traceparent,
                content_kind=message.content,
                content=payload,
                content_description=message.payload,
            )
        if isinstance(message, EndOfStream):
            if not self.wants(message.source_id):
                self.filtered += 1
                return None
            self.end_of_streams += 1
            return Result(
                source_id=message.source_id,
                seq=message.last_seq,
                frame=None,
                trace_id=_trace_id(message.traceparent),
                traceparent=message.traceparent,
                end_of_stream=True,
            )
        self.unexpected += 1
        return None
