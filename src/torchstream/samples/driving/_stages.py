"""The driving sample's model stages: whole frames in, road and lane masks (and vehicles) out.

Both stages letterbox every frame of the batch into the network's fixed input in one kernel,
run the network once on the batch, and do all postprocessing on the device: masks are the
argmax of each head's two classes at the network's resolution, cropped to the frame's content
(never scaled up to the frame: they are stretched over it when drawn) and run-length encoded
on the device; detections are thresholded, suppressed (NMS) and mapped back to frame pixels
there too. The host receives one small copy per batch (:func:`~torchstream.pipeline.to_host`).

``postprocess`` never waits for the GPU; what must (NMS, the run-length encoding, whose sizes
depend on the data) is in ``finalize``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from torchstream.frame import Frame
from torchstream.models import Letterbox, MaskRuns, batched_nms, crop_letterbox, mask_runs
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._model_stage import CompileMode, Crop, ModelStage
from torchstream.samples.driving._twinlitenet import load_twinlitenet
from torchstream.surface import letterbox_batch

__all__ = [
    "DRIVABLE_AREA",
    "LANE_LINE",
    "VEHICLE",
    "TwinLiteNetSegmentation",
    "YolopPerception",
]

DRIVABLE_AREA = "drivable_area"
LANE_LINE = "lane_line"
VEHICLE = "vehicle"
_MASK_LABELS = (DRIVABLE_AREA, LANE_LINE)  # the order of the networks' two heads

_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_MAX_CANDIDATES = 300  # per frame, best first, before NMS


@functools.lru_cache(maxsize=64)
def _fit(width: int, height: int, input_width: int, input_height: int) -> Letterbox:
    """How a ``width`` x ``height`` frame goes into the network's input (what
    :func:`~torchstream.surface.letterbox_batch` does to it)."""
    return Letterbox.fit(
        source_width=width,
        source_height=height,
        target_width=input_width,
        target_height=input_height,
    )


class _Masks(NamedTuple):
    """One frame's share of a batch's masks: ``runs`` of the frame's group of same-sized
    masks, the index of its first mask there, the batch's (B, K) mask confidences and the
    frame's row in them."""

    runs: MaskRuns
    first: int
    confidence: torch.Tensor
    row: int


class _Segmentation(NamedTuple):
    """One frame's share of a batch's segmentation, still on the device: the batch's
    (B, K, H, W) foreground masks at the network's resolution, their (B, K) confidences,
    and the frame's row."""

    foreground: torch.Tensor
    confidence: torch.Tensor
    row: int


def _segmentation(foreground: torch.Tensor, probability: torch.Tensor) -> list[_Segmentation]:
    """Per frame, its share of (B, K, H, W) foreground masks; ``probability`` is each pixel's
    foreground probability: a mask's confidence is its mean over the mask (0 for an empty
    mask). No host synchronisation."""
    found = foreground.sum(dim=(2, 3))
    confidence = (probability * foreground).sum(dim=(2, 3)) / found.clamp(min=1)
    return [_Segmentation(foreground, confidence, row) for row in range(foreground.shape[0])]


def _encode_masks(parts: Sequence[_Segmentation], fits: Sequence[Letterbox]) -> list[_Masks]:
    """Each frame's masks cropped to its letterboxed content and run-length encoded on the
    device: one ``nonzero`` (one synchronisation) per group of frames of the same batch and
    the same size."""
    groups: dict[tuple[int, Letterbox], list[int]] = {}
    for index, (part, fit) in enumerate(zip(parts, fits, strict=True)):
        groups.setdefault((id(part.foreground), fit), []).append(index)
    result: list[_Masks | None] = [None] * len(parts)
    for (_, fit), indices in groups.items():
        foreground = parts[indices[0]].foreground
        rows = [parts[index].row for index in indices]
        if rows != list(range(foreground.shape[0])):
            foreground = foreground[torch.tensor(rows, device=foreground.device)]
        content = crop_letterbox(foreground, fit)
        kinds = int(content.shape[1])
        runs = mask_runs(content.reshape(-1, *content.shape[-2:]))
        for position, index in enumerate(indices):
            part = parts[index]
            result[index] = _Masks(runs, position * kinds, part.confidence, part.row)
    return [masks for masks in result if masks is not None]


def _add_masks(frame: Frame, fit: Letterbox, masks: _Masks) -> None:
    # The content's far edges, in frame pixels; a hair past the frame only by rounding.
    box = [
        0.0,
        0.0,
        min(fit.content_width / fit.scale, float(frame.width)),
        min(fit.content_height / fit.scale, float(frame.height)),
    ]
    scores = np.asarray(masks.confidence)[masks.row].tolist()
    for offset, (label, score) in enumerate(zip(_MASK_LABELS, scores, strict=True)):
        mask = masks.runs.mask(masks.first + offset)
        frame.add_object(label=label, confidence=score, box=box, mask=mask)


class _DrivingStage(ModelStage):
    """What both networks share: a fixed input size, one letterbox kernel per batch, results
    read on the host as NumPy arrays (no torch call per frame)."""

    results_as_numpy = True

    input_height = 384
    input_width = 640
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def fit(self, frame: Frame) -> Letterbox:
        return _fit(frame.width, frame.height, self.input_width, self.input_height)

    def preprocess(self, crops: Sequence[Crop]) -> torch.Tensor:
        surfaces = [
            crop.frame.require_surface(f"stage {self.name!r}").to(self.device) for crop in crops
        ]
        batch, _ = letterbox_batch(
            surfaces,
            height=self.input_height,
            width=self.input_width,
            mean=self.pixel_mean,
            std=self.pixel_std,
            dtype=self.dtype,
        )
        return batch


class TwinLiteNetSegmentation(_DrivingStage):
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
    input_height = 360  # what TwinLiteNet was trained on (16:9, RGB / 255)
    input_width = 640

    def __init__(
        self,
        *,
        weights: str | Path,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        compile_mode: CompileMode | None = None,
    ) -> None:
        super().__init__(
            name=name,
            batch_policy=batch_policy,
            half=half,
            channels_last=channels_last,
            cuda_graphs=cuda_graphs,
            compile_mode=compile_mode,
        )
        self.weights = Path(weights)

    def load_model(self) -> torch.nn.Module:
        return load_twinlitenet(self.weights)

    def postprocess(
        self, outputs: tuple[torch.Tensor, torch.Tensor], crops: Sequence[Crop]
    ) -> list[_Segmentation]:
        count = len(crops)  # a padded batch has extra rows at the end
        # (B, 2 heads, 2 classes, H, W) -> foreground minus background logit per head.
        logits = torch.stack([head[:count] for head in outputs], dim=1)
        margin = (logits[:, :, 1] - logits[:, :, 0]).float()
        # The argmax of two classes (a tie goes to background, as argmax would have it);
        # the softmax probability of the foreground is the sigmoid of the margin.
        return _segmentation(margin > 0, margin.sigmoid())

    def finalize(self, results: list[_Segmentation], crops: Sequence[Crop]) -> list[_Masks]:
        return _encode_masks(results, [self.fit(crop.frame) for crop in crops])

    def attach(self, crop: Crop, result: _Masks) -> None:
        _add_masks(crop.frame, self.fit(crop.frame), result)


YolopNetwork = Literal["yolop", "yolop-arch"]


class _Candidates(NamedTuple):
    """One frame's share of a batch's best detections before NMS, on the device: (B, C)
    scores and (B, C, 4) boxes (centre x, y, width, height in input pixels), and its row."""

    scores: torch.Tensor
    boxes: torch.Tensor
    row: int


class _Detections(NamedTuple):
    """Detections of a group of frames, shared by them: rows of (frame position in the group,
    x1, y1, x2, y2, score) in frame pixels, and which position this result is for."""

    rows: torch.Tensor
    position: int


class YolopPerception(_DrivingStage):
    """YOLOP on whole frames: vehicles, drivable area and lane lines.

    Adds to every frame one ``"vehicle"`` object per detected vehicle (box in frame pixels,
    confidence = objectness x class score, at least ``confidence_threshold``, after NMS at
    ``iou_threshold``), then ``"drivable_area"`` and ``"lane_line"`` objects with masks as
    :class:`TwinLiteNetSegmentation` gives them (at the network's resolution without the
    padding: 640x360 for a 16:9 frame at the default 640x384 input).

    ``network``:

    - ``"yolop"``: the trained model from TorchHub, ``torch.hub.load(hub_repo, "yolop",
      pretrained=True)``; ``hub_repo`` is ``"hustvl/yolop"`` (GitHub, downloaded once into
      TorchHub's cache) or a local folder with the repository's ``hubconf.py`` (offline).
    - ``"yolop-arch"``: :class:`~torchstream.samples.driving.YOLOP`, the same architecture
      with random weights (seeded, batch norms folded): for measuring cost only; its outputs
      mean nothing, and every frame says so in its ``"driving.random_weights"`` attribute.

    ``input_size`` is (height, width), multiples of 32; frames of any size are letterboxed
    into it.
    """

    name = "driving.yolop"
    pixel_mean = _IMAGENET_MEAN
    pixel_std = _IMAGENET_STD

    def __init__(
        self,
        *,
        network: YolopNetwork = "yolop",
        hub_repo: str = "hustvl/yolop",
        input_size: tuple[int, int] = (384, 640),
        confidence_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
        channels_last: bool = False,
        cuda_graphs: bool = False,
        compile_mode: CompileMode | None = None,
    ) -> None:
        if network not in ("yolop", "yolop-arch"):
            raise ValueError(f"network must be 'yolop' or 'yolop-arch', got {network!r}")
        height, width = input_size
        if height < 32 or width < 32 or height % 32 or width % 32:
            raise ValueError(
                f"input_size must be multiples of 32 (height, width), got {input_size}"
            )
        for label, value in (
            ("confidence_threshold", confidence_threshold),
            ("iou_threshold", iou_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value!r}")
        super().__init__(
            name=name,
            batch_policy=batch_policy,
            half=half,
            channels_last=channels_last,
            cuda_graphs=cuda_graphs,
            compile_mode=compile_mode,
        )
        self.network: YolopNetwork = network
        self.hub_repo = hub_repo
        self.input_height, self.input_width = height, width
        self.confidence_threshold = confidence_threshold
        self.iou_threshold = iou_threshold

    def load_model(self) -> torch.nn.Module:
        if self.network == "yolop":
            from torchstream.models import load_hub_model

            return load_hub_model(self.hub_repo, "yolop", pretrained=True)
        from torchstream.samples.driving._yolop import YOLOP, fuse_batch_norms

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fuse_batch_norms(YOLOP().eval())

    def postprocess(
        self, outputs: Any, crops: Sequence[Crop]
    ) -> list[tuple[_Candidates, _Segmentation]]:
        detections, drivable, lanes = outputs
        if isinstance(detections, (tuple, list)):  # (decoded, raw maps) in evaluation mode
            detections = detections[0]
        count = len(crops)
        predictions = detections[:count].float()
        scores = predictions[..., 4] * predictions[..., 5]
        best, order = scores.topk(min(_MAX_CANDIDATES, scores.shape[1]), dim=1)
        boxes = predictions[..., :4].gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        heads = torch.stack([drivable[:count], lanes[:count]], dim=1).float()  # (B, 2, 2, H, W)
        # Each head scores background and foreground (after a sigmoid): the argmax is the
        # mask (a tie goes to background), the foreground score the probability.
        masks = _segmentation(heads[:, :, 1] > heads[:, :, 0], heads[:, :, 1])
        return [(_Candidates(best, boxes, row), masks[row]) for row in range(count)]

    def finalize(
        self, results: list[tuple[_Candidates, _Segmentation]], crops: Sequence[Crop]
    ) -> list[tuple[_Detections, _Masks]]:
        fits = [self.fit(crop.frame) for crop in crops]
        detections: list[_Detections | None] = [None] * len(results)
        groups: dict[int, list[int]] = {}
        for index, (candidates, _) in enumerate(results):
            groups.setdefault(id(candidates.scores), []).append(index)
        for indices in groups.values():
            rows = self._detections([results[i][0] for i in indices], [fits[i] for i in indices])
            for position, index in enumerate(indices):
                detections[index] = _Detections(rows, position)
        masks = _encode_masks([segmentation for _, segmentation in results], fits)
        return [(d, m) for d, m in zip(detections, masks, strict=True) if d is not None]

    def _detections(
        self, candidates: Sequence[_Candidates], fits: Sequence[Letterbox]
    ) -> torch.Tensor:
        """The candidates of frames of one batch -> (M, 6) rows (position, x1, y1, x2, y2,
        score) in frame pixels, after the threshold and NMS per frame."""
        first = candidates[0]
        index = torch.tensor([c.row for c in candidates], device=first.scores.device)
        best, boxes = first.scores[index], first.boxes[index]
        frame = torch.arange(len(fits), device=best.device).view(-1, 1).expand_as(best)
        keep = best > self.confidence_threshold
        best, boxes, frame = best[keep], boxes[keep], frame[keep]
        centre, size = boxes[:, :2], boxes[:, 2:]
        corners = torch.cat([centre - size / 2, centre + size / 2], dim=1)
        kept = batched_nms(corners, best, frame, iou_threshold=self.iou_threshold)
        corners, best, frame = corners[kept], best[kept], frame[kept]
        # Back to frame pixels: undo each frame's padding and scale, clip to the frame.
        geometry = torch.tensor(
            [
                (fit.pad_x, fit.pad_y, fit.scale, fit.source_width, fit.source_height)
                for fit in fits
            ],
            dtype=torch.float32,
        ).to(best.device)[frame]
        pad, scale, limit = geometry[:, 0:2].repeat(1, 2), geometry[:, 2:3], geometry[:, 3:5]
        corners = (corners - pad) / scale
        corners = torch.minimum(corners.clamp(min=0), limit.repeat(1, 2))
        return torch.cat([frame.unsqueeze(1).float(), corners, best.unsqueeze(1)], dim=1)

    def attach(self, crop: Crop, result: tuple[_Detections, _Masks]) -> None:
        detections, masks = result
        frame = crop.frame
        rows = np.asarray(detections.rows)
        for row in rows[rows[:, 0] == detections.position]:
            box = [float(v) for v in row[1:5]]
            frame.add_object(label=VEHICLE, confidence=float(row[5]), box=box)
        _add_masks(frame, self.fit(frame), masks)
        if self.network == "yolop-arch":
            frame.attributes["driving.random_weights"] = True
