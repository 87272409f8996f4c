"""From a frame's surface to model inputs: crops, resizes and letterboxes, on any device.

A surface is a frame's pixels: a ``uint8`` tensor of shape ``(height, width, 3)``, RGB, on the
device that decoded it. Every function here reads it and returns a new float tensor in channel-
first layout with values in [0, 255] (not normalised: do that in your model, where it fuses with
the first layer). None of them modifies the surface, which other stages and sinks share.

Coordinates are continuous frame pixels: pixel ``(row, col)`` covers ``[col, col + 1) x
[row, row + 1)`` and its centre is at ``(col + 0.5, row + 0.5)``; boxes are ``[x1, y1, x2, y2]``
with exclusive x2/y2, as in :class:`~torchstream.ObjectMeta`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstream.models._boxes import Letterbox

__all__ = [
    "crop_resize",
    "letterbox",
    "letterbox_batch",
    "letterbox_nv12",
    "nv12_to_rgb",
    "resize",
    "to_chw_float",
]

Colorspace = Literal["bt709", "bt601"]

# (Kr, Kb) of each colour matrix: R = Y + 2(1-Kr) V, B = Y + 2(1-Kb) U, G from the rest.
_MATRICES: dict[str, tuple[float, float]] = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}


def to_chw_float(surface: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The whole surface as a contiguous ``(3, height, width)`` tensor of ``dtype``."""
    _check_surface(surface)
    _check_dtype(dtype)
    return surface.permute(2, 0, 1).to(dtype=dtype, memory_format=torch.contiguous_format)


def resize(
    surface: Tensor,
    *,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    antialias: bool = True,
) -> Tensor:
    """The whole surface stretched to ``(3, height, width)``, bilinear.

    ``antialias`` low-pass filters when shrinking (what PIL does); turn it off to match models
    trained on OpenCV's plain bilinear resize.
    """
    _check_size(height, width)
    image = to_chw_float(surface, dtype=dtype)[None]
    resized = F.interpolate(
        image, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias
    )
    return resized[0]


def letterbox(
    surface: Tensor,
    *,
    height: int,
    width: int,
    fill: float = 114.0,
    dtype: torch.dtype = torch.float32,
    antialias: bool = True,
) -> tuple[Tensor, Letterbox]:
    """Fit the surface into ``(3, height, width)`` keeping its aspect ratio, padding the rest
    evenly on both sides with ``fill`` (114: YOLO's grey).

    Returns the image and the :class:`~torchstream.models.Letterbox` that maps the model's
    boxes back with ``boxes_to_source``. The content is resized by exactly
    ``Letterbox.scale``, so that mapping is exact, not off by a rounding of the content size.
    Size the target with :func:`~torchstream.models.input_size_for` to pad as little as possible.
    """
    _check_surface(surface)
    _check_size(height, width)
    box = Letterbox.fit(
        source_width=surface.shape[1],
        source_height=surface.shape[0],
        target_width=width,
        target_height=height,
    )
    image = to_chw_float(surface, dtype=dtype)[None]
    content = F.interpolate(
        image,
        scale_factor=(box.scale, box.scale),
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
        recompute_scale_factor=False,
    )[0]
    expected = (3, box.content_height, box.content_width)
    if tuple(content.shape) != expected:  # Letterbox.fit is built to make this impossible
        raise RuntimeError(f"letterbox content is {tuple(content.shape)}, expected {expected}")
    canvas = torch.full((3, height, width), fill, dtype=dtype, device=surface.device)
    rows, columns = box.content_slices()
    canvas[:, rows, columns] = content
    return canvas, box


def letterbox_batch(
    surfaces: Sequence[Tensor],
    *,
    height: int,
    width: int,
    fill: float = 114.0,
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    bgr: bool = False,
    out: Tensor | None = None,
    backend: Literal["auto", "triton", "torch"] = "auto",
) -> tuple[Tensor, list[Letterbox]]:
    """Letterbox a batch of surfaces of any sizes into one model input ``(B, 3, height,
    width)``, normalised as ``(value - mean) / std`` per output channel (values in 0..255
    units: ``std=(255, 255, 255)`` gives 0..1), channels RGB or, with ``bgr``, BGR. Returns
    it with each frame's :class:`~torchstream.models.Letterbox`.

    On CUDA (with Triton, which CUDA builds of torch ship) the whole batch is one kernel
    launch: each output pixel reads its four source pixels and is written once, normalised,
    in ``dtype``; no full-resolution float copy of the frame is made. Elsewhere (or with
    ``backend="torch"``) the same result comes from torch ops, frame by frame. Resizing is
    bilinear without antialiasing (OpenCV's ``INTER_LINEAR``, what YOLO-style detectors are
    trained with); :func:`letterbox` antialiases when shrinking.

    ``out``: a preallocated contiguous ``(N >= B, 3, height, width)`` tensor to write into
    (a fixed-shape batch for CUDA graphs, say); ``out[:B]`` is returned. ``fill`` is a pixel
    value (0..255), normalised like the content.
    """
    _check_size(height, width)
    _check_dtype(dtype)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise ValueError(f"mean and std need 3 values each, std non-zero: {mean!r}, {std!r}")
    if not surfaces:
        raise ValueError("letterbox_batch needs at least one surface")
    for surface in surfaces:
        _check_surface(surface)
    device = surfaces[0].device
    if any(surface.device != device for surface in surfaces):
        raise ValueError("all surfaces of a batch must be on the same device")
    count = len(surfaces)
    if out is None:
        out = torch.empty((count, 3, height, width), dtype=dtype, device=device)
    elif (
        out.dim() != 4
        or out.shape[0] < count
        or tuple(out.shape[1:]) != (3, height, width)
        or out.device != device
        or not out.is_contiguous()
        or not out.dtype.is_floating_point
    ):
        raise ValueError(
            f"out must be a contiguous floating point ({count} or more, 3, {height}, {width}) "
            f"tensor on {device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    boxes = [_fit(surface.shape[1], surface.shape[0], width, height) for surface in surfaces]
    batch = out[:count]
    normaliser = _normaliser(device, tuple(mean), tuple(std))
    if backend != "torch" and _fused_letterbox_possible(surfaces, backend):
        from torchstream._kernels import letterbox_rgb_batch

        placements = [_placement(box) for box in boxes]
        letterbox_rgb_batch(surfaces, placements, batch, normaliser, fill=fill, bgr=bgr)
        return batch, boxes
    multiply, add = normaliser[:3].view(3, 1, 1), normaliser[3:].view(3, 1, 1)
    for index, surface in enumerate(surfaces):
        image, _ = letterbox(
            surface, height=height, width=width, fill=fill, dtype=torch.float32, antialias=False
        )
        if bgr:
            image = image.flip(0)
        batch[index] = image * multiply + add
    return batch, boxes


@functools.lru_cache(maxsize=256)
def _fit(source_width: int, source_height: int, width: int, height: int) -> Letterbox:
    """Letterbox.fit, remembered: a stream's frames all have the same size (Letterbox is
    immutable)."""
    return Letterbox.fit(
        source_width=source_width,
        source_height=source_height,
        target_width=width,
        target_height=height,
    )


@functools.lru_cache(maxsize=256)
def _placement(box: Letterbox) -> tuple[float, int, int, int, int]:
    """(scale, top, left, content height, content width): what the kernel needs of a box."""
    rows, columns = box.content_slices()
    return (box.scale, rows.start or 0, columns.start or 0, box.content_height, box.content_width)


def _fused_letterbox_possible(surfaces: Sequence[Tensor], backend: str) -> bool:
    """Whether the Triton kernel can take this batch; with ``backend="triton"``, say why not."""
    from torchstream._kernels import triton_available

    reason = None
    if surfaces[0].device.type != "cuda":
        reason = f"the surfaces are on {surfaces[0].device}, not CUDA"
    elif not triton_available():
        reason = "Triton is not installed (CUDA builds of torch ship it)"
    elif any(s.stride(2) != 1 or s.stride(1) != 3 for s in surfaces):
        reason = "a surface's pixels are not packed (stride (…, 3, 1)); pass .contiguous()"
    if reason is not None and backend == "triton":
        raise ValueError(f"backend='triton' cannot run: {reason}")
    return reason is None


@functools.lru_cache(maxsize=16)
def _normaliser(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``value * n[c] + n[3 + c]`` per output channel, kept on the device (one upload)."""
    values = [1.0 / s for s in std] + [-m / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, dtype=torch.float32).to(device)


def crop_resize(
    surface: Tensor,
    boxes: Tensor,
    *,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Crop every box of ``boxes`` (K, 4) and resize it to ``(height, width)``: (K, 3, h, w).

    Each output pixel samples the frame bilinearly at its centre mapped into the box (RoI
    Align with one sample per pixel, no antialiasing: shrink by at most ~2x, or resize the
    frame first). Inside the frame the image extends its edge pixels to the frame's border;
    samples outside the frame are 0, as when a face box pokes out of the picture. At scale 1 a
    box on whole pixels gives back those pixels (exactly when the frame's sides are powers of
    two, else to float rounding). A box with x2 < x1 (or y2 < y1) gives a mirrored crop.

    All boxes are sampled in one ``grid_sample`` call on the one frame, on the surface's
    device (boxes elsewhere are moved there).
    """
    _check_surface(surface)
    _check_size(height, width)
    _check_dtype(dtype)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    count = boxes.shape[0]
    if count == 0:
        return torch.empty((0, 3, height, width), dtype=dtype, device=surface.device)
    frame_height, frame_width = surface.shape[0], surface.shape[1]
    boxes = boxes.to(device=surface.device, dtype=dtype)
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = _sample_positions(x1, x2, width, frame_width)  # (K, width)
    ys = _sample_positions(y1, y2, height, frame_height)  # (K, height)
    grid = torch.stack(
        (
            (xs * (2 / frame_width) - 1)[:, None, :].expand(count, height, width),
            (ys * (2 / frame_height) - 1)[:, :, None].expand(count, height, width),
        ),
        dim=-1,
    )
    crops = F.grid_sample(
        to_chw_float(surface, dtype=dtype)[None],
        grid.reshape(1, count * height, width, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return crops.reshape(3, count, height, width).transpose(0, 1).contiguous()


def _sample_positions(start: Tensor, stop: Tensor, samples: int, frame_size: int) -> Tensor:
    """Frame coordinates of the ``samples`` pixel centres of each box along one axis."""
    step = (stop - start) / samples  # exactly 1 for a box of `samples` whole pixels
    offsets = torch.arange(samples, device=start.device, dtype=start.dtype) + 0.5
    positions = start[:, None] + offsets[None, :] * step[:, None]
    # In the frame's outer half pixel, hold the edge pixel's value (grid_sample's zero padding
    # would fade it to black there); outside the frame, move the sample far out so it reads 0.
    inside = (positions >= 0) & (positions < frame_size)
    held = positions.clamp(0.5, frame_size - 0.5)
    return torch.where(inside, held, -2.0)


def _check_surface(surface: Tensor) -> None:
    if surface.dim() != 3 or surface.shape[2] != 3 or surface.dtype != torch.uint8:
        raise ValueError(
            "surface must be a uint8 (height, width, 3) RGB tensor, got "
            f"{surface.dtype} of shape {tuple(surface.shape)}"
        )


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")


def _check_dtype(dtype: torch.dtype) -> None:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")


def _yuv_to_rgb(
    y: Tensor, u: Tensor, v: Tensor, *, colorspace: Colorspace, full_range: bool
) -> Tensor:
    """Float Y, U, V planes (0..255 code values) → float RGB ``(3, ...)`` in 0..255."""
    if colorspace not in _MATRICES:
        raise ValueError(f"colorspace must be one of {sorted(_MATRICES)}, got {colorspace!r}")
    kr, kb = _MATRICES[colorspace]
    kg = 1.0 - kr - kb
    if full_range:
        luma, cb, cr = y, u - 128.0, v - 128.0
    else:
        luma = (y - 16.0) * (255.0 / 219.0)
        cb, cr = (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
    red = luma + 2.0 * (1.0 - kr) * cr
    blue = luma + 2.0 * (1.0 - kb) * cb
    green = luma - (2.0 * kb * (1.0 - kb) / kg) * cb - (2.0 * kr * (1.0 - kr) / kg) * cr
    return torch.stack([red, green, blue]).clamp_(0.0, 255.0)


def _split_nv12(nv12: Tensor) -> tuple[Tensor, Tensor, int, int]:
    if nv12.dtype != torch.uint8 or nv12.dim() != 2 or nv12.shape[0] % 3 or nv12.shape[1] % 2:
        raise ValueError(
            "nv12 must be a uint8 (height * 3 / 2, width) tensor with even sizes, got "
            f"{nv12.dtype} {tuple(nv12.shape)}"
        )
    height, width = nv12.shape[0] * 2 // 3, nv12.shape[1]
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
    uv = F.interpolate(
        chroma[None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[0]
    rgb = _yuv_to_rgb(
        luma.float(), uv[0], uv[1], colorspace=colorspace, full_range=full_range
    )
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
) -> tuple[Tensor, Letterbox]:
    """Colour conversion, resize and letterbox of an NV12 picture in one pass at the *output*
    resolution: each output pixel samples Y and U/V bilinearly where it lands in the source
    and is converted there, so a 1080p frame letterboxed to 640x384 converts 0.2 M pixels, not
    2 M. Returns ``(3, height, width)`` in 0..255 and the :class:`Letterbox` (as
    :func:`letterbox`). Bilinear sampling without antialiasing: when shrinking more than ~2x,
    fine detail aliases a little (detectors tolerate it; use :func:`letterbox` on an RGB
    surface when they do not)."""
    _check_size(height, width)
    _check_dtype(dtype)
    luma, chroma, source_height, source_width = _split_nv12(nv12)
    box = Letterbox.fit(
        source_width=source_width,
        source_height=source_height,
        target_width=width,
        target_height=height,
    )
    rows, columns = box.content_slices()
    content_h, content_w = box.content_height, box.content_width
    device = nv12.device
    # The content covers the whole source: output pixel j samples the source at normalised
    # (j + 0.5) / content_w * 2 - 1, the same for the half-resolution chroma plane.
    xs = (torch.arange(content_w, device=device, dtype=torch.float32) + 0.5) / content_w * 2 - 1
    ys = (torch.arange(content_h, device=device, dtype=torch.float32) + 0.5) / content_h * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]

    def sample(plane: Tensor) -> Tensor:
        return F.grid_sample(
            plane[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0]

    y = sample(luma[None])[0]
    uv = sample(chroma)
    rgb = _yuv_to_rgb(y, uv[0], uv[1], colorspace=colorspace, full_range=full_range)
    canvas = torch.full((3, height, width), fill, dtype=dtype, device=device)
    canvas[:, rows, columns] = rgb.to(dtype)
    return canvas, box
