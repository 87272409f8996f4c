"""Triton kernels for the GPU data path, built on first use (Triton ships with CUDA builds of
torch; nothing here is imported on the CPU)."""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "LETTERBOX_FIELDS",
    "NV12_FIELDS",
    "letterbox_nv12_batch",
    "letterbox_rgb_batch",
    "triton_available",
]

LETTERBOX_FIELDS = 9
"""int64 fields per frame in the letterbox kernel's table: surface address, source height and
width, row stride (bytes), top and left padding, content height and width, and the float32
bits of 1 / scale."""

NV12_FIELDS = 10
"""int64 fields per picture in the NV12 kernel's table: picture address, luma height and
width, row stride (bytes), top and left padding, content height and width, and the float32
bits of 1 / content height and 1 / content width."""

_FP_FUSION = True
"""Multiply-adds fused into FMAs, as the kernels were validated (Triton's default up to 3.9).
Passed at every launch: Triton 3.10 turns fusion off by default, and 3.9 warns on each
process's first compile when neither a launch nor ``TRITON_DEFAULT_FP_FUSION`` says (a
warning the GPU tests' ``filterwarnings = error`` would turn into failures)."""


@functools.cache
def triton_available() -> bool:
    try:
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _letterbox_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator]
    def letterbox_rgb(  # type: ignore[no-untyped-def]
        table,  # int64 (B, LETTERBOX_FIELDS)
        out,  # (B, 3, H, W) float16/float32/bfloat16, contiguous
        norm,  # float32 (6,): per output channel, value * norm[c] + norm[3 + c]
        height,
        width,
        fill,
        BGR: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        frame = tl.program_id(1)
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        in_canvas = offsets < height * width
        oy = offsets // width
        ox = offsets - oy * width
        row = table + frame * 9
        source = tl.load(row).to(tl.pointer_type(tl.uint8))
        source_h = tl.load(row + 1).to(tl.int32)
        source_w = tl.load(row + 2).to(tl.int32)
        stride = tl.load(row + 3)
        inverse = tl.load(row + 8).to(tl.int32).to(tl.float32, bitcast=True)
        top = tl.load(row + 4).to(tl.int32)
        left = tl.load(row + 5).to(tl.int32)
        content_h = tl.load(row + 6).to(tl.int32)
        content_w = tl.load(row + 7).to(tl.int32)
        inside = in_canvas & (oy >= top) & (oy < top + content_h)
        inside = inside & (ox >= left) & (ox < left + content_w)
        # torch's bilinear (align_corners=False, scale given): source = (dst + 0.5) / scale - 0.5,
        # clamped at 0; the upper neighbour clamps at the last pixel.
        fx = tl.maximum(((ox - left).to(tl.float32) + 0.5) * inverse - 0.5, 0.0)
        fy = tl.maximum(((oy - top).to(tl.float32) + 0.5) * inverse - 0.5, 0.0)
        x0 = tl.minimum(fx.to(tl.int32), source_w - 1)
        y0 = tl.minimum(fy.to(tl.int32), source_h - 1)
        x1 = tl.minimum(x0 + 1, source_w - 1)
        y1 = tl.minimum(y0 + 1, source_h - 1)
        wx = fx - x0.to(tl.float32)
        wy = fy - y0.to(tl.float32)
        upper = source + y0.to(tl.int64) * stride
        lower = source + y1.to(tl.int64) * stride
        plane = height * width
        base = out + frame.to(tl.int64) * 3 * plane
        for channel in tl.static_range(3):
            p00 = tl.load(upper + x0 * 3 + channel, mask=inside, other=0).to(tl.float32)
            p01 = tl.load(upper + x1 * 3 + channel, mask=inside, other=0).to(tl.float32)
            p10 = tl.load(lower + x0 * 3 + channel, mask=inside, other=0).to(tl.float32)
            p11 = tl.load(lower + x1 * 3 + channel, mask=inside, other=0).to(tl.float32)
            value = (1.0 - wy) * ((1.0 - wx) * p00 + wx * p01) + wy * ((1.0 - wx) * p10 + wx * p11)
            value = tl.where(inside, value, fill)
            target = 2 - channel if BGR else channel
            scaled = value * tl.load(norm + target) + tl.load(norm + 3 + target)
            tl.store(
                base + target * plane + offsets,
                scaled.to(out.dtype.element_ty),
                mask=in_canvas,
            )

    return letterbox_rgb


@functools.cache
def _nv12_kernel() -> Any:
    from torchstream._nv12_kernel import letterbox_nv12

    return letterbox_nv12


class _PinnedRing:
    """Pinned staging buffers for the kernels' small per-batch tables, reused in turn.

    A fresh pinned tensor per batch costs a pinned allocation that waits for the GPU while
    earlier uploads are pending (measured: the call then took as long as the GPU work); a
    buffer here is rewritten only once its previous upload has run.
    """

    def __init__(self, slots: int = 8) -> None:
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._uploaded: list[torch.cuda.Event | None] = [None] * slots
        self._next = 0
        self._lock = threading.Lock()

    def upload(self, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        values = torch.tensor(rows, dtype=torch.int64)
        with self._lock:
            slot = self._next
            self._next = (slot + 1) % len(self._buffers)
            uploaded = self._uploaded[slot]
            if uploaded is not None:
                uploaded.synchronize()  # type: ignore[no-untyped-call]
            buffer = self._buffers[slot]
            if buffer is None or buffer.numel() < values.numel():
                # A normal tensor even when the first call comes under inference_mode (a model
                # stage): an inference tensor could not be rewritten by later calls outside it.
                with torch.inference_mode(False):
                    buffer = torch.empty(
                        max(values.numel(), 1024), dtype=torch.int64, pin_memory=True
                    )
                self._buffers[slot] = buffer
            staged = buffer[: values.numel()].view(values.shape)
            staged.copy_(values)
            table = staged.to(device, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            self._uploaded[slot] = done
        return table


_rings: dict[torch.device, _PinnedRing] = {}
_rings_lock = threading.Lock()


def _upload(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    if device.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors
        return torch.tensor(rows, dtype=torch.int64, device=device)
    with _rings_lock:
        ring = _rings.get(device)
        if ring is None:
            ring = _rings[device] = _PinnedRing()
    return ring.upload(rows, device)


def letterbox_rgb_batch(
    surfaces: Sequence[torch.Tensor],
    placements: Sequence[tuple[float, int, int, int, int]],
    out: torch.Tensor,
    norm: torch.Tensor,
    *,
    fill: float,
    bgr: bool,
) -> None:
    """One launch for the whole batch: ``out[i]`` = surface ``i`` resized bilinearly by its
    placement's scale into its content rectangle, the rest ``fill``, all times ``norm``.

    ``placements[i]`` is ``(scale, top, left, content_h, content_w)``. Surfaces are ``uint8
    (h, w, 3)`` with packed pixels (row stride free). The kernel is queued on the current
    stream; the caller keeps the surfaces alive and on that stream until it has run.
    """
    rows = []
    for surface, (scale, top, left, content_h, content_w) in zip(surfaces, placements, strict=True):
        inverse_bits = struct.unpack("<I", struct.pack("<f", 1.0 / scale))[0]
        rows.append(
            [
                surface.data_ptr(), surface.shape[0], surface.shape[1], surface.stride(0),
                top, left, content_h, content_w, inverse_bits,
            ]
        )
    table = _upload(rows, out.device)
    height, width = out.shape[2], out.shape[3]
    block = 1024
    grid = ((height * width + block - 1) // block, len(rows))
    _letterbox_kernel()[grid](
        table, out, norm, height, width, float(fill), BGR=bgr, BLOCK=block, num_warps=4,
        enable_fp_fusion=_FP_FUSION,
    )


def letterbox_nv12_batch(
    pictures: Sequence[torch.Tensor],
    placements: Sequence[tuple[float, int, int, int, int]],
    out: torch.Tensor,
    norm: torch.Tensor,
    coefficients: Sequence[float],
    *,
    fill: float,
    bgr: bool,
) -> None:
    """One launch for the whole batch: ``out[i]`` = NV12 picture ``i`` sampled bilinearly
    (Y and U/V each, as ``F.grid_sample`` with border padding) over its placement's content
    rectangle, converted to RGB with ``coefficients`` (see ``_surface_nv12._coefficients``),
    clamped to 0..255, the rest ``fill``, all times ``norm``.

    ``placements[i]`` is ``(scale, top, left, content_h, content_w)`` (the scale is unused:
    the content spans the picture exactly, as in the torch path). Pictures are ``uint8 (h * 3
    / 2, w)`` with a column stride of 1 (row stride free). Queued on the current stream; the
    caller keeps the pictures alive and on that stream until it has run.
    """
    rows = []
    for picture, (_, top, left, content_h, content_w) in zip(pictures, placements, strict=True):
        rows.append(
            [
                picture.data_ptr(), picture.shape[0] * 2 // 3, picture.shape[1],
                picture.stride(0), top, left, content_h, content_w,
                *_inverse_bits(content_h, content_w),
            ]
        )
    table = _upload(rows, out.device)
    height, width = out.shape[2], out.shape[3]
    # Tiles of 4 x 128 pixels, 4 warps: the fastest of 8 shapes x 2, 4, 8 warps on an H100
    # (32 1080p pictures to 640x384 fp16: 0.076 ms; 8 x 128: 0.126 ms; 32 x 32: 0.38 ms).
    block_y, block_x = 4, 128
    grid = (-(-width // block_x), -(-height // block_y), len(rows))
    _nv12_kernel()[grid](
        table, out, norm, height, width, float(fill), *map(float, coefficients),
        BGR=bgr, BLOCK_Y=block_y, BLOCK_X=block_x, num_warps=4, enable_fp_fusion=_FP_FUSION,
    )


@functools.lru_cache(maxsize=256)
def _inverse_bits(content_h: int, content_w: int) -> tuple[int, int]:
    """The float32 nearest 1 / content_h and 1 / content_w, as the ints their bits spell."""
    (height_bits,) = struct.unpack("<I", struct.pack("<f", 1.0 / content_h))
    (width_bits,) = struct.unpack("<I", struct.pack("<f", 1.0 / content_w))
    return height_bits, width_bits
