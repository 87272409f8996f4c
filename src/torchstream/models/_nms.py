"""Box overlap and exact greedy non-maximum suppression, on any device.

Boxes are ``[x1, y1, x2, y2]`` in pixels, x2/y2 exclusive, so a box's area is
``(x2 - x1) * (y2 - y1)``. A box with ``x2 <= x1`` or ``y2 <= y1`` has zero area and overlaps
nothing (its IoU with every box, itself included, is 0): it never suppresses and is never
suppressed.

Greedy NMS here gives exactly what the classic sequential algorithm gives: visit the boxes by
descending score (ties in input order) and keep a box unless a box kept before it overlaps it by
*more than* the threshold, the overlap being exactly what :func:`box_iou` (or the ``min``
measure) computes.

How, on any device: take the best few hundred candidates still standing, settle them among
themselves (sequentially in numpy on CPU; on CUDA by a fixpoint iteration that needs a few host
syncs, not one per box), then strike every later candidate that a newly kept box overlaps too
much, and repeat with what is left. Suppressed candidates drop out early, memory stays bounded
for tens of thousands of candidates, and a call makes a few syncs per block of candidates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["Overlap", "batched_nms", "box_iou", "nms"]

Overlap = Literal["iou", "min"]
"""How two boxes' overlap is measured.

``iou``: intersection over union (the usual choice).
``min``: intersection over the smaller box's area, so a box inside a bigger one overlaps it by 1
(MTCNN's final stage uses it to drop a face box nested in another).
"""

_OVERLAPS: tuple[Overlap, ...] = ("iou", "min")

# Candidates settled at a time. On CPU ~256 measured fastest (small blocks waste Python
# overhead, big ones compare candidates that a smaller block would have struck); on CUDA
# bigger blocks mean fewer syncs. A block's kept boxes are compared with every candidate left
# in their group, so _BLOCK_ELEMENTS caps that matrix (a few float temporaries of this size,
# ~32 MiB each).
_BLOCK_ROWS_CPU = 256
_BLOCK_ROWS_ACCELERATOR = 2048
_BLOCK_ELEMENTS = 1 << 23
_MIN_BLOCK_ROWS = 64
# On CUDA each convergence check of the in-block fixpoint is a host sync; iterating a few times
# between checks is cheaper than checking every time (an iteration is one small kernel).
_FIXPOINT_CHECK_EVERY = 4


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4).

    Returns an (N, M) float tensor (float64 if either input is float64, else float32) on the
    inputs' device. Zero-area boxes give 0, never NaN.
    """
    _check_boxes("a", a)
    _check_boxes("b", b)
    return _overlap(a, b, "iou")


def nms(boxes: Tensor, scores: Tensor, *, iou_threshold: float, overlap: Overlap = "iou") -> Tensor:
    """Greedy non-maximum suppression; returns the kept indices by descending score.

    ``boxes`` is (N, 4), ``scores`` (N,), on the same device. A box is dropped when a
    higher-scored kept box overlaps it by strictly more than ``iou_threshold`` (in [0, 1]), so
    ``1.0`` keeps everything and ``0.0`` drops every box that truly intersects a kept one.
    The result is an int64 tensor of indices into ``boxes``, on the same device; empty input
    gives an empty result. Rule of thumb: 0.45–0.5 for one-stage detectors, 0.7 with
    ``overlap="min"`` for nested face boxes.
    """
    _check_nms(boxes, scores, iou_threshold, overlap)
    return _greedy_nms(boxes, scores, None, iou_threshold, overlap)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    *,
    iou_threshold: float,
    overlap: Overlap = "iou",
) -> Tensor:
    """:func:`nms` run independently within each group, in one call.

    ``groups`` (N,) holds an integer id per box: its class for class-aware NMS, its image for
    a batch of images, or ``image * num_classes + class`` for both. Boxes of different groups
    never suppress each other. The kept indices come back by descending score across groups.

    Exact: boxes of other groups are masked out of the overlap matrix rather than shifted
    apart by a coordinate offset, which loses float precision when group ids are large.
    """
    _check_nms(boxes, scores, iou_threshold, overlap)
    if groups.shape != scores.shape:
        raise ValueError(
            f"groups must have shape (N,) = {tuple(scores.shape)}, got {tuple(groups.shape)}"
        )
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise ValueError(f"groups must hold integer ids, got dtype {groups.dtype}")
    if groups.device != boxes.device:
        raise ValueError(f"groups is on {groups.device} but boxes are on {boxes.device}")
    return _greedy_nms(boxes, scores, groups, iou_threshold, overlap)


def _check_boxes(name: str, boxes: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def _check_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, overlap: str) -> None:
    _check_boxes("boxes", boxes)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(
            f"scores must have shape (N,) = ({boxes.shape[0]},), got {tuple(scores.shape)}"
        )
    if scores.device != boxes.device:
        raise ValueError(f"scores is on {scores.device} but boxes are on {boxes.device}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    if overlap not in _OVERLAPS:
        raise ValueError(f"overlap must be one of {_OVERLAPS}, got {overlap!r}")


def _float(boxes: Tensor) -> Tensor:
    # Half precision overflows on areas of HD frames (1920 * 1080 > 65504): work in float32.
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def _overlap(a: Tensor, b: Tensor, mode: Overlap) -> Tensor:
    dtype = torch.promote_types(_float(a).dtype, _float(b).dtype)
    # Coordinates as contiguous (N, 1) and (1, M) columns: broadcasting those is several times
    # faster than broadcasting strided (N, 1, 2) slices of the boxes.
    ax1, ay1, ax2, ay2 = a.to(dtype).t().contiguous()[:, :, None]
    bx1, by1, bx2, by2 = b.to(dtype).t().contiguous()[:, None, :]
    inter = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    inter.mul_(torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0))
    area_a = (ax2 - ax1).clamp_(min=0) * (ay2 - ay1).clamp_(min=0)
    area_b = (bx2 - bx1).clamp_(min=0) * (by2 - by1).clamp_(min=0)
    # Every step is symmetric in (a, b), so a pair gets the same overlap in any block or order.
    denominator = (area_a + area_b).sub_(inter) if mode == "iou" else torch.minimum(area_a, area_b)
    # Zero-area boxes give 0 / 0 = NaN, read as no overlap; a positive intersection always has
    # a positive denominator.
    return inter.div_(denominator).nan_to_num_(nan=0.0)


def _greedy_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor | None, threshold: float, mode: Overlap
) -> Tensor:
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    if groups is None:
        block_rows = _block_rows(boxes.shape[0], boxes.device)
        return order[_kept(_float(boxes)[order], None, threshold, mode, block_rows=block_rows)]
    # Groups never interact, so visit them one after another (stable: by score within each).
    # Then a block's kept boxes can only strike the rest of the block's last group: pairs
    # across groups, 99% of all with 80 classes, are never computed.
    by_group = torch.argsort(groups[order], stable=True)  # score ranks, grouped
    visit = order[by_group]
    largest = int(torch.unique_consecutive(groups[visit], return_counts=True)[1].max())
    kept = _kept(
        _float(boxes)[visit],
        groups[visit],
        threshold,
        mode,
        block_rows=_block_rows(largest, boxes.device),
    )
    return order[by_group[kept].sort().values]  # by descending score again, across groups


def _block_rows(largest_group: int, device: torch.device) -> int:
    preferred = _BLOCK_ROWS_CPU if device.type == "cpu" else _BLOCK_ROWS_ACCELERATOR
    # A block's kept boxes meet at most the rest of one group: cap that matrix's size.
    return max(_MIN_BLOCK_ROWS, min(preferred, _BLOCK_ELEMENTS // largest_group))


def _kept(
    boxes: Tensor,
    groups: Tensor | None,
    threshold: float,
    mode: Overlap,
    *,
    block_rows: int,
) -> Tensor:
    """Positions of the boxes that greedy NMS keeps, visiting ``boxes`` in the given order,
    ``block_rows`` candidates at a time.

    ``groups``, if given, must be sorted (each group's boxes contiguous).
    """
    # Invariant: `standing` lists, in visiting order, the candidates no kept box suppresses.
    standing = torch.arange(boxes.shape[0], device=boxes.device)
    kept: list[Tensor] = []
    while standing.numel():
        head, rest = standing[:block_rows], standing[block_rows:]
        head_boxes, head_groups = boxes[head], None if groups is None else groups[head]
        within = _suppresses(head_boxes, head_boxes, head_groups, head_groups, threshold, mode)
        new = head[_resolve(within.tril_(-1))]
        kept.append(new)
        if not (rest.numel() and new.numel()):
            standing = rest
            continue
        if groups is None:
            hit = _suppresses(boxes[rest], boxes[new], None, None, threshold, mode)
            standing = rest[~hit.any(dim=1)]
            continue
        # `rest` is sorted by group and starts with the rest of head's last group, if any.
        run = int((groups[rest] == groups[head[-1]]).sum())
        target, untouched = rest[:run], rest[run:]
        hit = _suppresses(boxes[target], boxes[new], groups[target], groups[new], threshold, mode)
        standing = torch.cat((target[~hit.any(dim=1)], untouched))
    return torch.cat(kept)


def _suppresses(
    rows: Tensor,
    columns: Tensor,
    row_groups: Tensor | None,
    column_groups: Tensor | None,
    threshold: float,
    mode: Overlap,
) -> Tensor:
    """``[i, j]``: box ``columns[j]`` would suppress box ``rows[i]`` if it were kept."""
    mask = _overlap(rows, columns, mode) > threshold
    if row_groups is not None and column_groups is not None:
        mask &= row_groups[:, None] == column_groups[None, :]
    return mask


def _resolve(within: Tensor) -> Tensor:
    """Greedy keep flags of candidates that only each other can suppress.

    ``within[i, j]`` (only for j < i) says candidate j suppresses candidate i if kept.
    """
    if within.device.type == "cpu":
        return _resolve_sequential(within)
    return _resolve_fixpoint(within)


def _resolve_sequential(within: Tensor) -> Tensor:
    # Row j of the transpose lists the candidates that j suppresses, all after j.
    suppressed_by = within.t().contiguous().numpy()
    keep = np.ones(within.shape[0], dtype=bool)
    for j in range(keep.shape[0]):
        if keep[j]:
            keep[j + 1 :] &= ~suppressed_by[j, j + 1 :]
    return torch.from_numpy(keep)


def _resolve_fixpoint(within: Tensor) -> Tensor:
    # keep = ~any(within & keep) has one solution, the greedy one: entry i depends only on
    # entries before it, so each step from all-True fixes at least one more leading entry.
    # Real detections settle in a few steps; n steps always suffice.
    n = within.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=within.device)
    steps = 0
    while steps < n:
        previous = keep
        for _ in range(_FIXPOINT_CHECK_EVERY):
            keep = ~(within & keep).any(dim=1)
        steps += _FIXPOINT_CHECK_EVERY
        # Equal after several steps means settled: the sequence converges, so it cannot cycle.
        if torch.equal(keep, previous):
            break
    return keep
