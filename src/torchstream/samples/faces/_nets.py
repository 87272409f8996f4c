"""The three MTCNN networks (proposal, refine, output) and their trained weights.

The layer names and shapes match the trained weights that ship as data files of the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), so every key loads
strictly. The weights descend from the original Caffe models, which were trained on transposed
images: the convolutions have since been transposed to take ordinary (height, width) images,
but the dense layers of RNet and ONet still expect the last feature map flattened in
(width, height, channel) order, so the nets flatten it that way (``_flatten_transposed``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from torchstream._errors import MissingDependencyError, TorchStreamError

__all__ = ["ONet", "PNet", "RNet", "WeightsMissingError", "load_mtcnn_weights", "pretrained"]

NetName = Literal["pnet", "rnet", "onet"]
_NET_NAMES = ("pnet", "rnet", "onet")
_INSTALL = "pip install --no-deps facenet-pytorch"


class WeightsMissingError(MissingDependencyError):
    """The trained MTCNN weights (data files of the ``facenet-pytorch`` wheel) are missing."""

    def __init__(self, detail: str) -> None:
        # MissingDependencyError's message names a torchstream extra; these weights come from
        # a third-party wheel installed without its dependencies, so say that instead.
        TorchStreamError.__init__(
            self, f"the faces sample needs the trained MTCNN weights: {detail}; {_INSTALL}"
        )


def load_mtcnn_weights(name: NetName) -> dict[str, torch.Tensor]:
    """The state dict of one trained MTCNN net, read from the installed ``facenet-pytorch``
    data files (without importing that package: its code needs torchvision).

    Raises :class:`WeightsMissingError` naming the pip command when the files are absent.
    """
    if name not in _NET_NAMES:
        raise ValueError(f"name must be one of {_NET_NAMES}, got {name!r}")
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError("facenet-pytorch is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.pt"
    if not path.is_file():
        raise WeightsMissingError(f"{path} does not exist")
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True, map_location="cpu")
    return state


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """Flatten (N, C, H, W) in (W, H, C) order: the layout the dense layers were trained on."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window every 2 pixels of its input.

    ``forward`` takes ``(N, 3, H, W)`` images normalised to ``(x - 127.5) / 128`` and returns
    the face probability ``(N, H', W')`` and box offsets ``(N, 4, H', W')`` of each window,
    with ``H' = ceil((H - 2) / 2) - 4`` (likewise ``W'``).
    """

    weights_name: NetName = "pnet"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        probability = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return probability, self.conv4_2(x)


class RNet(nn.Module):
    """Refine net on 24x24 crops: face probability ``(N,)`` and box offsets ``(N, 4)``."""

    weights_name: NetName = "rnet"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_transposed(x)))
        probability = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return probability, self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: face probability ``(N,)``, box offsets ``(N, 4)`` and five
    landmarks ``(N, 10)`` as fractions of the crop: five x values, then five y values
    (left eye, right eye, nose, left and right mouth corners, as seen in the image)."""

    weights_name: NetName = "onet"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_transposed(x)))
        probability = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return probability, self.dense6_2(x), self.dense6_3(x)


def pretrained(net: type[PNet] | type[RNet] | type[ONet]) -> nn.Module:
    """A fresh net of class ``net`` with its trained weights (every key must match)."""
    module = net()
    module.load_state_dict(load_mtcnn_weights(net.weights_name), strict=True)
    return module
