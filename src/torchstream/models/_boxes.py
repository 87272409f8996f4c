"""Mapping boxes between a frame and a model's input: letterboxing, rescaling, clipping.

Boxes are ``[..., 4]`` tensors of ``[x1, y1, x2, y2]`` in pixels (x2/y2 exclusive edges), on
any device. Every function returns a new tensor, never works in place, and keeps a floating
input's dtype (integer boxes come back as float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Letterbox", "clip_boxes", "input_size_for", "scale_boxes"]


@dataclass(frozen=True)
class Letterbox:
    """How a source frame was fitted into a model input: scaled, then padded on both sides.

    A source pixel coordinate ``x`` lands at ``x * scale + pad_x`` in the target (``y`` the
    same with ``pad_y``). The scaled content occupies ``content_width`` x ``content_height``
    target pixels starting at ``(pad_x, pad_y)``; the rest is padding.

    Build one with :meth:`fit`; :func:`torchstream.surface.letterbox` makes the image and the
    Letterbox together, so the boxes a detector finds map back exactly.
    """

    scale: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int
    target_width: int
    target_height: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Letterbox.scale must be finite and > 0, got {self.scale!r}")
        for name in ("source_width", "source_height", "target_width", "target_height"):
            if getattr(self, name) < 1:
                raise ValueError(f"Letterbox.{name} must be >= 1, got {getattr(self, name)!r}")

    @classmethod
    def fit(
        cls, *, source_width: int, source_height: int, target_width: int, target_height: int
    ) -> Letterbox:
        """The largest aspect-preserving scale that fits the target, with centred padding.

        When the padding is odd the extra pixel goes right / bottom. The content size is
        ``floor(source * scale)`` per axis, exactly what ``torch.nn.functional.interpolate``
        produces for ``scale_factor=scale``, so image and boxes always agree.
        """
        sizes = {
            "source_width": source_width,
            "source_height": source_height,
            "target_width": target_width,
            "target_height": target_height,
        }
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        # The ideal content size, in exact integer arithmetic.
        if target_width * source_height <= target_height * source_width:
            content = (target_width, source_height * target_width // source_width)
            scale = target_width / source_width
        else:
            content = (source_width * target_height // source_height, target_height)
            scale = target_height / source_height
        if min(content) < 1:
            raise ValueError(
                f"a {source_width}x{source_height} source is too elongated for a "
                f"{target_width}x{target_height} target: it would be scaled to {content}"
            )
        # In floating point `source * (target / source)` can land a hair under the integer
        # (49 * (1 / 49) < 1); nudge the scale up until the floored sizes are the ideal ones.
        for _ in range(8):
            if (int(source_width * scale), int(source_height * scale)) == content:
                break
            scale = math.nextafter(scale, math.inf)
        content_width, content_height = int(source_width * scale), int(source_height * scale)
        return cls(
            scale=scale,
            pad_x=float((target_width - content_width) // 2),
            pad_y=float((target_height - content_height) // 2),
            source_width=source_width,
            source_height=source_height,
            target_width=target_width,
            target_height=target_height,
        )

    @property
    def content_width(self) -> int:
        """Width in target pixels of the scaled source, without padding."""
        return int(self.source_width * self.scale)

    @property
    def content_height(self) -> int:
        """Height in target pixels of the scaled source, without padding."""
        return int(self.source_height * self.scale)

    def content_slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` of the target holding real content: ``target[..., rows, cols]``
        drops the padding (from a segmentation mask, say)."""
        top, left = round(self.pad_y), round(self.pad_x)
        return slice(top, top + self.content_height), slice(left, left + self.content_width)

    def boxes_to_source(self, boxes: Tensor) -> Tensor:
        """Target (model input) boxes to source frame pixels, clamped to the frame."""
        _check_boxes(boxes)
        return _map_xy(
            boxes,
            lambda x: ((x - self.pad_x) / self.scale).clamp(0, self.source_width),
            lambda y: ((y - self.pad_y) / self.scale).clamp(0, self.source_height),
        )

    def boxes_to_target(self, boxes: Tensor) -> Tensor:
        """Source frame boxes to target (model input) pixels; not clamped."""
        _check_boxes(boxes)
        return _map_xy(
            boxes, lambda x: x * self.scale + self.pad_x, lambda y: y * self.scale + self.pad_y
        )


def input_size_for(width: int, height: int, *, max_side: int, stride: int) -> tuple[int, int]:
    """The smallest ``(width, height)``, both multiples of ``stride``, that holds a
    ``width`` x ``height`` frame scaled so its longer side is ``max_side``.

    Use it for models that accept any input size divisible by their stride (YOLO: 32), to
    letterbox with the least padding: 1920x1080 with ``max_side=640, stride=32`` gives
    ``(640, 384)``. When ``max_side`` is not a multiple of ``stride`` the longer side rounds up.
    """
    for name, value in (("width", width), ("height", height), ("max_side", max_side)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    longest = max(width, height)
    scaled = (max(1, width * max_side // longest), max(1, height * max_side // longest))
    w, h = (-(-side // stride) * stride for side in scaled)
    return w, h


def scale_boxes(
    boxes: Tensor, *, from_size: tuple[float, float], to_size: tuple[float, float]
) -> Tensor:
    """Rescale boxes from an image of ``from_size`` ``(width, height)`` to one of ``to_size``
    (a plain stretch, no letterbox)."""
    _check_boxes(boxes)
    for name, size in (("from_size", from_size), ("to_size", to_size)):
        if len(size) != 2 or not min(size) > 0:
            raise ValueError(f"{name} must be (width, height) > 0, got {size!r}")
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return _map_xy(boxes, lambda x: x * sx, lambda y: y * sy)


def clip_boxes(boxes: Tensor, *, width: float, height: float) -> Tensor:
    """Clamp boxes to a ``width`` x ``height`` frame: x into [0, width], y into [0, height]."""
    _check_boxes(boxes)
    if not (width >= 0 and height >= 0):
        raise ValueError(f"width and height must be >= 0, got width={width!r}, height={height!r}")
    return _map_xy(boxes, lambda x: x.clamp(0, width), lambda y: y.clamp(0, height))


def _check_boxes(boxes: Tensor) -> None:
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")


def _map_xy(
    boxes: Tensor, fx: Callable[[Tensor], Tensor], fy: Callable[[Tensor], Tensor]
) -> Tensor:
    # Column by column with Python scalars: no small constant tensor to copy to the device.
    if not boxes.is_floating_point():
        boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((fx(x1), fy(y1), fx(x2), fy(y2)), dim=-1)
