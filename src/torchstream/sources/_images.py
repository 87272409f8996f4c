"""An image source: a list, directory or glob of still images (JPEG, PNG, BMP, TIFF, …)."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from torchstream._errors import SourceError
from torchstream.codecs._pyav import PyAVDecoder, open_container
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy

__all__ = ["IMAGE_SUFFIXES", "ImageSource"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)


class ImageSource:
    """Still images as the frames of one source, in sorted path order.

    ``images`` is a directory (its image files, sorted), a glob pattern (``"shots/*.jpg"``)
    or a sequence of paths. ``source_id`` defaults to the directory's name (or ``images``).
    Each frame's ``attributes["image.path"]`` is its file; ``seq`` counts the images and
    ``pts_seconds`` is None. An image that cannot be decoded (corrupt, unsupported, larger
    than ``max_pixels``) is skipped and recorded in ``errors``; the others go on. No matching
    file at all raises :class:`~torchstream.SourceError`.
    """

    def __init__(
        self,
        images: str | Path | Sequence[str | Path],
        *,
        source_id: str | None = None,
        policy: Policy = "block",
        max_pixels: int = 8192 * 8192,
    ) -> None:
        self._spec = images
        if isinstance(images, (str, Path)):
            path = Path(images)
            single = not glob.has_magic(str(path)) and path.suffix.lower() in IMAGE_SUFFIXES
            default_id = path.name if path.is_dir() or single else path.parent.name
        else:
            default_id = ""
        self.source_id = source_id or default_id or "images"
        if policy not in ("block", "latest"):
            raise ValueError(f"policy must be 'block' or 'latest', got {policy!r}")
        self.policy: Policy = policy
        self._max_pixels = max_pixels
        self._paths: list[Path] | None = None
        self.errors: list[str] = []

    def _resolve(self) -> list[Path]:
        spec = self._spec
        if isinstance(spec, (str, Path)):
            path = Path(spec)
            if path.is_dir():
                paths = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            elif glob.has_magic(str(spec)):
                paths = [Path(p) for p in glob.glob(str(spec), recursive=True)]
            else:
                paths = [path]
            return sorted(p for p in paths if not p.is_dir())
        return [Path(p) for p in spec]

    def open(self) -> None:
        self._paths = self._resolve()
        if not self._paths:
            raise SourceError(self.source_id, f"no image files match {self._spec!s}")

    def frames(self) -> Iterator[Frame]:
        if self._paths is None:
            self.open()
        assert self._paths is not None
        for seq, path in enumerate(self._paths):
            try:
                rgb, codec = self._decode(path)
            except SourceError as exc:
                log.warning("%s", exc)
                self.errors.append(str(exc))
                continue
            frame = Frame(
                source_id=self.source_id,
                seq=seq,
                width=int(rgb.shape[1]),
                height=int(rgb.shape[0]),
                codec=codec,
                attributes={"image.path": str(path)},
            )
            frame.surface = rgb
            yield frame

    def _decode(self, path: Path) -> tuple[torch.Tensor, str]:
        container = open_container(str(path), source_id=self.source_id)
        try:
            decoder = PyAVDecoder(
                container,
                source_id=self.source_id,
                uri=str(path),
                max_pixels=self._max_pixels,
                check_truncation=False,
            )
            for rgb, _pts, _key in decoder.frames():
                return rgb, decoder.codec
            raise SourceError(self.source_id, f"no picture decoded from {path}")
        finally:
            container.close()

    def close(self) -> None:
        self._paths = None

    def __repr__(self) -> str:
        return f"ImageSource({self._spec!r}, source_id={self.source_id!r})"
