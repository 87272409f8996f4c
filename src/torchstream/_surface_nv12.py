"""NV12 pictures (NVDEC's native output) to RGB surfaces and to letterboxed model inputs;
:mod:`torchstream.surface` re-exports the public functions.

An NV12 picture is one ``uint8 (height * 3 / 2, width)`` tensor: the Y plane, then the U/V
plane at half resolution in both directions, U and V interleaved. Rows may be padded (NVDEC's
pitch): only the column stride must be 1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstream import _surface_batch as batching
from torchstream._surface_batch import Backend, check_dtype, check_size
from torchstream.models._boxes import Letterbox

Colorspace = Literal["bt709", "bt601"]

# (Kr, Kb) of each colour matrix: R = Y + 2(1-Kr) V, B = Y + 2(1-Kb) U, G from the rest.
_MATRICES: dict[str, tuple[float, float]] = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}


@functools.cache
def _coefficients(colorspace: str, full_range: bool) -> tuple[float, ...]:
    """(luma offset, luma scale, chroma scale, R per V, G per U, G per V, B per U): Y, U, V
    code values to RGB in 0..255 as ``luma = (Y - offset) * luma scale``, ``cb = (U - 128) *
    chroma scale`` (cr likewise), ``R = luma + r_v cr``, ``G = luma - g_u cb - g_v cr``, ``B =
    luma + b_u cb``. The torch ops and the Triton kernel both use these numbers."""
    if colorspace not in _MATRICES:
        raise ValueError(f"colorspace must be one of {sorted(_MATRICES)}, got {colorspace!r}")
    kr, kb = _MATRICES[colorspace]
    kg = 1.0 - kr - kb
    # Limited ("TV", MPEG) range: Y in 16..235, U/V in 16..240; full range uses all of 0..255.
    offset, luma_scale, chroma_scale = (0.0, 1.0, 1.0) if full_range else (
        16.0, 255.0 / 219.0, 255.0 / 224.0
    )
    return (
        offset,
        luma_scale,
        chroma_scale,
        2.0 * (1.0 - kr),
        2.0 * kb * (1.0 - kb) / kg,
        2.0 * kr * (1.0 - kr) / kg,
        2.0 * (1.0 - kb),
    )


def _yuv_to_rgb(y: Tensor, u: Tensor, v: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """Float Y, U, V planes (0..255 code values) → float RGB ``(3, ...)`` in 0..255."""
    offset, luma_scale, chroma_scale, r_v, g_u, g_v, b_u = coefficients
    luma = (y - offset) * luma_scale
    cb, cr = (u - 128.0) * chroma_scale, (v - 128.0) * chroma_scale
    red = luma + r_v * cr
    green = luma - g_u * cb - g_v * cr
    blue = luma + b_u * cb
    return torch.stack([red, green, blue]).clamp_(0.0, 255.0)


def _nv12_size(nv12: Tensor) -> tuple[int, int]:
    """The picture's (height, width), after checking its shape and dtype."""
    if nv12.dtype != torch.uint8 or nv12.dim() != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ValueError(
            "nv12 must be a uint8 (height * 3 / 2, width) tensor with even sizes, got "
            f"{nv12.dtype} {tuple(nv12.shape)}"
        )
    return nv12.shape[0] * 2 // 3, nv12.shape[1]


def _split_nv12(nv12: Tensor) -> tuple[Tensor, Tensor, int, int]:
    height, width = _nv12_size(nv12)
    luma = nv12[:height]
    chroma = nv12[height:].reshape(height // 2, width // 2, 2).permute(2, 0, 1)
    return luma, chroma, height, width


def nv12_to_rgb(
    nv12: Tensor, *, colorspace: Colorspace = "bt709", full_range: bool = False
) -> Tensor:
    """An NV12 picture (NVDEC's native output: the Y plane, then interleaved U/V at half
    resolution, as one ``uint8 (height * 3 / 2, width)`` tensor) → ``uint8 (height, width, 3)``
    RGB, on the same device. Chroma is upsampled bilinearly; ``colorspace`` and
    ``full_range`` must match the stream (most HD video: BT.709, limited range)."""
    luma, chroma, height, width = _split_nv12(nv12)
    coefficients = _coefficients(colorspace, full_range)
    uv = F.interpolate(
        chroma[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0]
    rgb = _yuv_to_rgb(luma.float(), uv[0], uv[1], coefficients)
    return rgb.round_().to(torch.uint8).permute(1, 2, 0).contiguous()


def letterbox_nv12(
    nv12: Tensor,
    *,
    height: int,
    width: int,
    fill: float = 114.0,
    dtype: torch.dtype = torch.float32,
    colorspace: Colorspace = "bt709",
    full_range: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Letterbox]:
    """Colour conversion, resize and letterbox of an NV12 picture at the *output* resolution:
    each output pixel samples Y and U/V bilinearly where it lands in the source and is
    converted there, so a 1080p frame letterboxed to 640x384 converts 0.2 M pixels, not 2 M.
    Returns ``(3, height, width)`` in 0..255 and the :class:`Letterbox` (as :func:`letterbox`).

    On CUDA with Triton this is one kernel launch that writes each output pixel once (see
    :func:`letterbox_nv12_batch`, which does a whole batch in one launch); elsewhere, or with
    ``backend="torch"``, torch ops compute the same (a few passes at the output resolution).
    Bilinear sampling without antialiasing: when shrinking more than ~2x, fine detail aliases
    a little (detectors tolerate it; use :func:`letterbox` on an RGB surface when they do
    not)."""
    check_size(height, width)
    check_dtype(dtype)
    batching.check_backend(backend)
    _nv12_size(nv12)
    coefficients = _coefficients(colorspace, full_range)
    if batching.use_kernel(nv12.device, backend, _layout_problem([nv12])):
        batch, boxes = letterbox_nv12_batch(
            [nv12], height=height, width=width, fill=fill, dtype=dtype,
            colorspace=colorspace, full_range=full_range, backend="triton",
        )
        return batch[0], boxes[0]
    luma, chroma, source_height, source_width = _split_nv12(nv12)
    box = batching.fit(source_width, source_height, width, height)
    canvas = torch.full((3, height, width), fill, dtype=dtype, device=nv12.device)
    rows, columns = box.content_slices()
    canvas[:, rows, columns] = _sample_and_convert(luma, chroma, box, coefficients).to(dtype)
    return canvas, box


def letterbox_nv12_batch(
    pictures: Sequence[Tensor],
    *,
    height: int,
    width: int,
    fill: float = 114.0,
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    bgr: bool = False,
    out: Tensor | None = None,
    colorspace: Colorspace = "bt709",
    full_range: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, list[Letterbox]]:
    """:func:`letterbox_batch` for NV12 pictures of any sizes: one normalised model input
    ``(B, 3, height, width)``, RGB or (``bgr``) BGR, and each picture's :class:`Letterbox`.

    On CUDA (with Triton, which CUDA builds of torch ship) the whole batch is one kernel
    launch: each output pixel reads its four Y and four U/V samples, converts them, and is
    written once, normalised, in ``dtype``; no RGB picture is ever made. Elsewhere (or with
    ``backend="torch"``) :func:`letterbox_nv12`'s torch ops compute it frame by frame, then
    normalise. Both sample at the positions and with the weights of :func:`letterbox_nv12` (to
    float rounding), and all pictures of a batch share ``colorspace`` and ``full_range``.
    ``mean``, ``std``, ``fill`` and ``out`` work as in :func:`letterbox_batch`. Rule of thumb:
    decode to NV12 and call this instead of converting each frame to RGB first; it reads 1.5
    bytes per source pixel instead of 3 and skips the full-resolution RGB copy.
    """
    check_size(height, width)
    check_dtype(dtype)
    batching.check_batch_options(
        mean=mean, std=std, backend=backend, count=len(pictures), what="picture"
    )
    # Sizes only: slicing each picture into planes costs ~10 µs of host time a picture, which
    # the kernel does not need.
    sizes = [_nv12_size(picture) for picture in pictures]
    coefficients = _coefficients(colorspace, full_range)
    device = batching.same_device(pictures)
    batch = batching.output_batch(
        out, count=len(pictures), height=height, width=width, dtype=dtype, device=device
    )
    boxes = [batching.fit(w, h, width, height) for h, w in sizes]
    normaliser = batching.normaliser(device, tuple(mean), tuple(std))
    if batching.use_kernel(device, backend, _layout_problem(pictures)):
        from torchstream._kernels import letterbox_nv12_batch as kernel

        placements = [batching.placement(box) for box in boxes]
        kernel(pictures, placements, batch, normaliser, coefficients, fill=fill, bgr=bgr)
        return batch, boxes
    multiply, add = normaliser[:3].view(3, 1, 1), normaliser[3:].view(3, 1, 1)
    for index, (picture, box) in enumerate(zip(pictures, boxes, strict=True)):
        luma, chroma, _, _ = _split_nv12(picture)
        image = torch.full((3, height, width), fill, dtype=torch.float32, device=device)
        rows, columns = box.content_slices()
        image[:, rows, columns] = _sample_and_convert(luma, chroma, box, coefficients)
        if bgr:
            image = image.flip(0)
        batch[index] = image * multiply + add
    return batch, boxes


def _sample_and_convert(
    luma: Tensor, chroma: Tensor, box: Letterbox, coefficients: tuple[float, ...]
) -> Tensor:
    """The letterbox's content, float32 RGB ``(3, content height, content width)`` in 0..255:
    Y and U/V sampled bilinearly at each content pixel's centre, then converted."""
    content_h, content_w, device = box.content_height, box.content_width, luma.device
    # The content covers the whole source: output pixel j samples the source at normalised
    # (j + 0.5) / content_w * 2 - 1, the same for the half-resolution chroma plane. Written as
    # a product with the float32 reciprocal, which is what torch computes on CUDA for a
    # division by a number: the same coordinates on every device and in the Triton kernel.
    xs = (torch.arange(content_w, device=device, dtype=torch.float32) + 0.5) * (1 / content_w)
    ys = (torch.arange(content_h, device=device, dtype=torch.float32) + 0.5) * (1 / content_h)
    xs, ys = xs * 2 - 1, ys * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]

    def sample(plane: Tensor) -> Tensor:
        return F.grid_sample(
            plane[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0]

    y = sample(luma[None])[0]
    uv = sample(chroma)
    return _yuv_to_rgb(y, uv[0], uv[1], coefficients)


def _layout_problem(pictures: Sequence[Tensor]) -> str | None:
    if any(picture.stride(1) != 1 for picture in pictures):
        return "a picture's columns are not adjacent (stride (…, 1)); pass .contiguous()"
    return None
