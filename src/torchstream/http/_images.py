"""Request bodies into checked images: size capped while reading, format sniffed, dimensions
read from the header and limited before anything is decoded."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from torchstream.codecs._nvjpeg import JpegHeaderError, jpeg_size

__all__ = [
    "CheckedImage", "ImageRejected", "RequestFailed", "check_image", "image_from_request",
    "read_body",
]

ImageKind = Literal["jpeg", "png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CONTENT_TYPES: dict[str, ImageKind | None] = {
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/png": "png",
    "application/octet-stream": None,  # sniffed
}
SUPPORTED = "image/jpeg, image/png, application/octet-stream or multipart/form-data"


class RequestFailed(Exception):
    """A request that cannot be served as asked; ``status`` is the HTTP answer. Raised for
    bodies that are not an image we accept (400, 413, 415, 422) and by the backends when the
    pipeline gives no result (422: the image does not decode, 500: a stage failed on it,
    503: not accepted, 504: no answer in time)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ImageRejected = RequestFailed
"""The body is not an image we accept (a :class:`RequestFailed`)."""


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    kind: ImageKind
    width: int
    height: int


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``max_bytes``: from
    ``Content-Length`` before reading, else while reading (never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ImageRejected(400, f"Content-Length {declared!r} is not a number") from None
        if length > max_bytes:
            raise ImageRejected(
                413, f"body of {length} bytes exceeds the limit of {max_bytes} bytes"
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise ImageRejected(
                413, f"body exceeds the limit of {max_bytes} bytes (read {total} so far)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def image_from_request(
    request: Request, *, max_bytes: int, max_pixels: int, max_side: int
) -> CheckedImage:
    """The image a request carries, as a raw body (``image/jpeg``, ``image/png``,
    ``application/octet-stream``) or as the first file of a ``multipart/form-data`` body."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "multipart/form-data" and media not in _CONTENT_TYPES:
        raise ImageRejected(
            415, f"unsupported Content-Type {content_type or '(none)'!r}; send {SUPPORTED}"
        )
    body = await read_body(request, max_bytes)
    declared: ImageKind | None = None
    if media == "multipart/form-data":
        body, part_type = await _first_file(request, body)
        declared = _CONTENT_TYPES.get(part_type)
    else:
        declared = _CONTENT_TYPES[media]
    return check_image(body, declared=declared, max_pixels=max_pixels, max_side=max_side)


def check_image(
    data: bytes, *, declared: ImageKind | None, max_pixels: int, max_side: int
) -> CheckedImage:
    """Sniff ``data``'s format, read its size from the header, apply the limits."""
    if not data:
        raise ImageRejected(400, "empty body: expected a JPEG or PNG image")
    kind = sniff(data)
    if kind is None:
        raise ImageRejected(415, "the body is neither a JPEG nor a PNG image")
    if declared is not None and declared != kind:
        raise ImageRejected(
            415, f"Content-Type says {declared.upper()} but the body is a {kind.upper()} image"
        )
    try:
        width, height = jpeg_size(data) if kind == "jpeg" else png_size(data)
    except (JpegHeaderError, ValueError) as exc:
        raise ImageRejected(400, f"malformed {kind.upper()} image: {exc}") from None
    if width > max_side or height > max_side or width * height > max_pixels:
        raise ImageRejected(
            422,
            f"image of {width}x{height} pixels exceeds the limits ({max_side} pixels a side, "
            f"{max_pixels} pixels in all)",
        )
    return CheckedImage(data, kind, width, height)


def sniff(data: bytes) -> ImageKind | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    return None


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk, without decoding it."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("truncated PNG or no IHDR chunk first")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ValueError(f"PNG declares an empty picture ({width}x{height})")
    return int(width), int(height)


async def _first_file(request: Request, body: bytes) -> tuple[bytes, str]:
    """The first file part of a multipart body already read (and size-checked)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # python-multipart's and starlette's parse errors
        raise ImageRejected(400, f"malformed multipart body: {exc}") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                return data, (value.content_type or "application/octet-stream").lower()
    finally:
        await form.close()
    raise ImageRejected(400, "multipart body without a file part: send the image as a file")
