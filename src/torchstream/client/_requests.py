"""The sending half of the client's sans-IO core, shared by :class:`~torchstream.client.Source`
and :class:`~torchstream.client.AsyncSource`: what goes out for each send, checked, numbered
and traced before anything touches a socket."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from torchstream.client._trace import check_traceparent, new_traceparent, trace_id_of
from torchstream.codecs._nvjpeg import jpeg_size
from torchstream.frame import Frame
from torchstream.transport._protocol import (
    EndOfStream,
    FrameMessage,
    ImagePayload,
    Message,
    PacketPayload,
    Payload,
    RawPayload,
    encode,
)

__all__ = [
    "Buffer",
    "ImageFormat",
    "Outgoing",
    "RawFormat",
    "Requests",
    "SendResult",
    "check_source_id",
    "image_format",
]

ImageFormat = Literal["jpeg", "png"]
RawFormat = Literal["rgb24", "bgr24", "rgba", "gray8", "nv12"]

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


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous (copy it, e.g. bytes(data))")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def check_source_id(source_id: str) -> None:
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
        return _byte_view(pixels), width, height
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
    if (width is not None and width != actual[0]) or (height is not None and height != actual[1]):
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
    ``trace_sample_ratio``: the share of new traces (requests sent outside an OpenTelemetry
    span) marked sampled, so that a pipeline tracing "parent-based" traces that share.
    """

    def __init__(self, *, trace_sample_ratio: float = 1.0) -> None:
        if not 0.0 <= trace_sample_ratio <= 1.0:
            raise ValueError(
                f"trace_sample_ratio must be between 0 and 1, got {trace_sample_ratio!r}"
            )
        self._next_seq: dict[str, int] = {}
        self._sample_ratio = trace_sample_ratio

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
        duration: int | None = None,
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
            duration=duration,
            extradata=extradata,
        )
        return self._frame(
            source_id, _byte_view(data), description, width, height, pts_seconds=pts_seconds,
            keyframe=keyframe, attributes=attributes, traceparent=traceparent,
        )

    def end_of_stream(self, source_id: str, *, traceparent: str | None = None) -> Outgoing:
        check_source_id(source_id)
        traceparent = (
            new_traceparent(sample_ratio=self._sample_ratio) if traceparent is None
            else check_traceparent(traceparent)
        )
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
        check_source_id(source_id)
        if pts_seconds is not None and not math.isfinite(pts_seconds):
            raise ValueError(f"pts_seconds must be finite or None, got {pts_seconds}")
        traceparent = (
            new_traceparent(sample_ratio=self._sample_ratio) if traceparent is None
            else check_traceparent(traceparent)
        )
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

