"""TwinLiteNet: drivable-area and lane-line segmentation in one small network.

Our own definition, written from the paper (Quang-Huy Che et al., "TwinLiteNet: An Efficient
and Lightweight Model for Driveable Area and Lane Segmentation in Self-Driving Cars",
arXiv:2307.10705) and from the names and shapes of its published trained weights
(``twinlitenet_best.pth``, MIT), so that every key of that state dict loads strictly.

The network, for an RGB image scaled to [0, 1] of 640x360 (any height and width divisible
by 8 works):

- **Encoder** (``encoder``): ESPNet-C (Mehta et al., 2018). A strided 3x3 convolution to
  1/2 resolution, then two levels of ESP modules at 1/4 and 1/8, each a strided ESP module
  followed by residual ones (2 at 1/4, 3 at 1/8). An ESP module reduces its input with one
  convolution, runs five 3x3 convolutions of dilation 1, 2, 4, 8 and 16 on the result in
  parallel, sums the dilated outputs hierarchically (2, 2+4, 2+4+8, 2+4+8+16) to avoid
  gridding artefacts and concatenates them. The input image, average-pooled to 1/2 and 1/4,
  is concatenated back in before the 1/4 and 1/8 levels. Where ESPNet-C only normalises those
  concatenations, TwinLiteNet convolves them (``b1``, ``b2``, 3x3), and ``b3`` reduces the
  last one from 256 to 32 channels.
- **Dual attention** (from DANet, Fu et al., 2019) on the 32-channel 1/8 map: a position
  attention branch (``sa``: every position attends to every other through 4-channel queries
  and keys) and a channel attention branch (``sc``: every channel attends to every other
  through their Gram matrix), each followed by a 3x3 convolution; their sum goes through a
  1x1 convolution (``classifier``).
- **Two decoders** of the same shape, one per task, no skip connections: three 2x2 transposed
  convolutions of stride 2 (32 -> 16 -> 8 -> 2 channels), each followed by batch norm and
  PReLU, from 1/8 back to the input's resolution. ``*_1`` is the drivable area, ``*_2`` the
  lane lines; each gives two logits per pixel (background, foreground).

Every convolution is bias-free and followed by batch normalisation (eps 1e-3, as in ESPNet)
and a per-channel PReLU, except where the layer names say otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TwinLiteNet", "load_twinlitenet"]

# ESPNet's batch-norm epsilon. The trained weights depend on it: several channels have a
# running variance of ~0, and torch's default 1e-5 turns the masks into noise.
_BN_EPS = 1e-3


class _ConvBnAct(nn.Module):
    """Convolution (``same`` padding), batch norm, PReLU."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=_BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(self.conv(x)))
        return out


class _BnAct(nn.Module):
    """Batch norm and PReLU: what closes a residual ESP module."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(x))
        return out


class _Conv(nn.Module):
    """A bare convolution, optionally strided or dilated (padding keeps the size)."""

    def __init__(
        self, n_in: int, n_out: int, kernel: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = (kernel // 2) * dilation
        self.conv = nn.Conv2d(
            n_in, n_out, kernel, stride, padding=padding, dilation=dilation, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class _EspBranches(nn.Module):
    """The parallel dilated convolutions of an ESP module after its reduction ``c1``.

    ``n_out`` is split into five parts: four of ``n_out // 5`` channels for dilations 2, 4,
    8 and 16, and the remainder for dilation 1 (``d1``), so the concatenation has exactly
    ``n_out`` channels.
    """

    def __init__(self, n_in: int, n_out: int, *, reduce_kernel: int, reduce_stride: int) -> None:
        super().__init__()
        width = n_out // 5
        self.c1 = _Conv(n_in, width, reduce_kernel, reduce_stride)
        self.d1 = _Conv(width, n_out - 4 * width, 3, dilation=1)
        self.d2 = _Conv(width, width, 3, dilation=2)
        self.d4 = _Conv(width, width, 3, dilation=4)
        self.d8 = _Conv(width, width, 3, dilation=8)
        self.d16 = _Conv(width, width, 3, dilation=16)

    def _pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        # Hierarchical feature fusion: each larger dilation adds the smaller ones' outputs,
        # which fills the holes a lone dilated convolution leaves (gridding).
        sum2 = self.d2(reduced)
        sum4 = sum2 + self.d4(reduced)
        sum8 = sum4 + self.d8(reduced)
        sum16 = sum8 + self.d16(reduced)
        return torch.cat([self.d1(reduced), sum2, sum4, sum8, sum16], dim=1)


class _EspDown(_EspBranches):
    """A strided ESP module: halves the resolution (3x3 stride-2 reduction), no residual."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, reduce_kernel=3, reduce_stride=2)
        self.bn = nn.BatchNorm2d(n_out, eps=_BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(self._pyramid(x)))
        return out


class _EspResidual(_EspBranches):
    """A residual ESP module: 1x1 reduction, same resolution and channels, input added."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, reduce_kernel=1, reduce_stride=1)
        self.bn = _BnAct(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(x + self._pyramid(x))
        return out


class _PositionAttention(nn.Module):
    """DANet's position attention: each position's value is replaced by a softmax-weighted
    sum of all positions' values (weights: query . key, not scaled), times a learnt
    ``gamma``, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # As one attention head, (B, 1, positions, channels): the fused kernels never hold
        # the positions x positions weights (3600^2 at 80x45) where they apply.
        query = self.query_conv(x).flatten(2).transpose(1, 2)[:, None]
        key = self.key_conv(x).flatten(2).transpose(1, 2)[:, None]
        value = self.value_conv(x).flatten(2).transpose(1, 2)[:, None]
        attended = F.scaled_dot_product_attention(query, key, value, scale=1.0)
        attended = attended[:, 0].transpose(1, 2).reshape(batch, channels, height, width)
        return self.gamma * attended + x


class _ChannelAttention(nn.Module):
    """DANet's channel attention: each channel is replaced by a softmax-weighted sum of all
    channels, times a learnt ``gamma``, plus the input. The weights are a softmax of the
    negated Gram matrix over positions: channels that respond unlike one another mix most."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # In float32 even under half precision: a Gram entry sums 3600 products (80x45) and
        # overflows float16's 65504 on ordinary activations.
        flat = x.reshape(batch, channels, -1).float()
        gram = torch.bmm(flat, flat.transpose(1, 2))
        # DANet writes softmax(max(gram) - gram); softmax ignores the constant shift.
        weights = torch.softmax(-gram, dim=-1)
        attended = torch.bmm(weights, flat).reshape(batch, channels, height, width)
        return self.gamma * attended.to(x.dtype) + x


class _Encoder(nn.Module):
    """ESPNet-C with convolved concatenations and dual attention: (B, 3, H, W) in [0, 1]
    -> (B, 32, H/8, W/8)."""

    def __init__(self, *, modules_at_quarter: int = 2, modules_at_eighth: int = 3) -> None:
        super().__init__()
        self.level1 = _ConvBnAct(3, 16, 3, stride=2)
        self.b1 = _ConvBnAct(16 + 3, 16 + 3, 3)
        self.level2_0 = _EspDown(16 + 3, 64)
        self.level2 = nn.ModuleList(_EspResidual(64) for _ in range(modules_at_quarter))
        self.b2 = _ConvBnAct(64 + 64 + 3, 64 + 64 + 3, 3)
        self.level3_0 = _EspDown(64 + 64 + 3, 128)
        self.level3 = nn.ModuleList(_EspResidual(128) for _ in range(modules_at_eighth))
        self.b3 = _ConvBnAct(128 + 128, 32, 3)
        self.sa = _PositionAttention(32)
        self.sc = _ChannelAttention()
        self.conv_sa = _ConvBnAct(32, 32, 3)
        self.conv_sc = _ConvBnAct(32, 32, 3)
        self.classifier = _ConvBnAct(32, 32, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # The image itself, average-pooled to 1/2 and 1/4, re-enters at each level.
        image_half = F.avg_pool2d(image, 3, stride=2, padding=1)
        image_quarter = F.avg_pool2d(image_half, 3, stride=2, padding=1)

        half = self.b1(torch.cat([self.level1(image), image_half], dim=1))

        quarter_in = self.level2_0(half)
        quarter = quarter_in
        for module in self.level2:
            quarter = module(quarter)
        quarter = self.b2(torch.cat([quarter, quarter_in, image_quarter], dim=1))

        eighth_in = self.level3_0(quarter)
        eighth = eighth_in
        for module in self.level3:
            eighth = module(eighth)
        eighth = self.b3(torch.cat([eighth_in, eighth], dim=1))

        position = self.conv_sa(self.sa(eighth))
        channel = self.conv_sc(self.sc(eighth))
        out: torch.Tensor = self.classifier(position + channel)
        return out


class _Up(nn.Module):
    """2x upsampling: 2x2 transposed convolution of stride 2, batch norm, PReLU."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(n_in, n_out, 2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=_BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.bn(self.deconv(x)))
        return out


class TwinLiteNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1], H and W divisible by 8 -> ``(drivable, lanes)``, each
    (B, 2, H, W) logits of background and foreground. Trained at 640x360."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        # Drivable-area decoder.
        self.up_1_1 = _Up(32, 16)
        self.up_2_1 = _Up(16, 8)
        self.classifier_1 = _Up(8, 2)
        # Lane-line decoder.
        self.up_1_2 = _Up(32, 16)
        self.up_2_2 = _Up(16, 8)
        self.classifier_2 = _Up(8, 2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(
                f"TwinLiteNet needs a height and width divisible by 8, got {tuple(image.shape)}"
            )
        features = self.encoder(image)
        drivable = self.classifier_1(self.up_2_1(self.up_1_1(features)))
        lanes = self.classifier_2(self.up_2_2(self.up_1_2(features)))
        return drivable, lanes


def load_twinlitenet(path: str | Path) -> TwinLiteNet:
    """A :class:`TwinLiteNet` with the trained weights of ``path`` (a state dict saved from
    the original ``nn.DataParallel`` model: the ``module.`` prefix of its keys is removed),
    loaded strictly. Raises FileNotFoundError when the file does not exist."""
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    net = TwinLiteNet()
    net.load_state_dict(state, strict=True)
    return net.eval()
