"""An image source: a list, directory or glob of still images (JPEG, PNG, BMP, TIFF, …)."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch

from torchstream._errors import SourceError
from torchstream.codecs._nvjpeg import NvjpegDecoder, nvjpeg_available
from torchstream.codecs._pyav import PyAVDecoder, open_container
from torchstream.frame import Frame
from torchstream.pipeline._channel import Policy

__all__ = ["IMAGE_SUFFIXES", "ImageSource"]

log = logging.getLogger(__name__)

_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
_GPU_BATCH = 16
"""JPEGs decoded per batched nvJPEG call."""

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

    ``decoder``: ``auto`` decodes JPEGs on the GPU with nvJPEG (batches of 16, through
    torchvision) when the pipeline's device is CUDA and torchvision is installed, and every
    other case with PyAV on the CPU; ``nvjpeg`` / ``pyav`` force one. GPU-decoded frames carry
    a CUDA event like NVDEC's.
    """

    def __init__(
        self,
        images: str | Path | Sequence[str | Path],
        *,
        source_id: str | None = None,
        policy: Policy = "block",
        max_pixels: int = 8192 * 8192,
        decoder: Literal["auto", "nvjpeg", "pyav"] = "auto",
    ) -> None:
        if decoder not in ("auto", "nvjpeg", "pyav"):
            raise ValueError(f"decoder must be 'auto', 'nvjpeg' or 'pyav', got {decoder!r}")
        self.decoder = decoder
        self.device = torch.device("cpu")
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

    def prepare(self, device: torch.device) -> None:
        """Called by the pipeline before ``open``: the device its stages run on."""
        self.device = device

    def open(self) -> None:
        if self.decoder == "nvjpeg" and not nvjpeg_available(self.device):
            raise SourceError(
                self.source_id, "decoder='nvjpeg' needs a CUDA device and torchvision"
            )
        self._paths = self._resolve()
        if not self._paths:
            raise SourceError(self.source_id, f"no image files match {self._spec!s}")

    def frames(self) -> Iterator[Frame]:
        if self._paths is None:
            self.open()
        assert self._paths is not None
        gpu = (
            NvjpegDecoder(self.device, max_pixels=self._max_pixels)
            if self.decoder != "pyav" and nvjpeg_available(self.device)
            else None
        )
        numbered = list(enumerate(self._paths))
        for start in range(0, len(numbered), _GPU_BATCH if gpu else 1):
            chunk = numbered[start : start + (_GPU_BATCH if gpu else 1)]
            yield from self._decode_chunk(chunk, gpu)

    def _decode_chunk(
        self, chunk: list[tuple[int, Path]], gpu: NvjpegDecoder | None
    ) -> Iterator[Frame]:
        decoded: dict[int, tuple[torch.Tensor, str] | SourceError] = {}
        ready: torch.cuda.Event | None = None
        jpegs = [(seq, p) for seq, p in chunk if gpu and p.suffix.lower() in _JPEG_SUFFIXES]
        if gpu is not None and jpegs:
            blobs: list[bytes] = []
            for seq, path in jpegs:
                try:
                    blobs.append(path.read_bytes())
                except OSError as exc:
                    decoded[seq] = SourceError(self.source_id, f"cannot read {path}: {exc}")
                    blobs.append(b"")
            for (seq, path), picture in zip(jpegs, gpu.decode(blobs), strict=True):
                if seq in decoded:
                    continue
                decoded[seq] = (
                    SourceError(self.source_id, f"cannot decode {path} on the GPU: {picture}")
                    if isinstance(picture, Exception)
                    else (picture, "mjpeg")
                )
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record()
        for seq, path in chunk:
            if seq not in decoded:
                try:
                    decoded[seq] = self._decode(path)
                except SourceError as exc:
                    decoded[seq] = exc
            result = decoded[seq]
            if isinstance(result, SourceError):
                log.warning("%s", result)
                self.errors.append(str(result))
                continue
            rgb, codec = result
            frame = Frame(
                source_id=self.source_id,
                seq=seq,
                width=int(rgb.shape[1]),
                height=int(rgb.shape[0]),
                codec=codec,
                attributes={"image.path": str(path)},
            )
            frame.surface = rgb
            if ready is not None and rgb.is_cuda:
                frame.__dict__["_ready"] = ready
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
