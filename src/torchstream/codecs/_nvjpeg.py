"""JPEG decoding on the GPU (nvJPEG through torchvision, when torchvision is installed), in
batches, with the picture size read from the header before anything is decoded."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["JpegHeaderError", "NvjpegDecoder", "jpeg_size", "nvjpeg_available"]

# Start-of-frame markers (baseline, extended, progressive, lossless, and the arithmetic ones);
# 0xC4 (Huffman tables), 0xC8 (reserved) and 0xCC (arithmetic conditioning) are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class JpegHeaderError(ValueError):
    """The bytes are not a JPEG whose size can be read."""


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's start-of-frame segment, without decoding it."""
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        raise JpegHeaderError("not a JPEG (no start-of-image marker)")
    offset = 2
    while offset + 4 <= len(view):
        if view[offset] != 0xFF:
            raise JpegHeaderError(f"corrupt JPEG: no marker at byte {offset}")
        marker = view[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        (length,) = struct.unpack(">H", view[offset + 2 : offset + 4])
        if marker in _SOF_MARKERS:
            if offset + 9 > len(view):
                break
            height, width = struct.unpack(">HH", view[offset + 5 : offset + 9])
            if width == 0 or height == 0:
                raise JpegHeaderError(f"JPEG declares an empty picture ({width}x{height})")
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        offset += 2 + length
    raise JpegHeaderError("corrupt or truncated JPEG: no frame header")


@functools.cache
def _decode_jpeg() -> Any:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # absent, or a build that does not import beside this torch
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def nvjpeg_available(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on ``device`` (CUDA and torchvision present)."""
    return device.type == "cuda" and torch.cuda.is_available() and _decode_jpeg() is not None


class NvjpegDecoder:
    """Decodes lists of JPEG files' bytes on the GPU into ``uint8 (H, W, 3)`` RGB tensors.

    Sizes are checked from the headers first (``max_pixels``: a decompression bomb is refused
    before any memory is spent on it). The valid pictures are decoded in one batched call; if
    that call fails (one corrupt file), each picture is decoded alone so only the bad ones are
    lost. Each result is a tensor, or the exception that explains why there is none.
    """

    def __init__(self, device: torch.device, *, max_pixels: int) -> None:
        decode = _decode_jpeg()
        if decode is None:
            raise RuntimeError("GPU JPEG decoding needs torchvision (pip install torchvision)")
        self._decode = decode
        self.device = device
        self.max_pixels = max_pixels

    def decode(self, blobs: Sequence[bytes]) -> list[torch.Tensor | Exception]:
        results: list[torch.Tensor | Exception] = []
        todo: list[int] = []
        for index, blob in enumerate(blobs):
            try:
                width, height = jpeg_size(blob)
            except JpegHeaderError as exc:
                results.append(exc)
                continue
            if width * height > self.max_pixels:
                results.append(
                    ValueError(f"picture of {width}x{height} exceeds max_pixels={self.max_pixels}")
                )
                continue
            results.append(torch.empty(0))  # placeholder, filled below
            todo.append(index)
        if not todo:
            return results
        inputs = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in todo]
        try:
            pictures = self._decode(inputs, device=self.device)
        except Exception:
            pictures = []
            for data in inputs:
                try:
                    pictures.append(self._decode(data, device=self.device))
                except Exception as exc:
                    pictures.append(exc)
        for index, picture in zip(todo, pictures, strict=True):
            results[index] = (
                picture if isinstance(picture, Exception) else picture.permute(1, 2, 0).contiguous()
            )
        return results
