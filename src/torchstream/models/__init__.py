"""Building blocks for model stages: box overlap and NMS, letterbox geometry, masks.

Everything works on CPU and CUDA tensors alike and never modifies its inputs.
"""

from torchstream.models._boxes import Letterbox, clip_boxes, input_size_for, scale_boxes
from torchstream.models._masks import argmax_masks, crop_letterbox, resize_masks, threshold_masks
from torchstream.models._nms import batched_nms, box_iou, nms

__all__ = [
    "Letterbox",
    "argmax_masks",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "crop_letterbox",
    "input_size_for",
    "nms",
    "resize_masks",
    "scale_boxes",
    "threshold_masks",
]
