"""The source adapter of live inputs (``torchstream source url rtsp://…``, ``source camera``):
a camera or stream sent to a module packet by packet, across outages, until stopped."""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from typing import Any, Literal

import av
import msgspec
from av.video.reformatter import VideoReformatter

from torchstream._errors import SourceError
from torchstream.codecs._pyav import RgbConverter, sws_threads
from torchstream.frame import Frame
from torchstream.sinks._images import encode_picture
from torchstream.sources._live import LiveDemuxer, LivePacket, LiveStream
from torchstream.transport._adapter_stats import AdapterTracer, SendMonitor
from torchstream.transport._adapters import (
    Outlet,
    SendReport,
    _monitored,
    _sending,
    open_sender,
)
from torchstream.transport._endpoint import Endpoint
from torchstream.transport._protocol import (
    FrameMessage,
    ImagePayload,
    PacketPayload,
    Payload,
    RawPayload,
)

__all__ = ["CameraFormat", "camera_options", "send_live"]

log = logging.getLogger(__name__)

CameraFormat = Literal["mjpeg", "yuyv422", "h264"]
"""What a V4L2 camera is asked to deliver (FFmpeg's ``input_format``)."""

_DEFAULT_TIME_BASE = Fraction(1, 90000)

# Raw pictures that go on the wire as they are; any other layout is converted to nv12.
_RAW_AS_IS = {"rgb24": "rgb24", "bgr24": "bgr24", "rgba": "rgba", "gray": "gray8",
              "nv12": "nv12"}


def camera_options(
    *,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    input_format: CameraFormat | None = None,
) -> dict[str, str]:
    """FFmpeg's V4L2 options for a camera: ``size`` ``(width, height)``, frame rate,
    and what it delivers (``mjpeg``, ``yuyv422`` raw pictures, ``h264``)."""
    options: dict[str, str] = {}
    if size is not None:
        width, height = size
        if width < 1 or height < 1:
            raise ValueError(f"size must be positive, got {width}x{height}")
        options["video_size"] = f"{width}x{height}"
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        options["framerate"] = f"{fps:g}"
    if input_format is not None:
        if input_format not in ("mjpeg", "yuyv422", "h264"):
            raise ValueError(
                f"input_format must be 'mjpeg', 'yuyv422' or 'h264', got {input_format!r}"
            )
        options["input_format"] = input_format
    return options


class _Timeline:
    """One clock across connections. A restarted camera's clock starts again (at 0, or
    anywhere), so each connection's timestamps are shifted to go on from the latest one
    sent, plus the outage's length: the stream's time keeps increasing and keeps its gaps,
    and a sink that writes the packets into a file can mux them as they come."""

    def __init__(self) -> None:
        self._latest: Fraction | None = None  # the largest timestamp sent, in seconds
        self._offset = 0  # units of the connection's time base, added to its timestamps
        self._gap: Fraction | None = None  # a connection began: shift at its first stamp

    def restart(self, gap_seconds: float | None) -> None:
        """A connection begins, ``gap_seconds`` after the previous one's last packet."""
        self._gap = Fraction(gap_seconds or 0.0).limit_denominator(1_000_000)

    def shift(
        self, pts: int | None, dts: int | None, time_base: Fraction
    ) -> tuple[int | None, int | None]:
        """``(pts, dts)`` of the connection's packet on the one clock."""
        stamps = [s for s in (pts, dts) if s is not None]
        if not stamps:
            return None, None
        if self._gap is not None:  # the connection's first packet with a timestamp
            if self._latest is None:
                self._offset = 0
            else:
                target = self._latest + max(self._gap, time_base)
                self._offset = round(target / time_base) - min(stamps)
            self._gap = None
        latest = (max(stamps) + self._offset) * time_base
        if self._latest is None or latest > self._latest:
            self._latest = latest
        return (
            None if pts is None else pts + self._offset,
            None if dts is None else dts + self._offset,
        )


class _RawPictures:
    """Raw camera pictures as wire payloads: layouts the wire knows go as they are, others
    (``yuyv422``, ``uyvy422``, …) are converted to ``nv12`` (``rgb24`` for odd sizes); or,
    ``as_jpeg``, every picture encoded as a JPEG image (for destinations that take no raw
    pixels: NATS workers)."""

    def __init__(self, stream: LiveStream, source_id: str, *, as_jpeg: bool = False) -> None:
        self._stream = stream
        pixel_format = stream.pixel_format or ""
        self._as_jpeg = as_jpeg
        # Kept: PyAV's frame.reformat sets a scaler up per call.
        self._rgb = RgbConverter()
        self._reformatter = VideoReformatter()
        self._as_is = None if as_jpeg else _RAW_AS_IS.get(pixel_format)
        self._target = "nv12" if stream.width % 2 == 0 and stream.height % 2 == 0 else "rgb24"
        self._context: Any = None
        if self._as_is is None:
            try:
                context: Any = av.CodecContext.create("rawvideo", "r")
                context.width, context.height = stream.width, stream.height
                context.pix_fmt = pixel_format
            except (av.error.FFmpegError, ValueError) as exc:
                raise SourceError(
                    source_id, f"cannot read raw {pixel_format!r} pictures of "
                    f"{stream.width}x{stream.height}"
                ) from exc
            self._context = context

    def convert(self, data: bytes) -> tuple[RawPayload | ImagePayload, bytes]:
        stream = self._stream
        if self._as_is is not None:
            payload = RawPayload(width=stream.width, height=stream.height,
                                 format=self._as_is)  # type: ignore[arg-type]
            return payload, data
        pictures = self._context.decode(av.Packet(data))
        if not pictures:
            raise ValueError("a raw packet without a picture")
        if self._as_jpeg:
            return ImagePayload(format="jpeg"), encode_picture(self._rgb(pictures[0]))
        picture = self._reformatter.reformat(
            pictures[0], format=self._target, **sws_threads(stream.width, stream.height)
        )
        payload = RawPayload(width=stream.width, height=stream.height,
                             format=self._target)  # type: ignore[arg-type]
        return payload, picture.to_ndarray().tobytes()


def send_live(
    demuxer: LiveDemuxer,
    endpoint: Endpoint | str | Outlet,
    *,
    source_id: str | None = None,
    stop: threading.Event | None = None,
    monitor: SendMonitor | None = None,
    tracer: AdapterTracer | None = None,
    raw_pictures: Literal["raw", "jpeg"] = "raw",
) -> SendReport:
    """Send the packets of a live input (``demuxer``) to a module as ``source_id`` (default:
    the demuxer's), across outages, until ``stop`` is set (give the demuxer the same event
    as ``stop_event``, so that a wait to reconnect ends at once) or the demuxer gives up
    (``max_reconnects``: :class:`~torchstream.SourceError` is raised after the end of
    stream went out); then an end of stream.

    Packets are sent as they are: H.264/HEVC in Annex B, each connection starting at a
    keyframe with its parameter sets. MJPEG pictures go as JPEG images, raw pictures as raw
    payloads (see :class:`_RawPictures`), or with ``raw_pictures="jpeg"`` encoded as JPEG
    images on this thread (NATS workers take no raw pixels, and a raw HD picture exceeds a
    NATS message). ``endpoint`` may be a NATS outlet
    (:class:`~torchstream.nats._outlet.NatsOutlet`). Every frame's metadata carries
    ``live.wallclock_seconds`` (when its packet arrived), the first one after an outage
    ``live.gap_seconds``, and timestamps go on increasing across outages (see
    :class:`_Timeline`); a module restarts decoding at that frame.

    ``monitor`` counts what is sent as ``source_id`` (a source that gives up counts as
    failed); ``tracer`` wraps each frame's send in a span whose ``traceparent`` the frame
    message carries, as for :func:`~torchstream.transport._adapters.send_video`.
    """
    if raw_pictures not in ("raw", "jpeg"):
        raise ValueError(f"raw_pictures must be 'raw' or 'jpeg', got {raw_pictures!r}")
    stop = stop or threading.Event()
    sid = source_id or demuxer.source_id
    sent = 0
    timeline = _Timeline()
    raw: _RawPictures | None = None
    failure: SourceError | None = None
    with open_sender(endpoint) as sender, _monitored(monitor, sid, sender):
        packets = demuxer.packets()
        try:
            for item in packets:
                if stop.is_set():
                    break
                if item.restart:
                    timeline.restart(item.gap_seconds)
                    is_raw = item.stream.codec == "rawvideo"
                    raw = _RawPictures(
                        item.stream, sid, as_jpeg=raw_pictures == "jpeg"
                    ) if is_raw else None
                try:
                    message, data = _message(item, sid, sent, timeline, raw)
                except (ValueError, av.error.FFmpegError) as exc:  # a damaged raw picture
                    demuxer.drop_connection(f"unreadable picture from {demuxer}: {exc}")
                    continue
                with _sending(tracer, sid, sent) as traceparent:
                    if traceparent is not None:  # the span is this frame's send, no more
                        message = msgspec.structs.replace(message, traceparent=traceparent)
                    sender.send(message, data)
                sent += 1
        except SourceError as exc:  # gave up (max_reconnects) or cannot be fixed by retrying
            failure = exc
        finally:
            packets.close()
            demuxer.close()
        ack = sender.send_eos(sid, last_seq=sent - 1 if sent else None) if sent else None
        if failure is not None:
            raise failure  # after the end of stream; the monitor counts the source as failed
    return SendReport(sid, sent, ack is not None, demuxer.statistics().reconnects)


def _message(
    item: LivePacket, source_id: str, seq: int, timeline: _Timeline, raw: _RawPictures | None
) -> tuple[FrameMessage, bytes]:
    packet, stream = item.packet, item.stream
    time_base = packet.time_base or _DEFAULT_TIME_BASE
    pts, dts = timeline.shift(packet.pts, packet.dts, time_base)
    pts_seconds = None if pts is None else float(pts * time_base)
    attributes: dict[str, Any] = {"live.wallclock_seconds": round(item.received_unix, 6)}
    if item.gap_seconds is not None:
        attributes["live.gap_seconds"] = round(item.gap_seconds, 6)
    data = packet.data
    payload: Payload
    if packet.codec == "mjpeg" and data[:3] == b"\xff\xd8\xff":
        payload = ImagePayload(format="jpeg")
    elif raw is not None:
        payload, data = raw.convert(data)
    else:
        payload = PacketPayload(
            codec=packet.codec,
            width=packet.width,
            height=packet.height,
            time_base=(time_base.numerator, time_base.denominator),
            pts=pts,
            dts=dts,
            duration=packet.duration,
            extradata=stream.extradata if packet.keyframe else None,
        )
    metadata = Frame(
        source_id=source_id, seq=seq, pts_seconds=pts_seconds, keyframe=packet.keyframe,
        width=packet.width, height=packet.height, codec=packet.codec, attributes=attributes,
    )
    message = FrameMessage(
        source_id=source_id, seq=seq, pts_seconds=pts_seconds, keyframe=packet.keyframe,
        payload=payload, metadata=metadata,
    )
    return message, data
