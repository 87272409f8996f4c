"""CPU demuxing and decoding with PyAV (FFmpeg): files, URLs, images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.container
import torch
from av.video.reformatter import VideoReformatter

from torchstream._errors import SourceError

__all__ = [
    "EncodedPacket",
    "ImageDecoder",
    "PyAVDecoder",
    "PyAVPacketDecoder",
    "annexb_filter",
    "decode_image",
    "demux_packets",
    "open_container",
    "sws_threads",
]

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_SECONDS = 10.0


_SWS_THREADS_FROM_PIXELS = 640 * 360
"""Pictures smaller than this are converted on the calling thread (see :func:`sws_threads`)."""
_SWS_HAS_THREADS = int(av.__version__.split(".")[0]) >= 17


def sws_threads(width: int, height: int) -> dict[str, int]:
    """Keyword arguments for PyAV's ``reformat`` that keep a small picture's conversion on
    the calling thread.

    Since PyAV 17 a scaler converts in slices on threads of its own, one per core by default
    (``threads=0``), and every kept scaler starts its own pool. For a small picture handing
    the slices out costs more than the work; for a large one the pool wins on an idle
    machine. yuv420p to RGB, one thread / the pool, one picture at a time:

    - this project's 2-core VM (PyAV 18): 36x36 7.8 / 34.6 us, 640x360 94 / 100 us,
      1280x720 367 / 351 us, 1920x1080 814 / 689 us;
    - an H200 host's 16 cores (PyAV 19): 36x36 4.5 / 29.5 us, 640x360 98 / 59 us,
      1280x720 387 / 84 us, 1920x1080 899 / 145 us.

    A NATS worker holding 333 cameras of small JPEGs ran 666 idle scaler threads whose
    wake-ups took half of its CPU. Below ``_SWS_THREADS_FROM_PIXELS`` the conversion runs on
    one thread; larger pictures keep FFmpeg's choice. Nothing to say for PyAV < 17 (one
    thread always)."""
    if _SWS_HAS_THREADS and width * height < _SWS_THREADS_FROM_PIXELS:
        return {"threads": 1}
    return {}


class RgbConverter:
    """Decoded pictures to ``uint8 (H, W, 3)`` RGB tensors through one kept FFmpeg scaler.

    With PyAV 18 (the newest for Python 3.11), ``frame.to_ndarray(format="rgb24")`` sets up
    a new scaler for every picture, which costs more than converting a small one: on this
    project's 2-core VM a 36x36 JPEG decodes and converts in 93 us instead of 398 us (a
    camera's ``ImageDecoder.decode`` 540 -> 125 us). PyAV 19 (an H100 host, Python 3.12)
    shows no difference either way, nor does 960x540 or 1080p video once warm. The kept
    context is rebuilt by FFmpeg only when the size or format changes; small pictures
    convert on the calling thread (:func:`sws_threads`). Not thread-safe: one per decoder."""

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: Any) -> torch.Tensor:
        """Each call returns a new tensor (the pictures do not share memory)."""
        rgb = self._reformatter.reformat(
            frame, format="rgb24", **sws_threads(frame.width, frame.height)
        )
        return torch.from_numpy(rgb.to_ndarray())


def open_container(uri: str, *, source_id: str, options: dict[str, str] | None = None) -> Any:
    """Open ``uri`` for reading with FFmpeg, translating failures into :class:`SourceError`.

    Network inputs get a socket timeout (``timeout`` / ``rw_timeout``, microseconds, FFmpeg's
    unit) unless ``options`` sets one, so an unreachable host fails instead of hanging.
    """
    opts = dict(options or {})
    if "://" in uri and not uri.startswith("file:"):
        micros = str(int(_OPEN_TIMEOUT_SECONDS * 1e6))
        opts.setdefault("rw_timeout", micros)
        if uri.startswith(("rtsp://", "rtsps://")):
            opts.setdefault("timeout", micros)
    try:
        return av.open(uri, mode="r", options=opts, timeout=_OPEN_TIMEOUT_SECONDS)
    except FileNotFoundError as exc:
        raise SourceError(source_id, f"no such file: {uri}") from exc
    except IsADirectoryError as exc:
        raise SourceError(source_id, f"is a directory, not a media file: {uri}") from exc
    except PermissionError as exc:
        raise SourceError(source_id, f"permission denied: {uri}") from exc
    except av.error.InvalidDataError as exc:
        raise SourceError(
            source_id, f"not a readable video or image (unsupported or corrupt media): {uri}"
        ) from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(source_id, f"cannot open {uri}: {exc}") from exc


class PyAVDecoder:
    """Decodes the video stream of an open container into RGB ``uint8 (H, W, 3)`` tensors.

    Frame threads are on (FFmpeg picks the count). Corrupt data mid-stream raises
    :class:`SourceError` with the position where it happened; a stream that ends well before
    the duration its container declares (a truncated file) raises too, after delivering the
    frames it had. ``max_pixels`` rejects oversized pictures before they are decoded.
    """

    def __init__(
        self,
        container: Any,
        *,
        source_id: str,
        uri: str,
        max_pixels: int = 8192 * 8192,
        check_truncation: bool = True,
    ) -> None:
        self.source_id = source_id
        self.uri = uri
        self._container = container
        if not container.streams.video:
            raise SourceError(source_id, f"no video stream in {uri}")
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        ctx = self.stream.codec_context
        self.codec = ctx.name or ""
        if ctx.width and ctx.height and ctx.width * ctx.height > max_pixels:
            raise SourceError(
                source_id,
                f"picture of {ctx.width}x{ctx.height} exceeds max_pixels={max_pixels}: {uri}",
            )
        self._max_pixels = max_pixels
        self._check_truncation = check_truncation
        self._rgb = RgbConverter()

    def _declared_duration_seconds(self) -> float | None:
        stream = self.stream
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if self._container.duration is not None:
            return float(self._container.duration) / 1e6
        return None

    def frames(self) -> Iterator[tuple[torch.Tensor, float | None, bool]]:
        """Yield ``(rgb, pts_seconds, keyframe)`` for every decoded picture."""
        last_pts: float | None = None
        interval = 1.0 / float(self.stream.average_rate) if self.stream.average_rate else 0.04
        try:
            for frame in self._container.decode(self.stream):
                if frame.width * frame.height > self._max_pixels:
                    raise SourceError(
                        self.source_id,
                        f"picture of {frame.width}x{frame.height} exceeds "
                        f"max_pixels={self._max_pixels}",
                    )
                pts = frame.time
                if pts is not None:
                    last_pts = float(pts)
                rgb = self._rgb(frame)
                yield rgb, (None if pts is None else float(pts)), bool(frame.key_frame)
        except av.error.FFmpegError as exc:
            where = f"after {last_pts:.3f} s" if last_pts is not None else "at the start"
            raise SourceError(
                self.source_id, f"corrupt or truncated data {where} in {self.uri}: {exc}"
            ) from exc
        declared = self._declared_duration_seconds()
        if (
            self._check_truncation
            and declared is not None
            and last_pts is not None
            and last_pts + 3 * interval < 0.95 * declared
        ):
            raise SourceError(
                self.source_id,
                f"truncated: the stream ends at {last_pts:.3f} s of the "
                f"{declared:.3f} s its container declares ({self.uri})",
            )


class PyAVPacketDecoder:
    """Decodes packets of one stream given as bytes (received from elsewhere, not demuxed
    here) into RGB ``uint8 (H, W, 3)`` tensors on the CPU.

    ``codec`` is FFmpeg's name (``h264``, ``hevc``, ``mjpeg``, …); H.264/HEVC packets are
    Annex B or need ``extradata``. ``time_base``: seconds per pts unit. Packets before the
    first keyframe are skipped; corrupt data raises :class:`SourceError`. ``rawvideo``
    needs ``width``, ``height`` and ``pixel_format`` (FFmpeg's name: ``yuyv422``, …).
    """

    def __init__(
        self,
        codec: str,
        *,
        time_base: float | None,
        source_id: str,
        uri: str,
        extradata: bytes | None = None,
        max_pixels: int = 8192 * 8192,
        width: int | None = None,
        height: int | None = None,
        pixel_format: str | None = None,
    ) -> None:
        self.codec = codec
        self.source_id = source_id
        self.uri = uri
        self._time_base = time_base
        self._max_pixels = max_pixels
        try:
            self._context: Any = av.CodecContext.create(codec, "r")
        except (av.error.FFmpegError, ValueError) as exc:
            raise SourceError(source_id, f"unknown codec {codec!r} ({uri})") from exc
        if extradata:
            self._context.extradata = extradata
        try:
            context: Any = self._context
            if width and height:
                context.width, context.height = width, height
            if pixel_format:
                context.pix_fmt = pixel_format
        except (av.error.FFmpegError, ValueError) as exc:
            raise SourceError(
                source_id, f"cannot decode {pixel_format} pictures of {width}x{height} ({uri})"
            ) from exc
        # PyAV's default slice threading: frame threading would add a frame of latency per
        # thread to a live stream, and (PyAV 18) freeing a frame-threaded context that was not
        # flushed hangs.
        self._seen_keyframe = False
        self._rgb = RgbConverter()

    def decode(
        self, data: bytes | memoryview, *, pts: int | None = None, keyframe: bool = False
    ) -> list[tuple[torch.Tensor, float | None, bool]]:
        if not self._seen_keyframe:
            if not keyframe:
                return []
            self._seen_keyframe = True
        packet = av.Packet(bytes(data))
        if pts is not None:
            packet.pts = pts
        return self._decode(packet)

    def flush(self) -> list[tuple[torch.Tensor, float | None, bool]]:
        """The pictures still inside the decoder, at the end of a stream."""
        return self._decode(None) if self._seen_keyframe else []

    def _decode(self, packet: Any) -> list[tuple[torch.Tensor, float | None, bool]]:
        try:
            frames = self._context.decode(packet)
        except av.error.FFmpegError as exc:
            raise SourceError(
                self.source_id, f"corrupt {self.codec} data from {self.uri}: {exc}"
            ) from exc
        out = []
        for frame in frames:
            if frame.width * frame.height > self._max_pixels:
                raise SourceError(
                    self.source_id,
                    f"picture of {frame.width}x{frame.height} exceeds "
                    f"max_pixels={self._max_pixels} ({self.uri})",
                )
            seconds = (
                frame.pts * self._time_base
                if frame.pts is not None and self._time_base is not None
                else None
            )
            rgb = self._rgb(frame)
            out.append((rgb, seconds, bool(frame.key_frame)))
        return out


def decode_image(
    data: bytes | memoryview, *, source_id: str, max_pixels: int = 8192 * 8192
) -> tuple[torch.Tensor, str]:
    """One still image (JPEG, PNG, BMP, TIFF, WebP, …) from its encoded bytes → ``(rgb,
    codec)``. The size is checked from the stream header before the picture is decoded."""
    import io

    try:
        container = av.open(io.BytesIO(bytes(data)), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(source_id, f"not a readable image: {exc}") from exc
    try:
        decoder = PyAVDecoder(
            container,
            source_id=source_id,
            uri="image bytes",
            max_pixels=max_pixels,
            check_truncation=False,
        )
        for rgb, _pts, _key in decoder.frames():
            return rgb, decoder.codec
        raise SourceError(source_id, "no picture in the image bytes")
    finally:
        container.close()


@dataclass(frozen=True)
class EncodedPacket:
    """One demuxed video packet, ready to send: H.264/HEVC in Annex B (parameter sets in the
    stream), pts, dts and duration in ``time_base`` seconds per unit. Packets come in decode
    order; with B-frames, pts is not increasing but dts is."""

    data: bytes
    codec: str
    pts: int | None
    time_base: Fraction | None
    keyframe: bool
    width: int
    height: int
    dts: int | None = None
    duration: int | None = None


# H.264/HEVC in MP4/MKV carry length-prefixed NAL units; NVDEC's parser and our wire want
# Annex B start codes. The filters pass Annex B input (MPEG-TS, RTSP, raw .h264) through.
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}


def annexb_filter(stream: Any) -> Any:
    """A bitstream filter turning ``stream``'s packets into Annex B, or None when its codec
    needs none."""
    name = _ANNEXB_FILTERS.get(stream.codec_context.name or "")
    if name is None:
        return None
    from av.bitstream import BitStreamFilterContext

    return BitStreamFilterContext(name, stream)


def demux_packets(
    uri: str, *, source_id: str, options: dict[str, str] | None = None
) -> Iterator[EncodedPacket]:
    """The video packets of ``uri`` without decoding them (what a source adapter sends).

    MP4/MKV H.264 and HEVC are converted to Annex B (the filter passes Annex B input such as
    MPEG-TS or RTSP through). Errors raise :class:`SourceError` naming the input.
    """
    container = open_container(uri, source_id=source_id, options=options)
    try:
        if not container.streams.video:
            raise SourceError(source_id, f"no video stream in {uri}")
        stream = container.streams.video[0]
        codec = stream.codec_context.name or ""
        time_base = Fraction(stream.time_base) if stream.time_base else None
        width, height = stream.codec_context.width, stream.codec_context.height
        bsf = annexb_filter(stream)

        def packets(packet: Any) -> Iterator[EncodedPacket]:
            for item in bsf.filter(packet) if bsf is not None else [packet]:
                if item.size:
                    yield EncodedPacket(
                        bytes(item), codec, item.pts, time_base, bool(item.is_keyframe),
                        width, height, item.dts, item.duration or None,
                    )

        try:
            for packet in container.demux(stream):
                if packet.size:
                    yield from packets(packet)
        except av.error.FFmpegError as exc:
            raise SourceError(source_id, f"corrupt or truncated data in {uri}: {exc}") from exc
        if bsf is not None:
            yield from packets(None)
    finally:
        container.close()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    view = memoryview(data)
    if len(view) < 24 or bytes(view[:8]) != _PNG_SIGNATURE or bytes(view[12:16]) != b"IHDR":
        return None
    return int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")


class ImageDecoder:
    """Decodes encoded still images on the CPU, keeping one FFmpeg decoder per format.

    JPEG and PNG go straight to a codec context, reused for JPEG (measured on a 640x360
    JPEG: 1.0 ms instead of 2.6 ms through a container opened per image); their size is read
    from the header and checked against ``max_pixels`` before decoding. Other formats (BMP, TIFF,
    WebP, …) go through :func:`decode_image`. Not thread-safe: one per thread.
    """

    def __init__(self, *, source_id: str, max_pixels: int = 8192 * 8192) -> None:
        self.source_id = source_id
        self.max_pixels = max_pixels
        self._contexts: dict[str, Any] = {}
        self._rgb = RgbConverter()

    def decode(self, data: bytes | memoryview) -> tuple[torch.Tensor, str]:
        """``(rgb uint8 (H, W, 3), codec name)``; :class:`SourceError` when it cannot."""
        from torchstream.codecs._nvjpeg import JpegHeaderError, jpeg_size

        codec, size = "", None
        try:
            size = jpeg_size(data)
            codec = "mjpeg"
        except JpegHeaderError:
            size = _png_size(data)
            codec = "png" if size is not None else ""
        if not codec:
            return decode_image(data, source_id=self.source_id, max_pixels=self.max_pixels)
        assert size is not None
        if size[0] * size[1] > self.max_pixels:
            raise SourceError(
                self.source_id,
                f"picture of {size[0]}x{size[1]} exceeds max_pixels={self.max_pixels}",
            )
        # FFmpeg's PNG decoder keeps the previous picture as a reference (for APNG): a
        # reused context blends successive images, so PNG gets a fresh one each time.
        context: Any = self._contexts.get(codec) if codec == "mjpeg" else None
        if context is None:
            context = av.CodecContext.create(codec, "r")
            if codec == "mjpeg":
                self._contexts[codec] = context
        try:
            frames = context.decode(av.Packet(bytes(data)))
        except av.error.FFmpegError as exc:
            self._contexts.pop(codec, None)  # start the next image with a clean decoder
            raise SourceError(self.source_id, f"corrupt {codec} image: {exc}") from exc
        if not frames:
            raise SourceError(self.source_id, f"no picture in the {codec} image")
        return self._rgb(frames[0]), codec
