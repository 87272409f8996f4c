"""Turning a segmentation model's output into masks in frame pixels, on any device.

The usual chain: a model's logits -> :func:`threshold_masks` (one binary mask per object or
class) or :func:`argmax_masks` (one class id per pixel) -> :func:`crop_letterbox` (drop the
rows and columns that were padding) -> :func:`resize_masks` to the frame's size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from torchstream.frame import Mask
from torchstream.models._boxes import Letterbox

__all__ = [
    "MaskRuns",
    "argmax_masks",
    "crop_letterbox",
    "mask_runs",
    "resize_masks",
    "threshold_masks",
]


def threshold_masks(logits_or_probs: Tensor, *, threshold: float) -> Tensor:
    """``True`` where the value is strictly greater than ``threshold``; same shape, bool.

    Pick the threshold for what you pass: 0.5 on probabilities is 0.0 on logits (sigmoid is
    monotonic), which saves computing the sigmoid.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return logits_or_probs > threshold


def argmax_masks(logits: Tensor) -> Tensor:
    """Per-pixel class ids of (N, C, H, W) scores: an (N, H, W) int64 tensor (ties: lowest id)."""
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (N, C, H, W), got {tuple(logits.shape)}")
    return logits.argmax(dim=1)


def resize_masks(masks: Tensor, *, height: int, width: int) -> Tensor:
    """Nearest-neighbour resize of (..., H, W) masks of any dtype (bool, class ids) to
    (..., height, width), keeping the dtype and the values exactly.

    Each output pixel takes the input pixel under its centre (no half-pixel shift, unlike
    ``interpolate(mode="nearest")``), so a mask and its image stay aligned.
    """
    if masks.dim() < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {tuple(masks.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")
    rows = _nearest_indices(masks.shape[-2], height, masks.device)
    columns = _nearest_indices(masks.shape[-1], width, masks.device)
    return masks.index_select(-2, rows).index_select(-1, columns)


def crop_letterbox(masks: Tensor, letterbox: Letterbox) -> Tensor:
    """Drop the letterbox padding from (..., H, W) masks of the model input; returns a view.

    Masks at the model input's size are cropped to ``letterbox.content_slices()``. Masks at
    another resolution (YOLO's prototype masks are a quarter of the input) are cropped at the
    same fractions of their height and width, rounded to whole pixels. Follow with
    :func:`resize_masks` to ``(source_height, source_width)`` for frame-sized masks.
    """
    if masks.dim() < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {tuple(masks.shape)}")
    rows, columns = letterbox.content_slices()
    rows = _rescale_slice(rows, masks.shape[-2], letterbox.target_height)
    columns = _rescale_slice(columns, masks.shape[-1], letterbox.target_width)
    return masks[..., rows, columns]


class MaskRuns(NamedTuple):
    """Where each of N same-sized binary masks changes value, row-major: the run-length
    encoding of a batch of masks, computed on their device (:func:`mask_runs`).

    ``first`` (N,) is each mask's first pixel; ``mask_index`` and ``position`` (K,) list every
    change, ascending: mask ``mask_index[k]`` differs at flat pixel ``position[k]`` from the
    pixel before it. Small: a mask costs one entry per run, not one per pixel, so the whole
    batch crosses to the host in one copy (:func:`~torchstream.pipeline.to_host` moves the
    tuple).
    :meth:`mask` then builds each :class:`~torchstream.frame.Mask` on the host.
    """

    first: Tensor
    mask_index: Tensor
    position: Tensor
    height: int
    width: int

    def mask(self, i: int) -> Mask:
        """Mask ``i`` as a :class:`~torchstream.frame.Mask` (host tensors or arrays: after
        ``to_host``)."""
        # np.asarray: the fields may already be arrays (to_host(..., as_numpy=True)).
        lo, hi = np.searchsorted(np.asarray(self.mask_index), [i, i + 1])
        positions = np.asarray(self.position)[lo:hi].astype(np.int64)
        edges = np.concatenate(([0], positions, [self.height * self.width]))
        counts = np.diff(edges).tolist()
        if bool(self.first[i]):
            counts.insert(0, 0)  # runs start with zeros, even when there are none
        return Mask(height=self.height, width=self.width, counts=counts)


def mask_runs(masks: Tensor) -> MaskRuns:
    """Run-length boundaries of (N, H, W) binary masks (bool or 0/1), on their device, in
    a handful of kernels and one synchronisation (the number of changes is data-dependent).

    The usual end of a segmentation postprocess: ``mask_runs(masks)`` in ``postprocess``,
    ``runs.mask(i)`` in ``attach``. Downloading runs instead of pixels moves about 0.5-2 %
    of the bytes for road and lane masks, and saves a per-mask host loop.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    count, height, width = (int(n) for n in masks.shape)
    flat = masks.reshape(count, height * width).bool()
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()
    return MaskRuns(
        first=flat[:, 0] if flat.shape[1] else flat.new_zeros(count),
        mask_index=changes[:, 0].to(torch.int32),
        position=(changes[:, 1] + 1).to(torch.int32),
        height=height,
        width=width,
    )


def _nearest_indices(size_in: int, size_out: int, device: torch.device) -> Tensor:
    # floor((i + 0.5) * size_in / size_out) in integers: exact for any size, no float rounding.
    centres = 2 * torch.arange(size_out, device=device) + 1
    return (centres * size_in) // (2 * size_out)


def _rescale_slice(part: slice, size: int, full: int) -> slice:
    if size == full:
        return part

    def at(index: int) -> int:
        return (2 * index * size + full) // (2 * full)  # round(index * size / full)

    return slice(at(part.start), at(part.stop))
