"""CPU demuxing and decoding with PyAV (FFmpeg): files, URLs, images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import av
import av.container
import torch

from torchstream._errors import SourceError

__all__ = ["PyAVDecoder", "open_container"]

log = logging.getLogger(__name__)

_OPEN_TIMEOUT_SECONDS = 10.0


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
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
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
