"""A local TorchHub folder whose ``yolop`` entry point is a stand-in for the real YOLOP.

The stand-in returns exactly what ``torch.hub.load("hustvl/yolop", "yolop")`` returns in
evaluation mode — ``((detections (B, N, 6), raw), drivable (B, 2, H, W), lanes (B, 2, H,
W))`` — computed from colours, so tests know the right answer: the vehicle is the bounding
box of the red pixels, the drivable area the green pixels, the lane lines the white ones.
"""

from __future__ import annotations

from pathlib import Path

HUBCONF = """
dependencies = ["torch"]

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class StandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.one = nn.Parameter(torch.ones(()))  # follows .to(device, dtype) like weights
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        rgb = x * self.std + self.mean
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        red = (r > 0.6) & (g < 0.4) & (b < 0.4)
        green = (g > 0.6) & (r < 0.4) & (b < 0.4)
        white = (r > 0.8) & (g > 0.8) & (b > 0.8)

        def head(mask):
            fg = mask.to(x.dtype) * self.one
            return torch.stack([0.95 - 0.9 * fg, 0.05 + 0.9 * fg], dim=1)

        _, _, height, width = x.shape
        ys = torch.arange(height, device=x.device, dtype=x.dtype).view(1, -1, 1)
        xs = torch.arange(width, device=x.device, dtype=x.dtype).view(1, 1, -1)
        far = float(height + width)
        x1 = torch.where(red, xs, far).amin(dim=(1, 2))
        x2 = torch.where(red, xs + 1, -far).amax(dim=(1, 2))
        y1 = torch.where(red, ys, far).amin(dim=(1, 2))
        y2 = torch.where(red, ys + 1, -far).amax(dim=(1, 2))
        found = red.any(dim=2).any(dim=1).to(x.dtype)
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        one = torch.ones_like(cx)
        rows = torch.stack([
            torch.stack([cx, cy, w, h, 0.9 * found, 0.95 * one], dim=-1),
            # the same box 2 pixels to the right, less sure: NMS removes it
            torch.stack([cx + 2, cy, w, h, 0.8 * found, 0.9 * one], dim=-1),
            # a box in the corner below the confidence threshold (0.2 x 0.5)
            torch.stack([20 * one, 20 * one, 10 * one, 10 * one, 0.2 * one, 0.5 * one], dim=-1),
        ], dim=1)
        return (rows, [rows]), head(green), head(white)


def yolop(pretrained=True, device="cpu"):
    return StandIn().to(device)
"""


def make_hub(folder: Path) -> Path:
    """Write the stand-in's ``hubconf.py`` into ``folder`` (created) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder
