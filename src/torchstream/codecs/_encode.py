"""H.264 video files with PyAV (FFmpeg's libx264, on the CPU)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import av
import torch
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from torchstream._errors import BrokenResourceError, ClosedResourceError
from torchstream.codecs._pyav import sws_threads

if TYPE_CHECKING:
    from av.container import OutputContainer
    from av.video.stream import VideoStream

__all__ = ["VideoEncoder"]

logger = logging.getLogger(__name__)

_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}
_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
# 90 kHz, the MPEG clock: exact for 24, 25, 30, 50, 60 and the NTSC 1000/1001 rates.
_TIME_BASE = Fraction(1, 90_000)
# Frames are kept at least 1 ms apart: Matroska stores timestamps in milliseconds and two
# frames on the same millisecond would be rejected by the muxer.
_MIN_STEP_TICKS = 90


class VideoEncoder:
    """Writes RGB frames to an H.264 (``yuv420p``) ``.mp4`` or ``.mkv`` file.

    The file is created at the first :meth:`encode`, sized like that frame; every later frame
    must have the same size. H.264 in 4:2:0 needs even sizes: an odd width or height is padded
    by one pixel that repeats the last column or row (nothing is cropped). Colours are
    converted and tagged as BT.709, limited range.

    Timing: each frame's ``pts_seconds`` is kept (variable frame rates and gaps survive),
    shifted so that the file starts at 0. A frame without pts comes ``1 / fps`` after the
    previous one. A timestamp that goes backwards, repeats, or is less than 1 ms after the
    previous one is moved to 1 ms after it (logged once per file).

    ``crf`` (0-51, lower is better and bigger; 18 looks lossless, 28 is small) and ``preset``
    (x264's speed/size trade-off) are passed to libx264. An ``.mp4`` is only playable after
    :meth:`close` writes its index; prefer ``.mkv`` for long recordings that may be cut off.

    Errors from FFmpeg or the file system become :class:`~torchstream.BrokenResourceError`
    naming the output path; :meth:`encode` after :meth:`close` raises
    :class:`~torchstream.ClosedResourceError`. ``close`` flushes and is idempotent; the encoder
    is also a context manager. Not thread-safe: use one encoder from one thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crf: int = 23,
        preset: str = "veryfast",
        fps: float = 30.0,
    ) -> None:
        self._path = Path(path)
        suffix = self._path.suffix.lower()
        if suffix not in _CONTAINERS:
            raise ValueError(f"path must end with one of {sorted(_CONTAINERS)}, got {str(path)!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer in [0, 51], got {crf!r}")
        if preset not in _PRESETS:
            raise ValueError(f"preset must be one of {list(_PRESETS)}, got {preset!r}")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < 1000:
            raise ValueError(f"fps must be a number in (0, 1000), got {fps!r}")
        self._format = _CONTAINERS[suffix]
        self._crf = crf
        self._preset = preset
        self._fps = float(fps)
        self._output: tuple[OutputContainer, VideoStream] | None = None
        self._yuv = VideoReformatter()  # kept: PyAV's frame.reformat sets one up per call
        self._origin_seconds: float | None = None
        self._last_ticks: int | None = None
        self._frames = 0
        self._adjusted = 0
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def frames_written(self) -> int:
        """Frames passed to :meth:`encode` so far."""
        return self._frames

    @property
    def closed(self) -> bool:
        return self._closed

    def encode(self, rgb: torch.Tensor, *, pts_seconds: float | None = None) -> None:
        """Encode one ``uint8 (height, width, 3)`` RGB frame, on any device.

        This is where pixels are copied to the host (a synchronising copy from a GPU).
        """
        if self._closed:
            raise ClosedResourceError(f"{self._path}: encoder is closed")
        if rgb.dim() != 3 or rgb.shape[-1] != 3 or rgb.dtype != torch.uint8:
            raise ValueError(
                f"{self._path}: frames must be uint8 (height, width, 3), got "
                f"{rgb.dtype} {tuple(rgb.shape)}"
            )
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        if height == 0 or width == 0:
            raise ValueError(f"{self._path}: frame has no pixels: {tuple(rgb.shape)}")
        if self._output is None:
            self._output = self._open(width, height)
        container, stream = self._output
        if (stream.width, stream.height) != (width + width % 2, height + height % 2):
            raise ValueError(
                f"{self._path}: every frame must have the size of the first one "
                f"({stream.width}x{stream.height}, odd sizes padded), got {width}x{height}"
            )
        if height % 2:
            rgb = torch.cat([rgb, rgb[-1:]], dim=0)
        if width % 2:
            rgb = torch.cat([rgb, rgb[:, -1:]], dim=1)
        pixels = rgb.detach().to("cpu").contiguous().numpy()

        frame = self._yuv.reformat(
            av.VideoFrame.from_ndarray(pixels, format="rgb24"),
            format="yuv420p",
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
            **sws_threads(width, height),
        )
        frame.pts = self._next_ticks(pts_seconds)
        frame.time_base = _TIME_BASE
        try:
            for packet in stream.encode(frame):
                container.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            self._abort()
            raise BrokenResourceError(f"{self._path}: cannot write video: {exc}") from exc
        self._frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent). No file if nothing was encoded."""
        if self._closed:
            return
        self._closed = True
        if self._output is None:
            return
        container, stream = self._output
        try:
            for packet in stream.encode(None):
                container.mux(packet)
            container.close()
        except (av.FFmpegError, OSError) as exc:
            self._abort()
            raise BrokenResourceError(f"{self._path}: cannot finish video: {exc}") from exc
        finally:
            self._output = None

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"VideoEncoder({str(self._path)!r}, frames={self._frames}, {state})"

    def _open(self, width: int, height: int) -> tuple[OutputContainer, VideoStream]:
        """Create the file and its H.264 stream for frames of ``width`` x ``height``."""
        width, height = width + width % 2, height + height % 2
        try:
            container = av.open(str(self._path), mode="w", format=self._format)
        except (av.FFmpegError, OSError) as exc:
            self._closed = True
            raise BrokenResourceError(f"{self._path}: cannot create video file: {exc}") from exc
        try:
            stream = container.add_stream(
                "libx264",
                rate=Fraction(self._fps).limit_denominator(100_000),
                options={"crf": str(self._crf), "preset": self._preset},
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.time_base = _TIME_BASE
            codec = stream.codec_context
            codec.time_base = _TIME_BASE
            codec.colorspace = Colorspace.ITU709.value
            codec.color_primaries = 1  # BT.709
            codec.color_trc = 1  # BT.709
            codec.color_range = ColorRange.MPEG.value
            # Write the header now: FFmpeg would otherwise create the file only when the first
            # packet leaves x264's look-ahead, and a bad path would surface many frames later.
            container.start_encoding()
        except (av.FFmpegError, OSError) as exc:
            self._closed = True
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()  # the error that matters is the one above
            raise BrokenResourceError(f"{self._path}: cannot create video file: {exc}") from exc
        return container, stream

    def _next_ticks(self, pts_seconds: float | None) -> int:
        """The frame's pts in ``_TIME_BASE`` units, relative to the first frame, increasing."""
        if self._last_ticks is None:
            expected = 0.0
        else:
            expected = float(self._last_ticks * _TIME_BASE) + 1.0 / self._fps
        if pts_seconds is None or not math.isfinite(pts_seconds):
            seconds = expected
        else:
            if self._origin_seconds is None:
                self._origin_seconds = pts_seconds - expected
            seconds = pts_seconds - self._origin_seconds
        ticks = round(seconds / _TIME_BASE)
        if self._last_ticks is not None and ticks < self._last_ticks + _MIN_STEP_TICKS:
            if self._adjusted == 0:
                logger.warning(
                    "%s: timestamp %.6f s is not after the previous frame; moved to 1 ms later "
                    "(further adjustments are counted, not logged)",
                    self._path,
                    float(ticks * _TIME_BASE),
                )
            self._adjusted += 1
            ticks = self._last_ticks + _MIN_STEP_TICKS
        self._last_ticks = ticks
        return ticks

    def _abort(self) -> None:
        """Release the file after an error; the encoder is then closed."""
        self._closed = True
        output, self._output = self._output, None
        if output is not None:
            try:
                output[0].close()
            except (av.FFmpegError, OSError):
                logger.debug("%s: error while closing after a failure", self._path, exc_info=True)
