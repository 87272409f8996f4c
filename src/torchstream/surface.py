"""From a frame's surface to model inputs: crops, resizes and letterboxes, on any device.

A surface is a frame's pixels: a ``uint8`` tensor of shape ``(height, width, 3)``, RGB, on the
device that decoded it. Every function here reads it and returns a new float tensor in channel-
first layout with values in [0, 255] (not normalised: do that in your model, where it fuses with
the first layer). None of them modifies the surface, which other stages and sinks share.

NVDEC's native output is NV12 (a Y plane, then U/V at half resolution): ``nv12_to_rgb`` makes
a surface of it, and ``letterbox_nv12`` / ``letterbox_nv12_batch`` go from NV12 straight to a
model input without an RGB copy. The batch functions (``letterbox_batch``,
``letterbox_nv12_batch``) normalise too and, on CUDA, run as one Triton kernel launch per batch.

Coordinates are continuous frame pixels: pixel ``(row, col)`` covers ``[col, col + 1) x
[row, row + 1)`` and its centre is at ``(col + 0.5, row + 0.5)``; boxes are ``[x1, y1, x2, y2]``
with exclusive x2/y2, as in :class:`~torchstream.ObjectMeta`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from torchstream import _surface_batch as batching
from torchstream._surface_batch import Backend, check_dtype, check_size
from torchstream._surface_nv12 import letterbox_nv12, letterbox_nv12_batch, nv12_to_rgb
from torchstream.models._boxes import Letterbox

__all__ = [
    "crop_resize",
    "letterbox",
    "letterbox_batch",
    "letterbox_nv12",
    "letterbox_nv12_batch",
    "nv12_to_rgb",
    "resize",
    "to_chw_float",
]


def to_chw_float(surface: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The whole surface as a contiguous ``(3, height, width)`` tensor of ``dtype``."""
    _check_surface(surface)
    check_dtype(dtype)
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
    check_size(height, width)
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
    check_size(height, width)
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
    backend: Backend = "auto",
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
    check_size(height, width)
    check_dtype(dtype)
    batching.check_batch_options(
        mean=mean, std=std, backend=backend, count=len(surfaces), what="surface"
    )
    for surface in surfaces:
        _check_surface(surface)
    device = batching.same_device(surfaces)
    batch = batching.output_batch(
        out, count=len(surfaces), height=height, width=width, dtype=dtype, device=device
    )
    boxes = [batching.fit(s.shape[1], s.shape[0], width, height) for s in surfaces]
    normaliser = batching.normaliser(device, tuple(mean), tuple(std))
    unpacked = any(s.stride(2) != 1 or s.stride(1) != 3 for s in surfaces)
    problem = "a surface's pixels are not packed (stride (…, 3, 1)); pass .contiguous()"
    if batching.use_kernel(device, backend, problem if unpacked else None):
        from torchstream._kernels import letterbox_rgb_batch

        placements = [batching.placement(box) for box in boxes]
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
    check_size(height, width)
    check_dtype(dtype)
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
