"""YOLOP's architecture, our own definition, for measuring its cost without its weights.

Written from the paper (Dong Wu et al., "YOLOP: You Only Look Once for Panoptic Driving
Perception", arXiv:2108.11250): one shared encoder, three decoders.

- **Encoder**: a CSPDarknet backbone (YOLOv4) — a Focus layer (space-to-depth: every 2x2
  block of pixels becomes 4 channels) and strided 3x3 convolutions down to 1/32, with
  BottleneckCSP blocks after each (1, 3, 3 bottlenecks), spatial pyramid pooling (max pools
  of 5, 9 and 13) at 1/32 — and an FPN neck that brings the 1/32 features back up to 1/16 and
  1/8, concatenated with the backbone's maps of those scales. The encoder's output is the
  256-channel 1/8 map.
- **Detection decoder**: a PAN path (bottom-up again: 1/8 -> 1/16 -> 1/32, concatenated with
  the FPN's maps) and a YOLO head on each of the three scales: 3 anchors per cell, each
  predicting box centre offsets, width and height, objectness and the class score (one
  class, vehicle). Anchors (width, height in input pixels): (3,9) (5,11) (4,20) at 1/8,
  (7,18) (6,39) (12,31) at 1/16, (19,50) (38,81) (68,157) at 1/32.
- **Two segmentation decoders** of the same shape (drivable area, lane lines), each from the
  encoder's 1/8 map: three nearest-neighbour 2x upsamplings back to the input resolution
  with convolutions and CSP blocks between them (256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 2
  channels); two scores per pixel (background, foreground) after a sigmoid.

Every convolution block is convolution (no bias), batch norm and Hardswish; inside a CSP
block the concatenated halves go through batch norm and LeakyReLU(0.1).

The forward pass returns what the TorchHub model (``hustvl/yolop``) returns in evaluation
mode, so the same postprocessing serves both: ``((detections, raw), drivable, lanes)`` with
``detections`` of shape (B, N, 6) — box centre x, y, width, height in input pixels,
objectness, class score, all after the sigmoid — ``raw`` the three heads' maps, and each
segmentation output (B, 2, H, W) at the input's resolution. The input is an RGB image scaled
to [0, 1] and normalised with ImageNet's mean and standard deviation; its height and width
must be multiples of 32. 7.9 M parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["ANCHORS", "YOLOP", "fuse_batch_norms"]

ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 9), (5, 11), (4, 20)),
    ((7, 18), (6, 39), (12, 31)),
    ((19, 50), (38, 81), (68, 157)),
)
"""Anchor boxes (width, height) in input pixels, per detection scale (1/8, 1/16, 1/32)."""

_STRIDES = (8, 16, 32)


class _Conv(nn.Module):
    """Convolution (``same`` padding), batch norm, Hardswish."""

    def __init__(self, n_in: int, n_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(n_out)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(self.conv(x)))
        return out


class _Focus(nn.Module):
    """Space-to-depth (each 2x2 block of pixels becomes 4 channels), then a convolution."""

    def __init__(self, n_in: int, n_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = _Conv(4 * n_in, n_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        out: torch.Tensor = self.conv(torch.cat(blocks, dim=1))
        return out


class _Bottleneck(nn.Module):
    """1x1 then 3x3 convolution, added to the input when ``shortcut`` (and shapes allow)."""

    def __init__(self, n_in: int, n_out: int, *, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = _Conv(n_in, n_out, 1)
        self.cv2 = _Conv(n_out, n_out, 3)
        self.add = shortcut and n_in == n_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.cv2(self.cv1(x))
        return x + y if self.add else y


class _BottleneckCSP(nn.Module):
    """Cross-stage partial block: half the channels go through ``depth`` bottlenecks, the
    other half around them; the two are concatenated, normalised and mixed."""

    def __init__(self, n_in: int, n_out: int, depth: int = 1, *, shortcut: bool = True) -> None:
        super().__init__()
        hidden = n_out // 2
        self.cv1 = _Conv(n_in, hidden, 1)
        self.cv2 = nn.Conv2d(n_in, hidden, 1, bias=False)
        self.cv3 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.cv4 = _Conv(2 * hidden, n_out, 1)
        self.bn = nn.BatchNorm2d(2 * hidden)
        self.act = nn.LeakyReLU(0.1)
        self.m = nn.Sequential(
            *(_Bottleneck(hidden, hidden, shortcut=shortcut) for _ in range(depth))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        through = self.cv3(self.m(self.cv1(x)))
        around = self.cv2(x)
        out: torch.Tensor = self.cv4(self.act(self.bn(torch.cat([through, around], dim=1))))
        return out


class _SPP(nn.Module):
    """Spatial pyramid pooling: the input's max pools of several sizes, side by side."""

    def __init__(self, n_in: int, n_out: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = n_in // 2
        self.cv1 = _Conv(n_in, hidden, 1)
        self.cv2 = _Conv(hidden * (len(kernels) + 1), n_out, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        out: torch.Tensor = self.cv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))
        return out


class _Detect(nn.Module):
    """YOLO head on three scales: per cell and anchor, box, objectness and class scores."""

    anchors: torch.Tensor

    def __init__(self, classes: int, channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.outputs = classes + 5
        self.m = nn.ModuleList(nn.Conv2d(c, 3 * self.outputs, 1) for c in channels)
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32))
        # YOLO's prior for an untrained head: about 8 objects per 640x640 image, spread over
        # the cells of each scale, and an even class score. Without it random weights say
        # "object" (sigmoid(0) x sigmoid(0) = 0.25) in half of the 15k cells, and NMS, not
        # the network, dominates the cost of a random-weight run.
        with torch.no_grad():
            for head, stride in zip(self.m, _STRIDES, strict=True):
                assert isinstance(head, nn.Conv2d) and head.bias is not None
                bias = head.bias.view(3, self.outputs)
                bias[:, 4] += math.log(8 / (640 / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / max(classes - 0.99, 0.01))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        decoded, raw = [], []
        for level, (head, x) in enumerate(zip(self.m, maps, strict=True)):
            y = head(x)
            batch, _, rows, cols = y.shape
            y = y.view(batch, 3, self.outputs, rows, cols).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(y)
            y = y.sigmoid()
            grid_y, grid_x = torch.meshgrid(
                torch.arange(rows, device=y.device, dtype=y.dtype),
                torch.arange(cols, device=y.device, dtype=y.dtype),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], dim=-1).view(1, 1, rows, cols, 2)
            anchors = self.anchors[level].to(y.dtype).view(1, 3, 1, 1, 2)
            centre = (y[..., :2] * 2 - 0.5 + grid) * _STRIDES[level]
            size = (y[..., 2:4] * 2) ** 2 * anchors
            decoded.append(torch.cat([centre, size, y[..., 4:]], dim=-1).view(batch, -1, 6))
        return torch.cat(decoded, dim=1), raw


class _SegmentationHead(nn.Sequential):
    """From the encoder's 256-channel 1/8 map to two scores per input pixel."""

    def __init__(self) -> None:
        up = nn.Upsample(scale_factor=2, mode="nearest")
        super().__init__(
            _Conv(256, 128, 3),
            up,
            _BottleneckCSP(128, 64, shortcut=False),
            _Conv(64, 32, 3),
            up,
            _Conv(32, 16, 3),
            _BottleneckCSP(16, 8, shortcut=False),
            up,
            _Conv(8, 2, 3),
        )


class YOLOP(nn.Module):
    """The YOLOP network (randomly initialised: load trained weights yourself, or use the
    TorchHub model for those). See the module docstring for inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.focus = _Focus(3, 32, 3)
        self.down1 = _Conv(32, 64, 3, 2)
        self.csp1 = _BottleneckCSP(64, 64, 1)
        self.down2 = _Conv(64, 128, 3, 2)
        self.csp2 = _BottleneckCSP(128, 128, 3)  # 1/8
        self.down3 = _Conv(128, 256, 3, 2)
        self.csp3 = _BottleneckCSP(256, 256, 3)  # 1/16
        self.down4 = _Conv(256, 512, 3, 2)
        self.spp = _SPP(512, 512)
        self.csp4 = _BottleneckCSP(512, 512, 1, shortcut=False)
        self.fpn_reduce1 = _Conv(512, 256, 1)
        self.fpn_csp1 = _BottleneckCSP(512, 256, 1, shortcut=False)
        self.fpn_reduce2 = _Conv(256, 128, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pan_csp1 = _BottleneckCSP(256, 128, 1, shortcut=False)
        self.pan_down1 = _Conv(128, 128, 3, 2)
        self.pan_csp2 = _BottleneckCSP(256, 256, 1, shortcut=False)
        self.pan_down2 = _Conv(256, 256, 3, 2)
        self.pan_csp3 = _BottleneckCSP(512, 512, 1, shortcut=False)
        self.detect = _Detect(1, (128, 256, 512))
        self.drivable = _SegmentationHead()
        self.lanes = _SegmentationHead()

    def forward(
        self, x: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, list[torch.Tensor]], torch.Tensor, torch.Tensor]:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"YOLOP input height and width must be multiples of 32, got {tuple(x.shape)}"
            )
        c3 = self.csp2(self.down2(self.csp1(self.down1(self.focus(x)))))
        c4 = self.csp3(self.down3(c3))
        p5 = self.fpn_reduce1(self.csp4(self.spp(self.down4(c4))))
        p4 = self.fpn_reduce2(self.fpn_csp1(torch.cat([self.up(p5), c4], dim=1)))
        encoded = torch.cat([self.up(p4), c3], dim=1)  # 256 channels at 1/8
        n3 = self.pan_csp1(encoded)
        n4 = self.pan_csp2(torch.cat([self.pan_down1(n3), p4], dim=1))
        n5 = self.pan_csp3(torch.cat([self.pan_down2(n4), p5], dim=1))
        detections = self.detect([n3, n4, n5])
        return detections, self.drivable(encoded).sigmoid(), self.lanes(encoded).sigmoid()


def fuse_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every ``_Conv`` block's batch norm into its convolution, in place (evaluation
    only: the result computes the same function with one kernel fewer per block)."""
    for module in model.modules():
        if isinstance(module, _Conv) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv.eval(), module.bn.eval())
            module.bn = nn.Identity()
    return model
