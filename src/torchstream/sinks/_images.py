"""Annotated frames as image files, one per frame."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import torch
from av.video.reformatter import ColorRange

from torchstream._draw import AnnotationStyle, annotate
from torchstream._errors import BrokenResourceError, ClosedResourceError
from torchstream.codecs._pyav import sws_threads
from torchstream.sinks._video import safe_filename_part

if TYPE_CHECKING:
    from torchstream.frame import Frame
    from torchstream.pipeline._session import Session

__all__ = ["ImageSink", "encode_picture"]

ImageFormat = Literal["jpg", "png"]
_FORMATS: tuple[ImageFormat, ...] = ("jpg", "png")
_DEFAULT_STYLE = AnnotationStyle()
# JPEG quantiser scale 3 (ffmpeg's ``-q:v 3``, about quality 90): artefacts are hard to see
# and files stay about a quarter of a PNG's size on camera footage.
_JPEG_QSCALE = 3


class ImageSink:
    """Writes every frame, annotated, as ``<directory>/<source_id>/<seq:06d>.<jpg|png>``.

    Source ids are made safe for file names as in :class:`~torchstream.sinks.VideoSink`; the
    directories are created as needed and existing files are overwritten. Each image is
    written to a temporary name and renamed, so a program watching the directory never reads
    half a file. JPEG is 4:2:0 at about quality 90; PNG is lossless RGB (several times bigger
    and slower to write: keep it for tests and a few frames).

    Errors: a frame without a surface raises ValueError naming its source; an unwritable
    directory or a full disk raises :class:`~torchstream.BrokenResourceError` naming the file;
    ``write`` after ``close`` raises :class:`~torchstream.ClosedResourceError`. Nothing stays
    open between frames, so ``end_session`` has nothing to do and ``close`` (idempotent) only
    refuses further writes.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        style: AnnotationStyle = _DEFAULT_STYLE,
        format: ImageFormat = "jpg",
        name: str = "images",
    ) -> None:
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {list(_FORMATS)}, got {format!r}")
        self.name = name
        self._directory = Path(directory)
        self._style = style
        self._format: ImageFormat = format
        self._made: set[Path] = set()
        self._images = 0
        self._closed = False

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def images_written(self) -> int:
        return self._images

    def path_for(self, frame: Frame) -> Path:
        """Where ``frame`` is (or would be) written."""
        folder = self._directory / safe_filename_part(frame.source_id)
        return folder / f"{frame.seq:06d}.{self._format}"

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise ClosedResourceError(f"sink {self.name!r} is closed")
        frame.require_surface(f"sink {self.name!r}")
        path = self.path_for(frame)
        data = self._encode(annotate(frame, self._style), path)
        temporary = path.with_name(f".{path.name}.partial")
        try:
            if path.parent not in self._made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(path.parent)
            temporary.write_bytes(data)
            temporary.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise BrokenResourceError(f"{path}: cannot write image: {exc}") from exc
        self._images += 1

    def end_session(self, session: Session) -> None:
        """Nothing to finish: every image is complete when ``write`` returns."""

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"ImageSink({str(self._directory)!r}, format={self._format!r}, "
            f"name={self.name!r}, images={self._images})"
        )

    def _encode(self, rgb: torch.Tensor, path: Path) -> bytes:
        """One image file's bytes; the only host copy of the canvas happens here."""
        try:
            return encode_picture(rgb, self._format)
        except av.FFmpegError as exc:
            raise BrokenResourceError(f"{path}: cannot encode image: {exc}") from exc


def encode_picture(rgb: torch.Tensor, format: ImageFormat = "jpg") -> bytes:
    """A ``uint8 (H, W, 3)`` RGB picture (any device) as the bytes of a JPEG (4:2:0, about
    quality 90) or PNG file. Raises ``av.FFmpegError`` when FFmpeg cannot encode it."""
    pixels = rgb.to("cpu").contiguous().numpy()
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    if format == "png":
        codec = av.CodecContext.create("png", "w")
        codec.pix_fmt = "rgb24"
    else:
        codec = av.CodecContext.create("mjpeg", "w")
        codec.pix_fmt = "yuv420p"
        codec.color_range = ColorRange.JPEG.value
        codec.qmin = codec.qmax = _JPEG_QSCALE
        frame = frame.reformat(format="yuv420p", dst_color_range=ColorRange.JPEG,
                               **sws_threads(frame.width, frame.height))
    codec.width, codec.height = frame.width, frame.height
    codec.time_base = Fraction(1, 1)
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)
