"""The driving sample's model stage: drivable area and lane lines of whole frames.

:class:`TwinLiteNetSegmentation` letterboxes every frame of the batch to the network's fixed
640x360 input, runs TwinLiteNet once on the batch, and keeps each head's foreground (the
argmax of its two classes) at the network's resolution, cropped to the frame's content: the
masks are never scaled up to the frame, they are stretched over it when drawn.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch

from torchstream.frame import Mask
from torchstream.models import Letterbox, crop_letterbox
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._model_stage import Crop, ModelStage
from torchstream.samples.driving._twinlitenet import load_twinlitenet
from torchstream.surface import letterbox_batch

__all__ = ["DRIVABLE_AREA", "LANE_LINE", "TwinLiteNetSegmentation"]

DRIVABLE_AREA = "drivable_area"
LANE_LINE = "lane_line"
_LABELS = (DRIVABLE_AREA, LANE_LINE)  # the order of the network's two heads

_INPUT_WIDTH, _INPUT_HEIGHT = 640, 360  # what TwinLiteNet was trained on (16:9)


@functools.lru_cache(maxsize=64)
def _fit(width: int, height: int) -> Letterbox:
    """How a ``width`` x ``height`` frame goes into the network's input (what
    :func:`~torchstream.surface.letterbox_batch` does to it)."""
    return Letterbox.fit(
        source_width=width,
        source_height=height,
        target_width=_INPUT_WIDTH,
        target_height=_INPUT_HEIGHT,
    )


class TwinLiteNetSegmentation(ModelStage):
    """TwinLiteNet on whole frames; adds two objects to every frame, in this order:

    - ``"drivable_area"``: where the car may drive (the road surface, every lane of it);
    - ``"lane_line"``: painted lane markings.

    Each object's ``mask`` is at the network's resolution (a 16:9 frame gives 640x360; other
    shapes give the letterboxed content's size, without the padding) and its ``box`` is the
    area it covers: the whole frame, so mask pixel ``(row, col)`` covers frame pixels
    ``[col, col + 1) / scale x [row, row + 1) / scale`` with ``scale = mask.width / box
    width``. ``confidence`` is the network's mean probability over the mask's pixels (0 for
    an empty mask: the object is there even when nothing was found, so a consumer can tell
    "no lane lines" from "not analysed").

    Frames of any size batch together (letterboxed with grey padding). ``weights`` is the
    trained state dict; it is read in :meth:`setup`.
    """

    name = "driving.twinlitenet"

    def __init__(
        self,
        *,
        weights: str | Path,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
    ) -> None:
        super().__init__(name=name, batch_policy=batch_policy, half=half)
        self.weights = Path(weights)

    def load_model(self) -> torch.nn.Module:
        return load_twinlitenet(self.weights)

    def preprocess(self, crops: Sequence[Crop]) -> torch.Tensor:
        surfaces = [
            crop.frame.require_surface(f"stage {self.name!r}").to(self.device) for crop in crops
        ]
        # RGB scaled to [0, 1], nothing more: the network was trained on pixel / 255.
        batch, _ = letterbox_batch(
            surfaces,
            height=_INPUT_HEIGHT,
            width=_INPUT_WIDTH,
            std=(255.0, 255.0, 255.0),
            dtype=self.dtype,
        )
        return batch

    def postprocess(
        self, outputs: tuple[torch.Tensor, torch.Tensor], crops: Sequence[Crop]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        count = len(crops)  # a padded batch has extra rows at the end
        # (B, 2 heads, 2 classes, H, W) -> foreground minus background logit per head.
        logits = torch.stack([head[:count] for head in outputs], dim=1)
        margin = (logits[:, :, 1] - logits[:, :, 0]).float()
        # The argmax of two classes (a tie goes to background, as argmax would have it).
        masks = margin > 0
        # The softmax probability of the foreground is the sigmoid of the margin.
        found = masks.sum(dim=(2, 3))
        confidence = (margin.sigmoid() * masks).sum(dim=(2, 3)) / found.clamp(min=1)
        results = []
        for index, crop in enumerate(crops):
            content = crop_letterbox(masks[index], _fit(crop.frame.width, crop.frame.height))
            results.append((content, confidence[index]))
        return results

    def attach(self, crop: Crop, result: tuple[torch.Tensor, torch.Tensor]) -> None:
        masks, confidence = result
        frame = crop.frame
        fit = _fit(frame.width, frame.height)
        # The content's far edges, in frame pixels; a hair past the frame only by rounding.
        box = [
            0.0,
            0.0,
            min(fit.content_width / fit.scale, float(frame.width)),
            min(fit.content_height / fit.scale, float(frame.height)),
        ]
        for label, mask, score in zip(_LABELS, masks, confidence.tolist(), strict=True):
            frame.add_object(label=label, confidence=score, box=box, mask=Mask.from_tensor(mask))
