"""The Triton kernel behind ``letterbox_nv12_batch``: NV12 pictures of any sizes → one
letterboxed, normalised batch, each output pixel sampled, converted and written once.

Imported by :mod:`torchstream._kernels` on first use, never at package import (it imports
Triton). Its helpers are module-level ``@triton.jit`` functions, which both the compiler and
Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors: how it is checked without a GPU)
resolve; closures are lost by the interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["letterbox_nv12"]


@triton.jit  # type: ignore[untyped-decorator]
def _sample(  # type: ignore[no-untyped-def]
    plane, gx, gy, plane_h, plane_w, stride, channel: tl.constexpr, mask
):
    # F.grid_sample(bilinear, padding_mode="border", align_corners=False) of one channel at
    # normalised (gx, gy), in torch's order of operations and with its corner weights.
    # `channel` picks U (0) or V (1) of the interleaved chroma plane; -1 is the luma plane.
    size_x, size_y = plane_w.to(tl.float32), plane_h.to(tl.float32)
    ix = tl.minimum(tl.maximum(((gx + 1.0) * size_x - 1.0) / 2.0, 0.0), size_x - 1.0)
    iy = tl.minimum(tl.maximum(((gy + 1.0) * size_y - 1.0) / 2.0, 0.0), size_y - 1.0)
    x0, y0 = ix.to(tl.int32), iy.to(tl.int32)  # floor: both are >= 0
    # At the last row or column the far neighbour's weight is 0 (torch skips it as out of
    # bounds): read the edge again rather than past it.
    x1, y1 = tl.minimum(x0 + 1, plane_w - 1), tl.minimum(y0 + 1, plane_h - 1)
    east, south = ix - x0.to(tl.float32), iy - y0.to(tl.float32)
    west, north = (x0 + 1).to(tl.float32) - ix, (y0 + 1).to(tl.float32) - iy
    step: tl.constexpr = 1 if channel < 0 else 2
    lane: tl.constexpr = 0 if channel < 0 else channel
    upper = plane + y0.to(tl.int64) * stride + lane
    lower = plane + y1.to(tl.int64) * stride + lane
    nw = tl.load(upper + x0 * step, mask=mask, other=0).to(tl.float32)
    ne = tl.load(upper + x1 * step, mask=mask, other=0).to(tl.float32)
    sw = tl.load(lower + x0 * step, mask=mask, other=0).to(tl.float32)
    se = tl.load(lower + x1 * step, mask=mask, other=0).to(tl.float32)
    return nw * (west * north) + ne * (east * north) + sw * (west * south) + se * (east * south)


@triton.jit  # type: ignore[untyped-decorator]
def _store(  # type: ignore[no-untyped-def]
    base, plane, offsets, value, fill, inside, in_canvas, norm, target: tl.constexpr
):
    # RGB is clamped to 0..255 (as the torch path does) before the padding and normalising.
    value = tl.where(inside, tl.minimum(tl.maximum(value, 0.0), 255.0), fill)
    scaled = value * tl.load(norm + target) + tl.load(norm + 3 + target)
    tl.store(base + target * plane + offsets, scaled.to(base.dtype.element_ty), mask=in_canvas)


@triton.jit  # type: ignore[untyped-decorator]
def letterbox_nv12(  # type: ignore[no-untyped-def]
    table,  # int64 (B, NV12_FIELDS)
    out,  # (B, 3, H, W) float16/float32/bfloat16, contiguous
    norm,  # float32 (6,): per output channel, value * norm[c] + norm[3 + c]
    height,
    width,
    fill,
    luma_offset,  # the colour conversion: see _surface_nv12._coefficients
    luma_scale,
    chroma_scale,
    r_v,
    g_u,
    g_v,
    b_u,
    BGR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    frame = tl.program_id(1)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_canvas = offsets < height * width
    oy = offsets // width
    ox = offsets - oy * width
    row = table + frame * 8
    luma = tl.load(row).to(tl.pointer_type(tl.uint8))
    source_h = tl.load(row + 1).to(tl.int32)
    source_w = tl.load(row + 2).to(tl.int32)
    stride = tl.load(row + 3)
    top = tl.load(row + 4).to(tl.int32)
    left = tl.load(row + 5).to(tl.int32)
    content_h = tl.load(row + 6).to(tl.int32)
    content_w = tl.load(row + 7).to(tl.int32)
    inside = in_canvas & (oy >= top) & (oy < top + content_h)
    inside = inside & (ox >= left) & (ox < left + content_w)
    # The torch path's grid: the content spans the whole picture, each plane alike.
    gx = ((ox - left).to(tl.float32) + 0.5) / content_w.to(tl.float32) * 2.0 - 1.0
    gy = ((oy - top).to(tl.float32) + 0.5) / content_h.to(tl.float32) * 2.0 - 1.0
    chroma = luma + source_h.to(tl.int64) * stride
    y = _sample(luma, gx, gy, source_h, source_w, stride, -1, inside)
    u = _sample(chroma, gx, gy, source_h // 2, source_w // 2, stride, 0, inside)
    v = _sample(chroma, gx, gy, source_h // 2, source_w // 2, stride, 1, inside)
    bright = (y - luma_offset) * luma_scale
    cb = (u - 128.0) * chroma_scale
    cr = (v - 128.0) * chroma_scale
    plane = height * width
    base = out + frame.to(tl.int64) * 3 * plane
    red: tl.constexpr = 2 if BGR else 0
    blue: tl.constexpr = 0 if BGR else 2
    _store(base, plane, offsets, bright + r_v * cr, fill, inside, in_canvas, norm, red)
    green = bright - g_u * cb - g_v * cr
    _store(base, plane, offsets, green, fill, inside, in_canvas, norm, 1)
    _store(base, plane, offsets, bright + b_u * cb, fill, inside, in_canvas, norm, blue)

