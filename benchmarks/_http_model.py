"""The model every server of ``benchmarks/http.py`` runs: a ResNet-50 ImageNet classifier.

One file, two uses:

- a torchstream pipeline file: ``torchstream run benchmarks/_http_model.py --input clip.mp4``
  (and ``torchstream serve benchmarks/_http_model.py``) classify each frame and put its five
  most likely classes in ``frame.attributes["top5"]`` as ``[[class_index, probability], ...]``;
- a library for the peer servers (``_http_peers.py``): :func:`load_resnet50`,
  :func:`decode_jpeg`, :func:`preprocess` and :func:`top5`, so they run the same network and
  the same preprocessing.

The network is ResNet-50 v1.5 (stride 2 in the 3x3 convolution of each down-sampling
bottleneck): ``torchvision.models.resnet50`` when torchvision imports, otherwise our own
definition below. The weights are random with a fixed seed (no download, and every process
gets the same network): the classes mean nothing, the cost is that of the real model.
Preprocessing: RGB letterboxed to 224x224 (aspect kept, bilinear, grey padding) and
normalised with the ImageNet mean and standard deviation.

This file is loaded by path (``torchstream`` does not put its folder on ``sys.path``), so it
imports nothing from its neighbours.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import av
import torch
from torch import Tensor, nn

from torchstream import Crop, ModelStage, PipelineSpec, RunConfig
from torchstream.surface import letterbox_batch

__all__ = [
    "INPUT_SIZE",
    "ResNet50Classifier",
    "build",
    "decode_jpeg",
    "jpeg_decoder_name",
    "load_resnet50",
    "model_name",
    "preprocess",
    "top5",
]

INPUT_SIZE = (224, 224)
SEED = 0
# ImageNet statistics in 0..255 pixel units (what letterbox_batch normalises with).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# -- the network ------------------------------------------------------------------------------
class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4, plus the shortcut."""

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        outputs = width * 4
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outputs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


class _ResNet50(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four stages of 3, 4, 6 and 3 bottlenecks, global
    average pool, 1000-way linear layer: 25.6 M parameters, about 4.1 GFLOPs at 224x224."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        inputs = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [_Bottleneck(inputs, width, stride)]
            inputs = width * 4
            layers += [_Bottleneck(inputs, width, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def model_name() -> str:
    """Which definition :func:`load_resnet50` uses here."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "ResNet-50 v1.5 (own definition)"
    return "ResNet-50 v1.5 (torchvision)"


def load_resnet50() -> nn.Module:
    """The network with random weights from a fixed seed, in eval mode, on the CPU; the
    global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        try:
            from torchvision.models import resnet50
        except ImportError:
            return _ResNet50().eval()
        return resnet50(weights=None).eval()


# -- preprocessing and results ----------------------------------------------------------------
_decoders = threading.local()


@functools.cache
def _torchvision_decode() -> Any:
    """torchvision's ``decode_jpeg`` and ``ImageReadMode.RGB``, or None without torchvision
    (looked up once: a failed import searches the whole path each time)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return decode_jpeg, ImageReadMode.RGB


def jpeg_decoder_name() -> str:
    """Which JPEG decoder :func:`decode_jpeg` uses here."""
    if _torchvision_decode() is None:
        return "PyAV (FFmpeg mjpeg)"
    return "torchvision.io.decode_jpeg (libjpeg-turbo)"


def decode_jpeg(data: bytes) -> Tensor:
    """A JPEG's pixels as a ``uint8 (height, width, 3)`` RGB tensor on the CPU, decoded the
    way a user's own server would: torchvision when it imports, else FFmpeg through PyAV
    (one decoder per thread, reused). Raises ``ValueError`` when ``data`` is not a JPEG."""
    torchvision_decode = _torchvision_decode()
    if torchvision_decode is not None:
        decode, rgb = torchvision_decode
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        try:
            image = decode(raw, mode=rgb)
        except RuntimeError as exc:
            raise ValueError(f"not a JPEG: {exc}") from exc
        return image.permute(1, 2, 0)  # a view; preprocess() makes it contiguous
    context = getattr(_decoders, "mjpeg", None)
    if context is None:
        context = _decoders.mjpeg = av.CodecContext.create("mjpeg", "r")
    try:
        frames = context.decode(av.Packet(data))
    except av.error.FFmpegError as exc:
        _decoders.mjpeg = None  # start the next image with a clean decoder
        raise ValueError(f"not a JPEG: {exc}") from exc
    if not frames:
        raise ValueError("no picture in the JPEG")
    return torch.from_numpy(frames[0].to_ndarray(format="rgb24"))


def preprocess(surfaces: Sequence[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    """RGB ``uint8 (H, W, 3)`` pictures of any sizes → one normalised ``(B, 3, 224, 224)``
    batch on ``device`` (one Triton kernel on CUDA, torch ops elsewhere)."""
    on_device = [s.to(device, non_blocking=True).contiguous() for s in surfaces]
    height, width = INPUT_SIZE
    batch, _ = letterbox_batch(
        on_device, height=height, width=width, mean=MEAN, std=STD, dtype=dtype
    )
    return batch


def _top5_tensors(logits: Tensor) -> tuple[Tensor, Tensor]:
    probabilities, classes = logits.float().softmax(dim=1).topk(5, dim=1)
    return classes, probabilities


def top5(logits: Tensor) -> list[list[list[float]]]:
    """Per row of ``logits``, its five most likely classes: ``[[class, probability], ...]``."""
    classes, probabilities = (t.cpu() for t in _top5_tensors(logits))
    return [
        [[int(c), round(float(p), 6)] for c, p in zip(row_c, row_p, strict=True)]
        for row_c, row_p in zip(classes.tolist(), probabilities.tolist(), strict=True)
    ]


# -- the torchstream pipeline -----------------------------------------------------------------
class ResNet50Classifier(ModelStage):
    """Classifies whole frames; ``frame.attributes["top5"] = [[class, probability], ...]``."""

    name = "resnet50"
    input_size = INPUT_SIZE

    def load_model(self) -> nn.Module:
        return load_resnet50()

    def preprocess(self, crops: Sequence[Crop]) -> Tensor:
        surfaces = [crop.frame.require_surface(f"stage {self.name!r}") for crop in crops]
        return preprocess(surfaces, self.device, self.dtype)

    def postprocess(self, outputs: Tensor, crops: Sequence[Crop]) -> list[tuple[Tensor, Tensor]]:
        classes, probabilities = _top5_tensors(outputs)
        return list(zip(classes, probabilities, strict=True))

    def attach(self, crop: Crop, result: tuple[Tensor, Tensor]) -> None:
        classes, probabilities = result
        crop.frame.attributes["top5"] = [
            [int(c), round(float(p), 6)]
            for c, p in zip(classes.tolist(), probabilities.tolist(), strict=True)
        ]


def build(config: RunConfig, options: None) -> PipelineSpec:
    """One stage, batched by ``config.batch_policy``; float16 with ``config.half`` on CUDA."""
    half = config.half and config.device.type == "cuda"
    return PipelineSpec(stages=[ResNet50Classifier(batch_policy=config.batch_policy, half=half)])
