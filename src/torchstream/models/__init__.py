"""Building blocks for model stages: box overlap and NMS, letterbox geometry, masks, and
loading models from TorchHub.

Everything works on CPU and CUDA tensors alike and never modifies its inputs.
"""

from torchstream.models._boxes import Letterbox, clip_boxes, input_size_for, scale_boxes
from torchstream.models._hub import HubError, load_hub_model
from torchstream.models._masks import (
    MaskRuns,
    argmax_masks,
    crop_letterbox,
    mask_runs,
    resize_masks,
    threshold_masks,
)
from torchstream.models._nms import batched_nms, box_iou, nms

__all__ = [
    "HubError",
    "Letterbox",
    "MaskRuns",
    "argmax_masks",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "crop_letterbox",
    "input_size_for",
    "load_hub_model",
    "mask_runs",
    "nms",
    "resize_masks",
    "scale_boxes",
    "threshold_masks",
]
