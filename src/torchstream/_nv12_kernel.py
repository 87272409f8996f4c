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
def _axis(g, size):  # type: ignore[no-untyped-def]
    # F.grid_sample(bilinear, padding_mode="border", align_corners=False) along one axis of a
    # plane of `size` samples, at normalised g, in torch's order of operations: the two
    # neighbours and their weights (torch's corner weights are products of these).
    size_f = size.to(tl.float32)
    i = tl.minimum(tl.maximum(((g + 1.0) * size_f - 1.0) * 0.5, 0.0), size_f - 1.0)
    near = i.to(tl.int32)  # floor: i >= 0
    # At the last sample the far neighbour's weight is 0 (torch skips it as out of bounds):
    # read the edge again rather than past it.
    far = tl.minimum(near + 1, size - 1)
    return near, far, (near + 1).to(tl.float32) - i, i - near.to(tl.float32)


@triton.jit  # type: ignore[untyped-decorator]
def _bilinear(  # type: ignore[no-untyped-def]
    plane, stride, step, x0, x1, west, east, y0, y1, north, south, mask
):
    # Rows (y) come as (BLOCK_Y, 1) vectors, columns (x) as (1, BLOCK_X): the loads and the
    # weights broadcast to the block. Accumulated in torch's order (nw, ne, sw, se).
    upper = plane + y0.to(tl.int64) * stride
    lower = plane + y1.to(tl.int64) * stride
    nw = tl.load(upper + x0 * step, mask=mask, other=0).to(tl.float32)
    ne = tl.load(upper + x1 * step, mask=mask, other=0).to(tl.float32)
    sw = tl.load(lower + x0 * step, mask=mask, other=0).to(tl.float32)
    se = tl.load(lower + x1 * step, mask=mask, other=0).to(tl.float32)
    return nw * (west * north) + ne * (east * north) + sw * (west * south) + se * (east * south)


@triton.jit  # type: ignore[untyped-decorator]
def _store(  # type: ignore[no-untyped-def]
    pixels, plane, value, fill, inside, in_canvas, norm, target: tl.constexpr
):
    # RGB is clamped to 0..255 (as the torch path does) before the padding and normalising.
    value = tl.where(inside, tl.minimum(tl.maximum(value, 0.0), 255.0), fill)
    scaled = value * tl.load(norm + target) + tl.load(norm + 3 + target)
    tl.store(pixels + target * plane, scaled.to(pixels.dtype.element_ty), mask=in_canvas)


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
    BLOCK_Y: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    # One program: a BLOCK_Y x BLOCK_X tile of one frame's output. Sampling positions are
    # separable, so each row's and each column's are computed once per tile, not per pixel.
    frame = tl.program_id(2)
    oy = tl.program_id(1) * BLOCK_Y + tl.arange(0, BLOCK_Y)[:, None]
    ox = tl.program_id(0) * BLOCK_X + tl.arange(0, BLOCK_X)[None, :]
    row = table + frame * 10
    luma = tl.load(row).to(tl.pointer_type(tl.uint8))
    source_h = tl.load(row + 1).to(tl.int32)
    source_w = tl.load(row + 2).to(tl.int32)
    stride = tl.load(row + 3)
    top = tl.load(row + 4).to(tl.int32)
    left = tl.load(row + 5).to(tl.int32)
    content_h = tl.load(row + 6).to(tl.int32)
    content_w = tl.load(row + 7).to(tl.int32)
    inverse_h = tl.load(row + 8).to(tl.int32).to(tl.float32, bitcast=True)
    inverse_w = tl.load(row + 9).to(tl.int32).to(tl.float32, bitcast=True)
    in_canvas = (oy < height) & (ox < width)
    inside = in_canvas & (oy >= top) & (oy < top + content_h)
    inside = inside & (ox >= left) & (ox < left + content_w)
    # The torch path's grid: the content spans the whole picture, each plane alike; times the
    # float32 reciprocal of the content size, as torch divides by a number.
    gx = ((ox - left).to(tl.float32) + 0.5) * inverse_w * 2.0 - 1.0
    gy = ((oy - top).to(tl.float32) + 0.5) * inverse_h * 2.0 - 1.0
    x0, x1, west, east = _axis(gx, source_w)
    y0, y1, north, south = _axis(gy, source_h)
    y = _bilinear(luma, stride, 1, x0, x1, west, east, y0, y1, north, south, inside)
    chroma = luma + source_h.to(tl.int64) * stride  # U, V interleaved
    x0, x1, west, east = _axis(gx, source_w // 2)
    y0, y1, north, south = _axis(gy, source_h // 2)
    u = _bilinear(chroma, stride, 2, x0, x1, west, east, y0, y1, north, south, inside)
    v = _bilinear(chroma + 1, stride, 2, x0, x1, west, east, y0, y1, north, south, inside)
    bright = (y - luma_offset) * luma_scale
    cb = (u - 128.0) * chroma_scale
    cr = (v - 128.0) * chroma_scale
    plane = height * width
    pixels = out + frame.to(tl.int64) * 3 * plane + oy * width + ox
    red: tl.constexpr = 2 if BGR else 0
    blue: tl.constexpr = 0 if BGR else 2
    _store(pixels, plane, bright + r_v * cr, fill, inside, in_canvas, norm, red)
    green = bright - g_u * cb - g_v * cr
    _store(pixels, plane, green, fill, inside, in_canvas, norm, 1)
    _store(pixels, plane, bright + b_u * cb, fill, inside, in_canvas, norm, blue)
