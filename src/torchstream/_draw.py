"""Drawing a frame's metadata on an output canvas: boxes, labels, masks, keypoints, blurring.

The frame's surface is never touched: :func:`annotate` copies it into a new canvas on the same
device and draws there with plain torch ops, so it runs wherever the frame was decoded (CPU or
GPU) and nothing is copied to the host. Sinks that need bytes copy the finished canvas.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from torchstream._font import render_text, text_size

if TYPE_CHECKING:
    from torchstream.frame import Frame, Mask, ObjectMeta

__all__ = ["AnnotationStyle", "annotate", "label_color"]

# Saturated, mutually distinct colours that stay visible on typical street and indoor scenes.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56),
    (56, 200, 72),
    (40, 120, 255),
    (255, 190, 0),
    (170, 60, 255),
    (0, 210, 210),
    (255, 100, 200),
    (140, 220, 0),
    (255, 130, 40),
    (90, 90, 255),
    (0, 160, 110),
    (200, 30, 120),
    (120, 200, 255),
    (180, 120, 40),
    (230, 230, 60),
    (20, 90, 160),
)
_MASK_OPACITY = 0.5
_BLUR_CELLS = 4
"""A blurred box is averaged down to this many cells across its shorter side, then smoothed
back up: at 4, a face keeps its average colour and nothing else."""


@dataclass(frozen=True, kw_only=True)
class AnnotationStyle:
    """What :func:`annotate` draws, and how thick.

    ``boxes``: outline each object's box, ``line_width`` pixels thick, inside the box.
    ``labels``: the label (and ``#track_id`` when set) and confidence above the box, on a
    filled background in the object's colour; inside the box when there is no room above.
    ``masks``: blend each object's mask, stretched over its box, in the object's colour.
    ``keypoints``: a dot of radius ``line_width`` at every keypoint with a positive score.
    ``blur_labels``: objects with these labels have their whole box blurred beyond recognition
    (anonymisation) before anything is drawn on top.
    ``mask_only_labels``: objects with these labels get their mask drawn and nothing else (no
    box, no label): regions such as a road surface whose box is the whole frame.
    ``font_scale``: label text is 7 * ``font_scale`` pixels tall (2 suits 1080p).

    Colours come from a fixed palette, chosen by a stable hash of the label, so a label has
    the same colour in every run, process and frame.
    """

    boxes: bool = True
    labels: bool = True
    masks: bool = True
    keypoints: bool = True
    blur_labels: frozenset[str] = field(default_factory=frozenset)
    mask_only_labels: frozenset[str] = field(default_factory=frozenset)
    line_width: int = 2
    font_scale: int = 1

    def __post_init__(self) -> None:
        for name in ("boxes", "labels", "masks", "keypoints"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        for name, limit in (("line_width", 64), ("font_scale", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")
        for name in ("blur_labels", "mask_only_labels"):
            labels: object = getattr(self, name)
            if isinstance(labels, str) or not isinstance(labels, Iterable):
                raise ValueError(f"{name} must be a collection of label strings, got {labels!r}")
            labels = frozenset(labels)
            if not all(isinstance(label, str) for label in labels):
                raise ValueError(f"{name} must contain only strings, got {getattr(self, name)!r}")
            # Accept any collection (a set, a list) but store the frozen, hashable form.
            object.__setattr__(self, name, labels)


def label_color(label: str) -> tuple[int, int, int]:
    """The RGB colour of ``label``: stable across runs (CRC-32, not Python's salted hash)."""
    return _PALETTE[_palette_index(label)]


def _palette_index(label: str) -> int:
    return zlib.crc32(label.encode("utf-8")) % len(_PALETTE)


def annotate(frame: Frame, style: AnnotationStyle) -> torch.Tensor:
    """A new ``uint8 (height, width, 3)`` canvas: the frame's surface with its objects drawn.

    The canvas is on the surface's device; the surface itself is left unchanged. Boxes are in
    frame pixels and rounded to the nearest pixel edge; parts outside the frame are clipped
    and boxes with no area (or non-finite coordinates) are skipped. Drawing order: blurred
    regions, then masks, boxes, keypoints and finally labels, so text stays readable.
    Characters outside printable ASCII are drawn as ``?``.

    Raises ValueError when the frame has no surface or it is not ``uint8``.
    """
    surface = frame.surface
    if surface is None:
        raise ValueError(f"frame {frame.source_id}#{frame.seq} has no surface to annotate")
    if surface.dtype != torch.uint8:
        raise ValueError(
            f"frame {frame.source_id}#{frame.seq}: surface must be uint8, got {surface.dtype}"
        )
    canvas = surface.clone(memory_format=torch.contiguous_format)
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    palette = torch.tensor(_PALETTE, dtype=torch.uint8, device=canvas.device)

    placed: list[tuple[ObjectMeta, tuple[int, int, int, int], int]] = []
    for obj in frame.objects:
        box = _pixel_box(obj.box, width, height)
        if box is not None:
            placed.append((obj, box, _palette_index(obj.label)))

    if style.blur_labels:
        for obj, box, _ in placed:
            if obj.label in style.blur_labels:
                _blur_box(canvas, box)
    if style.masks:
        for obj, box, color in placed:
            if obj.mask is not None:
                _blend_mask(canvas, box, obj.mask, palette[color])
    outlined = [item for item in placed if item[0].label not in style.mask_only_labels]
    if style.boxes:
        for _, box, color in outlined:
            _draw_outline(canvas, box, style.line_width, palette[color])
    if style.keypoints:
        _draw_keypoints(canvas, frame.objects, style.line_width, palette)
    if style.labels:
        for obj, box, color in outlined:
            _draw_label(canvas, obj, box, style.font_scale, palette, color)
    return canvas


def _pixel_box(box: list[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box rounded to pixel edges, or None when it has no visible area."""
    if not all(math.isfinite(v) for v in box):
        return None
    x1, y1, x2, y2 = (math.floor(v + 0.5) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    if min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
        return None
    return (x1, y1, x2, y2)


def _fill(canvas: torch.Tensor, x1: int, y1: int, x2: int, y2: int, color: torch.Tensor) -> None:
    """Fill the rectangle ``[x1, x2) x [y1, y2)``, clipped to the canvas."""
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = color


def _draw_outline(
    canvas: torch.Tensor, box: tuple[int, int, int, int], line_width: int, color: torch.Tensor
) -> None:
    # The outline lies inside the box, so it never covers pixels outside the object.
    x1, y1, x2, y2 = box
    lw = line_width
    _fill(canvas, x1, y1, x2, min(y1 + lw, y2), color)
    _fill(canvas, x1, max(y2 - lw, y1), x2, y2, color)
    _fill(canvas, x1, y1, min(x1 + lw, x2), y2, color)
    _fill(canvas, max(x2 - lw, x1), y1, x2, y2, color)


def _blur_box(canvas: torch.Tensor, box: tuple[int, int, int, int]) -> None:
    """Average the box down to a few cells and smooth them back up (anonymisation).

    The cell size follows the whole box, not its visible part, so a face half out of the frame
    is blurred as strongly as one inside it.
    """
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    x1, y1, x2, y2 = box
    cell = max(2, math.ceil(min(x2 - x1, y2 - y1) / _BLUR_CELLS))
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    region = canvas[cy1:cy2, cx1:cx2]
    h, w = cy2 - cy1, cx2 - cx1
    pixels = region.permute(2, 0, 1).unsqueeze(0).float()
    small = F.interpolate(
        pixels, size=(max(1, round(h / cell)), max(1, round(w / cell))), mode="area"
    )
    smooth = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    region.copy_(smooth[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8))


def _blend_mask(
    canvas: torch.Tensor, box: tuple[int, int, int, int], mask: Mask, color: torch.Tensor
) -> None:
    """Blend ``color`` where the mask, stretched over the box (nearest), is set."""
    if mask.height == 0 or mask.width == 0:
        return
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    x1, y1, x2, y2 = box
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    device = canvas.device
    bits = mask.to_tensor(device)
    # Sample the mask only at the visible pixels' centres: a huge box that is mostly outside
    # the frame costs no more than its visible part.
    ys = torch.arange(cy1, cy2, device=device, dtype=torch.float32)
    xs = torch.arange(cx1, cx2, device=device, dtype=torch.float32)
    rows = ((ys - y1 + 0.5) * (mask.height / (y2 - y1))).long().clamp_(0, mask.height - 1)
    cols = ((xs - x1 + 0.5) * (mask.width / (x2 - x1))).long().clamp_(0, mask.width - 1)
    inside = bits[rows][:, cols].unsqueeze(-1)
    region = canvas[cy1:cy2, cx1:cx2]
    blended = region.float() * (1.0 - _MASK_OPACITY) + color.float() * _MASK_OPACITY
    region.copy_(torch.where(inside, blended.round().to(torch.uint8), region))


def _draw_keypoints(
    canvas: torch.Tensor, objects: list[ObjectMeta], radius: int, palette: torch.Tensor
) -> None:
    """One filled disc per keypoint with a positive score, all in a single scatter."""
    points: list[tuple[float, float]] = []
    colors: list[int] = []
    for obj in objects:
        for kp in obj.keypoints or ():
            if kp.score > 0 and math.isfinite(kp.x) and math.isfinite(kp.y):
                points.append((kp.x, kp.y))
                colors.append(_palette_index(obj.label))
    if not points:
        return
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    device = canvas.device
    centers = torch.tensor(points, dtype=torch.float32, device=device).floor().long()  # (K, 2)
    span = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(span, span, indexing="ij")
    disc = dy * dy + dx * dx <= radius * radius
    dy, dx = dy[disc], dx[disc]  # (S,)
    xs = (centers[:, 0:1] + dx).reshape(-1)
    ys = (centers[:, 1:2] + dy).reshape(-1)
    index = torch.tensor(colors, device=device).repeat_interleave(int(dx.numel()))
    keep = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    canvas[ys[keep], xs[keep]] = palette[index[keep]]


def _draw_label(
    canvas: torch.Tensor,
    obj: ObjectMeta,
    box: tuple[int, int, int, int],
    scale: int,
    palette: torch.Tensor,
    color: int,
) -> None:
    height, width = int(canvas.shape[0]), int(canvas.shape[1])
    track = f" #{obj.track_id}" if obj.track_id is not None else ""
    text = f"{obj.label}{track} {obj.confidence:.2f}"
    text_h, text_w = text_size(text, scale=scale)
    pad = scale
    bg_h, bg_w = text_h + 2 * pad, text_w + 2 * pad
    x1, y1 = box[0], box[1]
    # Above the box when it fits, else just inside its (visible) top edge; shifted left
    # rather than cut off at the right border.
    top = y1 - bg_h if y1 - bg_h >= 0 else max(y1, 0)
    left = max(0, min(max(x1, 0), width - bg_w))
    _fill(canvas, left, top, left + bg_w, top + bg_h, palette[color])

    r, g, b = _PALETTE[color]
    ink_value = 0 if 0.299 * r + 0.587 * g + 0.114 * b > 150 else 255
    ink = torch.full((3,), ink_value, dtype=torch.uint8, device=canvas.device)
    glyphs = render_text(text, scale=scale)
    ty, tx = top + pad, left + pad
    vis_h, vis_w = min(text_h, height - ty), min(text_w, width - tx)
    if vis_h <= 0 or vis_w <= 0:
        return
    visible = glyphs[:vis_h, :vis_w].to(canvas.device).unsqueeze(-1)
    region = canvas[ty : ty + vis_h, tx : tx + vis_w]
    region.copy_(torch.where(visible, ink, region))
