"""The MTCNN cascade as three model stages, so frames of many streams batch at every step.

1. :class:`FaceProposals` runs PNet over an image pyramid of each frame and adds candidate
   boxes (label ``"face.candidate"``).
2. :class:`FaceRefine` runs RNet on 24x24 crops of the candidates, removes the rejected ones
   and moves the rest to their refined, square boxes.
3. :class:`FaceOutput` runs ONet on 48x48 crops of the refined candidates, adds the faces
   (label ``"face"``, five keypoints) and removes every candidate.

Each stage does its thresholds, NMS and box arithmetic on the device, for all frames of the
batch at once (NMS grouped by frame), and copies its small result to the host once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torchstream.frame import Frame, Keypoint
from torchstream.models._nms import Overlap, batched_nms
from torchstream.pipeline._batcher import BatchPolicy
from torchstream.pipeline._model_stage import Crop, ModelStage, to_host
from torchstream.samples.faces._nets import ONet, PNet, RNet, pretrained
from torchstream.surface import crop_resize, resize

__all__ = ["CANDIDATE", "FACE", "KEYPOINT_NAMES", "FaceOutput", "FaceProposals", "FaceRefine"]

CANDIDATE = "face.candidate"
FACE = "face"
KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""Order of a face's keypoints; left and right as seen in the image, not by the person."""

_STRIDE = 2  # PNet sees one 12x12 window every 2 pixels of each pyramid level
_WINDOW = 12
_PYRAMID_FACTOR = 0.709  # each level is half the area of the one before
_MAX_SUPERSAMPLE = 4  # a candidate crop is averaged from at most 4x4 samples per pixel


def check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def pyramid_scales(height: int, width: int, min_face_size: int) -> list[float]:
    """Scales at which a ``min_face_size`` face becomes PNet's 12-pixel window, then smaller
    by 0.709 each level while the image's short side still holds one window."""
    scale = _WINDOW / min_face_size
    scales = []
    while min(height, width) * scale >= _WINDOW:
        scales.append(scale)
        scale *= _PYRAMID_FACTOR
    return scales


@dataclass(frozen=True, eq=False)
class _Level:
    """One pyramid level of the frames of one size: normalised images and where they came
    from (index of each image's crop in the batch, and the level's scale per axis)."""

    images: torch.Tensor
    crop_index: torch.Tensor
    scale_x: float
    scale_y: float


def _frame_index(crops: Sequence[Crop], device: torch.device) -> torch.Tensor:
    """The index of each crop's frame among the frames of the batch: the group of NMS."""
    seen: dict[int, int] = {}
    index = [seen.setdefault(id(crop.frame), len(seen)) for crop in crops]
    return torch.tensor(index, dtype=torch.int64, device=device)


def _crop_boxes(crops: Sequence[Crop], device: torch.device) -> torch.Tensor:
    return torch.tensor([crop.box for crop in crops], dtype=torch.float32, device=device)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move each edge by its offset, a fraction of the box's width or height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """The square of side max(width, height) around each box's centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _remove(frame: Frame, obj: object) -> None:
    # By identity: two candidates may have equal fields.
    frame.objects = [o for o in frame.objects if o is not obj]


class FaceProposals(ModelStage):
    """PNet over an image pyramid of each frame; adds ``"face.candidate"`` objects (square
    boxes, PNet's confidence). Frames of equal size are batched at each pyramid level.

    A frame's pyramid starts where a ``min_face_size`` face is 12 pixels: smaller faces are
    not found, and a smaller ``min_face_size`` makes the stage slower (more, larger levels).
    """

    name = "face.proposals"

    def __init__(
        self,
        *,
        min_face_size: int = 20,
        threshold: float = 0.6,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
    ) -> None:
        if min_face_size < _WINDOW:
            raise ValueError(f"min_face_size must be >= {_WINDOW} pixels, got {min_face_size!r}")
        check_threshold("threshold", threshold)
        super().__init__(name=name, batch_policy=batch_policy, half=half)
        self.min_face_size = min_face_size
        self.threshold = threshold

    def load_model(self) -> torch.nn.Module:
        return pretrained(PNet)

    def preprocess(self, crops: Sequence[Crop]) -> list[_Level]:
        by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for i, crop in enumerate(crops):
            surface = crop.frame.require_surface(f"stage {self.name!r}")
            by_size.setdefault(tuple(surface.shape), []).append((i, surface.to(self.device)))
        levels = []
        for (height, width, _), members in by_size.items():
            crop_index = torch.tensor([i for i, _ in members], device=self.device)
            for scale in pyramid_scales(height, width, self.min_face_size):
                level_h, level_w = math.ceil(height * scale), math.ceil(width * scale)
                images = torch.stack([resize(s, height=level_h, width=level_w) for _, s in members])
                images = ((images - 127.5) / 128.0).to(self.dtype)
                levels.append(_Level(images, crop_index, level_w / width, level_h / height))
        return levels

    def forward(self, batch: list[_Level]) -> list[tuple[_Level, torch.Tensor, torch.Tensor]]:
        if self.model is None:
            raise RuntimeError(f"stage {self.name!r}: call setup() before process()")
        return [(level, *self.model(level.images)) for level in batch]

    def postprocess(
        self, outputs: list[tuple[_Level, torch.Tensor, torch.Tensor]], crops: Sequence[Crop]
    ) -> list[torch.Tensor]:
        empty = torch.zeros((0, 4), device=self.device)
        boxes, scores, offsets, groups = [empty], [empty[:, 0]], [empty], [empty[:, 0].long()]
        for level, probability, regression in outputs:
            b, i, j = torch.nonzero(probability >= self.threshold, as_tuple=True)
            x, y = (j * _STRIDE).float(), (i * _STRIDE).float()
            window = torch.stack([x, y, x + _WINDOW, y + _WINDOW], dim=1)
            scale = torch.tensor([level.scale_x, level.scale_y] * 2, device=window.device)
            level_boxes = window / scale
            level_scores = probability[b, i, j].float()
            level_groups = level.crop_index[b]
            keep = batched_nms(level_boxes, level_scores, level_groups, iou_threshold=0.5)
            boxes.append(level_boxes[keep])
            scores.append(level_scores[keep])
            # Advanced indices around a slice: the (k, 4) offsets of the k windows.
            offsets.append(regression[b, :, i, j][keep].float())
            groups.append(level_groups[keep])
        all_boxes, all_scores, all_groups = torch.cat(boxes), torch.cat(scores), torch.cat(groups)
        keep = batched_nms(all_boxes, all_scores, all_groups, iou_threshold=0.7)
        proposals = _square(_regress(all_boxes[keep], torch.cat(offsets)[keep]))
        rows = torch.cat([proposals, all_scores[keep, None]], dim=1)
        kept_groups = all_groups[keep]
        order = torch.argsort(kept_groups, stable=True)
        counts = torch.bincount(kept_groups, minlength=len(crops))
        # One copy to the host for the whole batch, split there, rather than one small copy
        # per frame (the framework's to_host then finds host tensors and copies nothing).
        host_rows, host_counts = to_host((rows[order], counts))
        return list(torch.split(host_rows, host_counts.tolist()))

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        for x1, y1, x2, y2, score in result.tolist():
            crop.frame.add_object(label=CANDIDATE, confidence=score, box=[x1, y1, x2, y2])


class _CandidateStage(ModelStage):
    """What FaceRefine and FaceOutput share: crops of the candidates, normalised as the nets
    were trained, and a probability threshold."""

    input_size: tuple[int, int]

    def __init__(
        self,
        *,
        threshold: float = 0.7,
        name: str | None = None,
        batch_policy: BatchPolicy | None = None,
        half: bool = False,
    ) -> None:
        check_threshold("threshold", threshold)
        # NMS must see all candidates of a frame at once: crops are never split into chunks.
        super().__init__(name=name, batch_policy=batch_policy, half=half)
        self.threshold = threshold

    def select(self, frame: Frame) -> list[Crop]:
        crops = []
        for obj in frame.objects:
            if obj.label == CANDIDATE:
                x1, y1, x2, y2 = obj.box
                crops.append(Crop(frame, (x1, y1, x2, y2), obj))
        return crops

    def preprocess(self, crops: Sequence[Crop]) -> torch.Tensor:
        """Each candidate resized to ``input_size``, antialiased: a box much larger than the
        input is sampled at 2 or 4 times the size and averaged down, as bilinear sampling alone
        would skip most of its pixels. The factor depends on the box only, never the batch."""
        size = self.input_size[0]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, crop in enumerate(crops):
            x1, y1, x2, y2 = crop.box
            shrink = max(x2 - x1, y2 - y1) / size
            factor = 1
            while shrink > 2 * factor and factor < _MAX_SUPERSAMPLE:
                factor *= 2
            groups.setdefault((id(crop.frame), factor), []).append(i)
        batch = torch.empty((len(crops), 3, size, size), device=self.device)
        for (_, factor), indices in groups.items():
            frame = crops[indices[0]].frame
            surface = frame.require_surface(f"stage {self.name!r}")
            boxes = torch.tensor([crops[i].box for i in indices], dtype=torch.float32)
            pixels = crop_resize(
                surface, boxes, height=size * factor, width=size * factor
            ).to(self.device)
            if factor > 1:
                pixels = F.avg_pool2d(pixels, factor)
            batch[torch.tensor(indices, device=self.device)] = pixels
        return ((batch - 127.5) / 128.0).to(self.dtype)

    def _kept(
        self,
        probability: torch.Tensor,
        boxes: torch.Tensor,
        crops: Sequence[Crop],
        overlap: Overlap,
    ) -> torch.Tensor:
        """Which crops pass the threshold and then NMS among the passing crops of each frame."""
        passing = torch.nonzero(probability >= self.threshold).reshape(-1)
        groups = _frame_index(crops, boxes.device)[passing]
        survivors = passing[
            batched_nms(
                boxes[passing], probability[passing], groups, iou_threshold=0.7, overlap=overlap
            )
        ]
        kept = torch.zeros(len(crops), dtype=torch.bool, device=boxes.device)
        kept[survivors] = True
        return kept


class FaceRefine(_CandidateStage):
    """RNet on 24x24 crops of the ``"face.candidate"`` objects: removes the candidates it
    rejects (threshold, then NMS 0.7 per frame) and moves the others to their refined square
    boxes with RNet's confidence, keeping their ids."""

    name = "face.refine"
    input_size = (24, 24)

    def load_model(self) -> torch.nn.Module:
        return pretrained(RNet)

    def postprocess(
        self, outputs: tuple[torch.Tensor, torch.Tensor], crops: Sequence[Crop]
    ) -> list[torch.Tensor]:
        count = len(crops)  # a padded batch has extra rows at the end
        probability, offsets = outputs[0][:count].float(), outputs[1][:count].float()
        boxes = _crop_boxes(crops, probability.device)
        kept = self._kept(probability, boxes, crops, "iou")
        refined = _square(_regress(boxes, offsets))
        rows = torch.cat([refined, probability[:, None], kept[:, None].float()], dim=1)
        return list(to_host(rows).unbind(0))  # one copy for the batch, see FaceProposals

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        x1, y1, x2, y2, score, kept = result.tolist()
        candidate = crop.object
        assert candidate is not None, "select() makes crops of candidates"
        if kept:
            candidate.box = [x1, y1, x2, y2]
            candidate.confidence = score
        else:
            _remove(crop.frame, candidate)


class FaceOutput(_CandidateStage):
    """ONet on 48x48 crops of the refined candidates: adds a ``"face"`` object (fresh id,
    box clipped to the frame, keypoints in :data:`KEYPOINT_NAMES` order) for each candidate
    that passes the threshold and NMS 0.7 (overlap over the smaller box) per frame, and
    removes every candidate."""

    name = "face.output"
    input_size = (48, 48)

    def load_model(self) -> torch.nn.Module:
        return pretrained(ONet)

    def postprocess(
        self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], crops: Sequence[Crop]
    ) -> list[torch.Tensor]:
        count = len(crops)  # a padded batch has extra rows at the end
        probability, offsets, points = (o[:count].float() for o in outputs)
        boxes = _crop_boxes(crops, probability.device)
        # Landmarks are fractions of the crop: five x values, then five y values.
        origin, size = boxes[:, :2], boxes[:, 2:] - boxes[:, :2]
        xs = origin[:, :1] + size[:, :1] * points[:, :5]
        ys = origin[:, 1:] + size[:, 1:] * points[:, 5:]
        faces = _regress(boxes, offsets)
        kept = self._kept(probability, faces, crops, "min")
        limits = torch.tensor(
            [[c.frame.width, c.frame.height] * 2 for c in crops],
            dtype=torch.float32,
            device=faces.device,
        )
        faces = torch.minimum(faces.clamp(min=0), limits)
        rows = torch.cat([faces, probability[:, None], kept[:, None].float(), xs, ys], dim=1)
        return list(to_host(rows).unbind(0))  # one copy for the batch, see FaceProposals

    def attach(self, crop: Crop, result: torch.Tensor) -> None:
        values = result.tolist()
        candidate = crop.object
        assert candidate is not None, "select() makes crops of candidates"
        if values[5]:
            score = values[4]
            keypoints = [
                Keypoint(x, y, score) for x, y in zip(values[6:11], values[11:16], strict=True)
            ]
            # Added before the candidate goes, so the face's id is new in this frame.
            crop.frame.add_object(label=FACE, confidence=score, box=values[:4], keypoints=keypoints)
        _remove(crop.frame, candidate)
